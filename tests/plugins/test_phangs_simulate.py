"""Tests of the PHANGS-HST-like cutout simulator (astrotl_phangs.simulate)."""

from __future__ import annotations

import time

import galsim
import numpy as np
import pytest
from scipy import ndimage

from astrotl_phangs.simulate import (
    BANDS,
    CLASS_NAMES,
    SKY_E_PER_PIX,
    SUBCLASS_NAMES,
    SimConfig,
    SimResult,
    simulate,
    simulate_cached,
)

QUIET = dict(noise=False, crowding=0.0, background=0.0, sky=0.0)
COLUMNS = [
    "id", "x", "y", "cls", "subclass", *[f"mag_{b}" for b in BANDS],
    "log_age", "ebv", "fwhm_px", "n_neighbours", "background", "saturated",
]


def _assert_same(a: SimResult, b: SimResult) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    assert a.catalog.colnames == b.catalog.colnames
    for name in a.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(a.catalog[name]), np.asarray(b.catalog[name]))


def _n_peaks(img: np.ndarray, x: float, y: float, frac: float = 0.05, radius: float = 7.0) -> int:
    """Local maxima (3x3) above ``frac`` of the maximum within ``radius`` of (x, y)."""
    mx = ndimage.maximum_filter(img, size=3, mode="constant")
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    near = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return int(((img == mx) & (img > frac * img.max()) & near).sum())


def _fwhm(img: np.ndarray, x: float, y: float) -> float:
    return galsim.Image(img.astype(np.float64), scale=1.0).calculateFWHM(center=galsim.PositionD(x + 1, y + 1))


@pytest.fixture(scope="module")
def default_run() -> SimResult:
    return simulate(300, SimConfig(), seed=7)


@pytest.fixture(scope="module")
def quiet_run() -> SimResult:
    """High-S/N noiseless stamps of all classes, no sky, background or neighbours."""
    cfg = SimConfig(
        class_fractions=(1, 1, 1, 1),
        artifact_fractions=(("4.1", 1.0), ("4.2", 1.0), ("4.3", 1.0)),
        **QUIET,
    )
    return simulate(400, cfg, seed=3)


# ------------------------------------------------------------------ reproducibility / API


def test_same_seed_identical_different_seed_differs():
    cfg = SimConfig(size=24)
    a = simulate(25, cfg, seed=5)
    b = simulate(25, cfg, seed=5)
    _assert_same(a, b)
    c = simulate(25, cfg, seed=6)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(np.asarray(a.catalog["x"]), np.asarray(c.catalog["x"]))


def test_subsets_are_stable():
    cfg = SimConfig(size=16)
    a = simulate(8, cfg, seed=2)
    b = simulate(20, cfg, seed=2)
    np.testing.assert_array_equal(a.images, b.images[:8])
    assert list(a.catalog["subclass"]) == list(b.catalog["subclass"][:8])


def test_shapes_dtypes_columns_meta(default_run):
    res = default_run
    assert res.images.shape == (300, 5, 32, 32)
    assert res.images.dtype == np.float32
    assert np.isfinite(res.images).all()
    cat = res.catalog
    assert len(cat) == 300
    for name in COLUMNS:
        assert name in cat.colnames, name
    assert list(cat["id"]) == list(range(300))
    assert set(np.unique(cat["cls"])) <= set(CLASS_NAMES)
    assert set(np.unique(cat["subclass"])) <= set(SUBCLASS_NAMES)
    for row in cat:
        assert row["subclass"].split(".")[0] == str(row["cls"])
    assert cat["saturated"].dtype == bool
    assert str(cat["x"].unit) == "pix" and str(cat["mag_F555W"].unit) == "mag"
    assert cat.meta["seed"] == 7 and list(cat.meta["bands"]) == list(BANDS)
    assert cat.meta["config"]["size"] == 32
    v = np.asarray(cat["mag_F555W"])
    normal = np.asarray(cat["subclass"]) != "4.4"
    assert np.all((v[normal] >= 20.5) & (v[normal] <= 24.5))
    # more faint than bright objects
    assert np.sum(v[normal] > 22.5) > 2 * np.sum(v[normal] < 22.5)


