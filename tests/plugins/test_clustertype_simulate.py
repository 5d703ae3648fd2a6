"""Tests of the DSS2-like open/globular cluster simulator (astrotl_clustertype.simulate)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from astrotl.errors import DataError
from astrotl_clustertype import simulate as sim_mod
from astrotl_clustertype.simulate import (
    BANDS,
    CLASSES,
    COLUMNS,
    GLOBULAR_SUBTYPES,
    OPEN_SUBTYPES,
    SimConfig,
    SimConfigError,
    SimResult,
    plate_response,
    simulate,
    simulate_cached,
)

SMALL = dict(size=48)


def _same(a: SimResult, b: SimResult) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    assert a.catalog.colnames == b.catalog.colnames
    for name in a.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(a.catalog[name]), np.asarray(b.catalog[name]))


def _central_light_fraction(img: np.ndarray, x: float, y: float, radius: float) -> float:
    """Fraction of the above-median light within ``radius`` px of (x, y)."""
    d = np.clip(img - np.median(img), 0.0, None)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    near = np.hypot(xx - x, yy - y) < radius
    return float(d[near].sum() / max(d.sum(), 1e-12))


@pytest.fixture(scope="module")
def run() -> SimResult:
    return simulate(120, SimConfig(**SMALL), seed=5)


# -- output format -----------------------------------------------------------------------


def test_shapes_range_and_catalogue(run):
    assert run.images.shape == (120, 1, 48, 48)
    assert run.images.dtype == np.float32
    assert len(run) == 120
    assert 0.0 <= run.images.min() and run.images.max() <= 1.0
    cat = run.catalog
    assert cat.colnames == [c for c, _, _ in COLUMNS]
    assert list(cat["id"]) == list(range(120))
    assert set(cat["cls"]) == {0, 1}
    assert all(CLASSES[k] == n for k, n in zip(cat["cls"], cat["class_name"]))
    assert cat.meta["bands"] == list(BANDS) and cat.meta["classes"] == ["open", "globular"]
    assert cat.meta["seed"] == 5 and cat.meta["config"]["size"] == 48
    assert cat["distance_kpc"].unit == "kpc"
    # the cluster sits near the centre (jitter 2 px)
    assert np.all(np.abs(np.asarray(cat["x"]) - 23.5) <= 2.0)
    assert np.all(np.abs(np.asarray(cat["y"]) - 23.5) <= 2.0)


def test_subtypes_follow_the_physical_parameters(run):
    cat = run.catalog
    glob, opn = cat[cat["cls"] == 1], cat[cat["cls"] == 0]
    assert set(opn["subtype"]) <= set(OPEN_SUBTYPES) and set(glob["subtype"]) <= set(GLOBULAR_SUBTYPES)
    for row in glob:
        expected = "loose" if row["king_c"] < 1.3 else ("intermediate" if row["king_c"] < 1.8 else "concentrated")
        assert row["subtype"] == expected
    np.testing.assert_allclose(cat["king_c"], np.log10(cat["tidal_radius_pc"] / cat["core_radius_pc"]), rtol=1e-9)
    np.testing.assert_allclose(cat["core_radius_arcsec"], cat["core_radius_pc"] * 206.264806 / cat["distance_kpc"])
    assert np.all(glob["king_c"] > opn["king_c"].max() - 0.2)  # globulars are the concentrated ones
    neb = np.asarray(cat["nebulous"])
    assert np.all(neb == (np.asarray(cat["subtype"]) == "nebulous"))
    assert np.all(np.isfinite(cat["nebula_mag"][neb])) and np.all(np.isnan(cat["nebula_mag"][~neb]))
    assert np.all((cat["distance_kpc"][cat["cls"] == 1] >= 4) & (cat["distance_kpc"][cat["cls"] == 1] <= 40))


# -- physics -------------------------------------------------------------------------------


def test_globulars_are_more_centrally_concentrated(run):
    cat = run.catalog
    frac = np.array([_central_light_fraction(run.images[i, 0], cat["x"][i], cat["y"][i], 6.0)
                     for i in range(len(cat))])
    glob = np.asarray(cat["cls"]) == 1
    assert np.median(frac[glob]) > 1.3 * np.median(frac[~glob])


def test_open_clusters_have_fewer_brighter_members(run):
    cat = run.catalog
    glob = np.asarray(cat["cls"]) == 1
    assert np.all(cat["n_members"][~glob] <= 200)
    assert np.median(cat["n_members"][glob]) > 3 * np.median(cat["n_members"][~glob])
    # resolved members of open clusters are brighter (nearer) than those of globulars
    assert np.nanmedian(cat["m_median_resolved"][~glob]) < np.nanmedian(cat["m_median_resolved"][glob]) - 1.0
    assert np.all(cat["n_resolved"] <= cat["n_members"])


def test_plate_response_is_bounded_monotonic_and_compressive():
    x = np.geomspace(1e-3, 1e7, 200)
    v = plate_response(x, gamma=0.8, fog=0.03)
    assert plate_response(0.0, 0.8, 0.03) == pytest.approx(0.03)
    assert np.all(np.diff(v) > 0) and np.all(v < 1.0)
    assert v[-1] > 0.999
    # toe: linear at low exposure; shoulder: a decade of exposure adds ever less density
    assert plate_response(2e-3, 0.8, 0) / plate_response(1e-3, 0.8, 0) == pytest.approx(2.0, rel=1e-3)
    steps = plate_response(np.array([1.0, 10.0, 100.0, 1e3, 1e4]), 0.8, 0.03)
    assert np.all(np.diff(np.diff(steps)) < 0)
    assert plate_response(-5.0) == pytest.approx(0.03)  # negative exposure is clipped


def test_saturation_caps_bright_globular_cores():
    cfg = SimConfig(**SMALL, class_fractions=(0, 1), globular_distance_kpc=(4.0, 5.0), extinction_range=(0, 0),
                    noise=False)
    res = simulate(8, cfg, seed=3)
    assert res.images.max() <= 1.0
    # nearby globulars burn out their centres (a few loose, faint ones need not)
    core = res.images[:, 0, 20:28, 20:28].max(axis=(1, 2))
    assert np.mean(core > 0.95) >= 0.75
    assert np.mean(res.catalog["saturated_frac"] > 0) >= 0.75


def test_field_density_varies_and_shows():
    base = dict(**SMALL, class_fractions=(0, 1), globular_distance_kpc=(40.0, 40.0))
    sparse = simulate(12, SimConfig(**base, field_density_range=(0.3, 0.3)), seed=2)
    dense = simulate(12, SimConfig(**base, field_density_range=(30.0, 30.0)), seed=2)
    assert dense.catalog["n_field"].mean() > 20 * sparse.catalog["n_field"].mean()
    yy, xx = np.mgrid[:48, :48]
    outer = np.hypot(xx - 23.5, yy - 23.5) > 15

    def busy(res):
        return np.mean([(im[0][outer] > np.median(im[0]) + 0.05).mean() for im in res.images])

    assert busy(dense) > 3 * busy(sparse)


def test_default_field_density_spans_a_wide_range(run):
    d = np.asarray(run.catalog["field_density"])
    assert d.min() >= 0.3 and d.max() <= 30.0 and d.max() / d.min() > 20


def test_nebulosity_adds_diffuse_light():
    base = dict(**SMALL, class_fractions=(1, 0), noise=False, field_density_range=(0.3, 0.3))
    plain = simulate(10, SimConfig(**base, open_subtype_fractions=(1, 0, 0)), seed=4)
    neb = simulate(10, SimConfig(**base, open_subtype_fractions=(0, 0, 1)), seed=4)
    assert set(neb.catalog["subtype"]) == {"nebulous"} and not plain.catalog["nebulous"].any()
    assert np.median(np.median(neb.images, axis=(1, 2, 3))) > np.median(np.median(plain.images, axis=(1, 2, 3)))


def test_no_field_stars_and_no_noise():
    cfg = SimConfig(**SMALL, field_density_range=(0.0, 0.0), noise=False, class_fractions=(0, 1),
                    globular_distance_kpc=(40, 40))
    res = simulate(3, cfg, seed=1)
    assert np.all(res.catalog["n_field"] == 0) and np.all(res.catalog["field_density"] == 0)
    _same(res, simulate(3, cfg, seed=1))
    # the noiseless sky in the corners sits on the characteristic curve at the sky's exposure
    for img, row in zip(res.images[:, 0], res.catalog):
        sky = plate_response(10 ** (-0.4 * (row["sky_mag"] - 21.0)), row["gamma"], 0.03)
        assert np.median(img[:4, :4]) == pytest.approx(sky, abs=0.02)


# -- seeds and cache -----------------------------------------------------------------------


def test_seed_reproducibility_and_prefix_independence():
    cfg = SimConfig(size=32)
    a, b = simulate(6, cfg, seed=9), simulate(6, cfg, seed=9)
    _same(a, b)
    c = simulate(6, cfg, seed=10)
    assert not np.array_equal(a.images, c.images)
    head = simulate(3, cfg, seed=9)
    np.testing.assert_array_equal(head.images, a.images[:3])


def test_lists_are_accepted_and_hashable():
    cfg = SimConfig(size=32, class_fractions=[1, 1], extinction_range=[0, 1])
    assert cfg.class_fractions == (1.0, 1.0)
    assert hash(cfg) == hash(SimConfig(size=32, class_fractions=(1, 1), extinction_range=(0, 1)))


def test_cache_hit_and_corrupt_entry(tmp_path, monkeypatch, caplog):
    cfg = SimConfig(size=32)
    first = simulate_cached(5, cfg, 3, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    key = sim_mod.cache_key(5, cfg, 3)
    assert files == [f"{key}.catalog.ecsv", f"{key}.npz"]
    with np.load(tmp_path / f"{key}.npz") as z:
        assert str(z["__key__"]) == key and sorted(z.files) == ["__key__", "images"]

    def boom(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(sim_mod, "simulate", boom)
    t0 = time.perf_counter()
    second = simulate_cached(5, cfg, 3, tmp_path)
    assert time.perf_counter() - t0 < 2.0
    _same(first, second)
    assert sim_mod.cache_key(5, cfg, 4) != key and sim_mod.cache_key(5, SimConfig(size=32, fog=0.02), 3) != key
    assert sim_mod.cache_key(6, cfg, 3) != key and sim_mod.cache_key(5, SimConfig(size=32), 3) == key
    monkeypatch.undo()
    (tmp_path / f"{key}.npz").write_bytes(b"not an npz")
    with caplog.at_level("WARNING"):
        third = simulate_cached(5, cfg, 3, tmp_path)
    _same(first, third)
    assert "rebuilding" in caplog.text and f"{key}.npz" in caplog.text


def test_speed_is_reported(capsys):
    cfg = SimConfig()
    simulate(2, cfg, seed=0)  # geometry cache
    t0 = time.perf_counter()
    simulate(60, cfg, seed=1)
    rate = 60 / (time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[clustertype] simulation speed (64 px, default config): {rate:.0f} images/s")
    assert rate > 10  # loose floor: the machine is shared


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=8), r"SimConfig.size=8 is invalid"),
    (dict(size=True), r"SimConfig.size=True"),
    (dict(pixel_scale_arcsec=0.0), r"SimConfig.pixel_scale_arcsec=0.0 is invalid"),
    (dict(pixel_scale_arcsec=1.0, plate_scale_arcsec=2.0), r"plate_scale_arcsec=2.0 .*must be <= pixel_scale"),
    (dict(size=1024, pixel_scale_arcsec=8.0), r"plate grid over 4096 px"),
    (dict(class_fractions=(0, 0)), r"class_fractions=\(0, 0\) .*positive sum"),
    (dict(class_fractions=(1, 1, 1)), r"class_fractions"),
    (dict(open_subtype_fractions=(1, -1, 1)), r"open_subtype_fractions"),
    (dict(extinction_range=(2, 1)), r"extinction_range=\(2, 1\) .*low <= high"),
    (dict(seeing_range_arcsec=(0.1, 2)), r"seeing_range_arcsec.*0.3 <= low"),
    (dict(sky_mag_range=(20, float("nan"))), r"sky_mag_range.*finite"),
    (dict(field_density_range=(0, 5)), r"field_density_range.*\(0, 0\) for no field stars"),
    (dict(globular_distance_kpc=[1, "far"]), r"globular_distance_kpc.*list of numbers"),
    (dict(fog=1.0), r"SimConfig.fog=1.0"),
    (dict(grain_noise=-0.1), r"SimConfig.grain_noise=-0.1"),
    (dict(noise="yes"), r"SimConfig.noise='yes'"),
    (dict(jitter_px=100.0), r"SimConfig.jitter_px=100.0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(DataError, match=match):
        SimConfig(**kwargs)
    with pytest.raises(ValueError, match=match):  # SimConfigError is both
        SimConfig(**kwargs)


def test_bad_arguments(tmp_path):
    with pytest.raises(SimConfigError, match=r"n=-1 is invalid"):
        simulate(-1, SimConfig())
    with pytest.raises(DataError, match=r"seed=-2 is invalid"):
        simulate(1, SimConfig(), seed=-2)
    with pytest.raises(DataError, match=r"n=2.5 is invalid"):
        simulate(2.5, SimConfig())
    with pytest.raises(DataError, match=r"config=\{'size': 32\} is invalid: must be a SimConfig"):
        simulate(1, {"size": 32})
    with pytest.raises(DataError, match=r"config=None is invalid"):
        simulate_cached(1, None, 0, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=r"cannot create the simulation cache .*writable folder"):
        simulate_cached(1, SimConfig(size=32), 0, blocker / "cache")