def test_candidate_near_centre(default_run):
    cat = default_run.catalog
    c = (32 - 1) / 2
    not_edge = np.asarray(cat["subclass"]) != "4.11"
    assert np.all(np.abs(np.asarray(cat["x"])[not_edge] - c) <= 0.5)
    assert np.all(np.abs(np.asarray(cat["y"])[not_edge] - c) <= 0.5)


def test_class_fractions_honoured():
    n = 600
    cfg = SimConfig(size=8, class_fractions=(0.5, 0.2, 0.3, 0.0))
    cls = np.asarray(simulate(n, cfg, seed=1).catalog["cls"])
    for k, p in zip((1, 2, 3), (0.5, 0.2, 0.3)):
        sigma = np.sqrt(n * p * (1 - p))
        assert abs((cls == k).sum() - n * p) < 4 * sigma
    assert not (cls == 4).any()


def test_artifact_subclass_mix_follows_table3():
    cfg = SimConfig(size=8, class_fractions=(0, 0, 0, 1))
    sub = np.asarray(simulate(600, cfg, seed=4).catalog["subclass"])
    counts = {k: int((sub == k).sum()) for k in SUBCLASS_NAMES}
    print("class-4 sub-class counts:", counts)
    assert counts["4.2"] > counts["4.1"] > counts["4.3"] > counts["4.4"]
    assert all(counts[k] > 0 for k in ("4.4", "4.7", "4.11", "4.12"))


# ------------------------------------------------------------------ physics


def test_stars_are_sharper_than_symmetric_clusters(quiet_run):
    res = quiet_run
    cat = res.catalog
    sub = np.asarray(cat["subclass"])
    meas = {k: [] for k in ("1", "4.1")}
    put_in = []
    for i in np.nonzero(np.isin(sub, ["1", "4.1"]))[0]:
        f = _fwhm(res.images[i, 3], cat["x"][i], cat["y"][i])
        meas[sub[i]].append(f)
        if sub[i] == "1":
            put_in.append(cat["fwhm_px"][i])
    stars, clusters = np.array(meas["4.1"]), np.array(meas["1"])
    print(f"median FWHM: stars {np.median(stars):.2f} px, class 1 {np.median(clusters):.2f} px")
    assert 1.8 <= np.median(stars) <= 2.5  # PHANGS-HST stars: 1.8-2.4 px
    assert np.median(clusters) > np.median(stars) + 1.0
    assert np.percentile(clusters, 10) > np.percentile(stars, 90)
    assert np.corrcoef(put_in, clusters)[0, 1] > 0.9


def test_young_clusters_are_bluer():
    cfg = SimConfig(size=16, class_fractions=(1, 1, 0, 0), **QUIET)
    res = simulate(300, cfg, seed=9)
    cat = res.catalog
    age = np.asarray(cat["log_age"])
    u_v = np.asarray(cat["mag_F336W"] - cat["mag_F555W"])
    assert u_v[age < 7].mean() < u_v[age > 9].mean() - 1.0
    # old clusters fall in Box 1 of Whitmore et al. (2021)
    ub = np.asarray(cat["mag_F336W"] - cat["mag_F438W"])
    vi = np.asarray(cat["mag_F555W"] - cat["mag_F814W"])
    old = age > 9.3
    box1 = (vi > 0.95) & (vi < 1.5) & (ub > -0.4) & (ub < 1.0)
    assert box1[old].mean() > 0.8
    # the images carry the catalogue colours (stamp sums, same PSF-wing losses)
    flux = res.images.sum(axis=(2, 3)).astype(np.float64)
    zp = np.array([cat.meta["zeropoints_vega"][b] for b in BANDS])
    texp = np.array([cat.meta["exptime_s"][b] for b in BANDS])
    m = zp - 2.5 * np.log10(flux / texp)
    img_colour = m[:, 1] - m[:, 3]
    assert np.median(np.abs(img_colour - u_v)) < 0.05


def test_peak_counts(quiet_run):
    res = quiet_run
    cat = res.catalog
    peaks = {"1": [], "3": [], "4.1": [], "4.2": [], "4.3": []}
    for i, s in enumerate(cat["subclass"]):
        if s in peaks:
            peaks[s].append(_n_peaks(res.images[i, 3], cat["x"][i], cat["y"][i]))
    print({k: np.bincount(v).tolist() for k, v in peaks.items()})
    assert min(peaks["3"]) >= 4  # PHANGS-HST: >= 4 stars within 5 px
    assert set(peaks["4.2"]) == {2}
    assert set(peaks["4.3"]) == {3}
    assert set(peaks["4.1"]) == {1}
    assert set(peaks["1"]) == {1}


def test_noise_variance_follows_signal():
    # faint stars only, flat levels dominate the corners: variance = mean + read_noise^2
    cfg = SimConfig(
        size=32, class_fractions=(0, 0, 0, 1), artifact_fractions=(("4.1", 1.0),),
        mag_range=(26.0, 26.5), crowding=0.0, background=0.0, cosmic_ray_rate=0.0,
    )
    yy, xx = np.mgrid[:32, :32]
    corner = (xx - 15.5) ** 2 + (yy - 15.5) ** 2 > 12**2
    ratios = []
    for sky in (1.0, 20.0):
        res = simulate(40, dataclass_replace(cfg, sky=sky), seed=1)
        pix = res.images[:, 3][:, corner].astype(np.float64)
        mean, var = pix.mean(), pix.var()
        assert mean == pytest.approx(sky * SKY_E_PER_PIX["F555W"], rel=0.02)
        ratios.append(var)
        assert var == pytest.approx(mean + cfg.read_noise**2, rel=0.1)
    assert ratios[1] / ratios[0] > 10


def test_noiseless_option_has_no_noise():
    cfg = SimConfig(size=16, crowding=0.0, background=0.0, sky=1.0, noise=False,
                    class_fractions=(0, 0, 0, 1), artifact_fractions=(("4.1", 1.0),), mag_range=(38, 39))
    res = simulate(3, cfg, seed=0)
    np.testing.assert_allclose(res.images[:, 3], SKY_E_PER_PIX["F555W"], rtol=1e-3)


def test_saturated_stars_are_clipped():
    cfg = SimConfig(size=32, class_fractions=(0, 0, 0, 1), artifact_fractions=(("4.4", 1.0),))
    res = simulate(10, cfg, seed=2)
    sat = cfg.saturation_level
    assert res.catalog["saturated"].all()
    assert np.asarray(res.catalog["mag_F555W"]).max() < 20.5
    v = res.images[:, 3]
    assert v.max() == np.float32(sat)
    assert ((v == np.float32(sat)).sum(axis=(1, 2)) >= 3).all()  # flat core / bleed trail
    assert res.images.max() <= np.float32(sat)


def test_background_and_sky_columns():
    cfg = SimConfig(size=32, background=0.0, crowding=0.0)
    bg = np.asarray(simulate(10, cfg, seed=0).catalog["background"])
    np.testing.assert_allclose(bg, SKY_E_PER_PIX["F555W"])
    bg2 = np.asarray(simulate(30, SimConfig(size=32), seed=0).catalog["background"])
    assert (bg2 > SKY_E_PER_PIX["F555W"]).all() and bg2.max() > 5 * bg2.min()


def test_crowding_scales_neighbours():
    n0 = np.asarray(simulate(50, SimConfig(size=16, crowding=0.0), seed=0).catalog["n_neighbours"])
    assert (n0 == 0).all()
    n1 = np.asarray(simulate(250, SimConfig(size=16, crowding=1.0), seed=0).catalog["n_neighbours"])
    n4 = np.asarray(simulate(250, SimConfig(size=16, crowding=4.0), seed=0).catalog["n_neighbours"])
    assert 0.7 < n1.mean() < 1.4
    assert 3.0 < n4.mean() / n1.mean() < 5.0


def test_edge_and_bad_pixel_subclasses():
    cfg = SimConfig(size=32, class_fractions=(0, 0, 0, 1), artifact_fractions=(("4.11", 1.0),))
    res = simulate(12, cfg, seed=3)
    frac = np.asarray(res.catalog["nodata_frac"])
    zeros = (res.images == 0).mean(axis=(1, 2, 3))
    assert (frac > 0).all()
    np.testing.assert_allclose(zeros, frac, atol=1e-6)

    cfg = SimConfig(size=32, class_fractions=(0, 0, 0, 1), artifact_fractions=(("4.12", 1.0),), **QUIET)
    res = simulate(12, cfg, seed=3)
    img = res.images
    assert (img[:, [0, 1, 2, 4]] == 0).all()  # single band (F555W), nothing else
    v = img[:, 3]
    assert ((v > 0).sum(axis=(1, 2)) <= 16).all()  # a few hot pixels, not PSF-convolved
    assert np.isnan(np.asarray(res.catalog["mag_F336W"])).all()


# ------------------------------------------------------------------ cache


def test_cache_round_trip_and_speed(tmp_path):
    cfg = SimConfig(size=32)
    t0 = time.perf_counter()
    a = simulate_cached(200, cfg, 11, tmp_path)
    t1 = time.perf_counter()
    b = simulate_cached(200, cfg, 11, tmp_path)
    t2 = time.perf_counter()
    print(f"cache: first call {t1 - t0:.2f} s, second call {t2 - t1:.3f} s")
    _assert_same(a, b)
    np.testing.assert_array_equal(a.images[:20], simulate(20, cfg, 11).images)
    assert (t2 - t1) < 0.3 * (t1 - t0)
    assert b.catalog.meta["seed"] == 11
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".ecsv", ".npz"]


def test_cache_recovers_from_corruption(tmp_path):
    cfg = SimConfig(size=16)
    a = simulate_cached(10, cfg, 1, tmp_path)
    npz = next(tmp_path.glob("*.npz"))
    npz.write_bytes(b"not a zip file")
    b = simulate_cached(10, cfg, 1, tmp_path)
    _assert_same(a, b)
    ecsv = next(tmp_path.glob("*.ecsv"))
    ecsv.write_text("# %ECSV 1.0\ngarbage\n")
    c = simulate_cached(10, cfg, 1, tmp_path)
    _assert_same(a, c)
    assert len(list(tmp_path.glob("*.tmp"))) == 0


def test_cache_key_depends_on_arguments(tmp_path):
    simulate_cached(4, SimConfig(size=16), 1, tmp_path)
    simulate_cached(4, SimConfig(size=16), 2, tmp_path)
    simulate_cached(4, SimConfig(size=16, crowding=2.0), 1, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(size=4), r"size=4 .*>= 8"),
        (dict(class_fractions=(0.5, -0.1, 0.3, 0.3)), r"class_fractions=.*non-negative"),
        (dict(class_fractions=(0, 0, 0, 0)), r"class_fractions=.*positive sum"),
        (dict(class_fractions=(1, 1)), r"class_fractions=.*4 finite numbers"),
        (dict(mag_range=(24.5, 20.5)), r"mag_range=\(24.5, 20.5\).*bright < faint"),
        (dict(crowding=-1.0), r"crowding=-1.0 .*>= 0"),
        (dict(sky=float("nan")), r"sky=nan"),
        (dict(psf_fwhm_px=0.0), r"psf_fwhm_px=0.0"),
        (dict(artifact_fractions=(("4.99", 1.0),)), r"artifact_fractions=.*codes"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**kwargs)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"n=-1"):
        simulate(-1)
    with pytest.raises(ValueError, match=r"seed=-3"):
        simulate(2, SimConfig(size=8), seed=-3)
    with pytest.raises(ValueError, match=r"config="):
        simulate(2, {"size": 8})  # type: ignore[arg-type]


def test_lists_are_accepted_and_hashable():
    cfg = SimConfig(class_fractions=[1, 0, 0, 0], mag_range=[21, 22])  # type: ignore[arg-type]
    assert cfg.class_fractions == (1.0, 0.0, 0.0, 0.0)
    hash(cfg)


def dataclass_replace(cfg: SimConfig, **changes) -> SimConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)
