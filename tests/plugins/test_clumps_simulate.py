"""Tests of the SDSS-like clumpy-galaxy simulator (astrotl_clumps.simulate)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import astrotl_clumps.simulate as sim
from astrotl_clumps.simulate import (
    BANDS,
    CLASSES,
    PIXEL_SCALE_ARCSEC,
    SimConfig,
    SimResult,
    make_wcs,
    simulate,
    simulate_cached,
    sky_sigma_nmgy,
)

CAT_COLUMNS = ["id", "ra", "dec", "x", "y", "redshift", "abs_mag_r", "mag_g", "mag_r", "mag_i", "disk_g_r",
               "disk_scale_kpc", "disk_scale_px", "inclination_deg", "axis_ratio", "pa_deg", "psf_fwhm_px",
               "n_clumps", "n_odd", "n_stars", "n_background_galaxies", "has_nucleus", "ellipse_a", "ellipse_b",
               "ellipse_theta_deg"]
CLUMP_COLUMNS = ["image", "clump_id", "x", "y", "label", "cls", "odd_reason", "flux_ratio", "fwhm_intrinsic_px",
                 "fwhm_px", "size_kpc", "g_r", "r_i", "x0", "y0", "x1", "y1"]
QUIET = dict(noise=False, star_rate=0.0, background_galaxy_rate=0.0, nucleus_prob=0.0)


@pytest.fixture(scope="module")
def run() -> SimResult:
    return simulate(80, SimConfig(), seed=3)


@pytest.fixture(scope="module")
def quiet() -> SimResult:
    """Noiseless frames without distractors and with bright clumps, for photometry."""
    return simulate(40, SimConfig(flux_ratio_range=(0.05, 0.12), zero_clump_fraction=0.0, **QUIET), seed=5)


def _same(a: SimResult, b: SimResult) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    for ta, tb in ((a.catalog, b.catalog), (a.clumps, b.clumps), (a.distractors, b.distractors)):
        assert ta.colnames == tb.colnames
        for name in ta.colnames:
            np.testing.assert_array_equal(np.asarray(ta[name]), np.asarray(tb[name]))


def test_shapes_and_columns(run):
    assert run.images.shape == (80, 3, 64, 64) and run.images.dtype == np.float32
    assert run.masks.shape == (80, 64, 64) and run.masks.dtype == bool
    assert np.isfinite(run.images).all()
    assert set(CAT_COLUMNS) <= set(run.catalog.colnames)
    assert set(CLUMP_COLUMNS) <= set(run.clumps.colnames)
    assert list(run.catalog["id"]) == list(range(80))
    assert run.catalog.meta["bands"] == list(BANDS) and run.catalog.meta["classes"] == list(CLASSES)
    assert (run.catalog["redshift"] < 0.3).all() and (run.catalog["redshift"] > 0).all()


def test_box_count_equals_n_clumps_and_zero_clump_images_exist(run):
    counts = np.bincount(np.asarray(run.clumps["image"]), minlength=80)
    np.testing.assert_array_equal(counts, np.asarray(run.catalog["n_clumps"]))
    assert (counts == 0).sum() >= 5  # ~20 % have none
    assert counts.max() >= 4
    odd = np.bincount(np.asarray(run.clumps["image"]), weights=np.asarray(run.clumps["label"]), minlength=80)
    np.testing.assert_array_equal(odd.astype(int), np.asarray(run.catalog["n_odd"]))


def test_boxes_inside_image_and_around_clumps(run):
    c = run.clumps
    x0, y0, x1, y1 = (np.asarray(c[k]) for k in ("x0", "y0", "x1", "y1"))
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 63).all() and (y1 <= 63).all()
    assert (x0 < x1).all() and (y0 < y1).all()
    hw = 1.5 * np.asarray(c["fwhm_px"])
    unclipped = (x0 > 0) & (y0 > 0) & (x1 < 63) & (y1 < 63)
    assert unclipped.sum() > len(c) // 2
    np.testing.assert_allclose((x1 - x0)[unclipped], 2 * hw[unclipped], rtol=1e-9)
    np.testing.assert_allclose(((x0 + x1) / 2)[unclipped], np.asarray(c["x"])[unclipped], atol=1e-9)
    assert ((np.asarray(c["x"]) >= x0) & (np.asarray(c["x"]) <= x1)).all()
    # the observed FWHM includes the PSF
    psf = np.asarray(run.catalog["psf_fwhm_px"])[np.asarray(c["image"])]
    assert (np.asarray(c["fwhm_px"]) >= psf).all()


def test_clump_classes_and_odd_definition(run):
    c = run.clumps
    lab = np.asarray(c["label"])
    assert set(np.unique(lab)) <= {0, 1} and 0 < lab.mean() < 0.4
    assert list(np.asarray(c["cls"])[lab == 0][:1]) == ["clump"]
    reason = np.asarray(c["odd_reason"])
    assert set(reason[lab == 0]) <= {"none"} and set(reason[lab == 1]) <= {"red", "extended"}
    disk = np.asarray(run.catalog["disk_g_r"])[np.asarray(c["image"])]
    gr = np.asarray(c["g_r"])
    normal = lab == 0
    assert (gr[normal] <= disk[normal] - 0.2 + 1e-12).all()  # normal clumps are bluer than their disk
    red = reason == "red"
    assert (gr[red] >= disk[red] + 0.3 - 1e-12).all()
    ext = reason == "extended"
    psf = np.asarray(run.catalog["psf_fwhm_px"])[np.asarray(c["image"])]
    assert (np.asarray(c["fwhm_intrinsic_px"])[ext] >= psf[ext] - 1e-9).all()


def test_clumps_are_bluer_than_host_in_the_pixels(quiet):
    """g-r measured on the clump pixels (noiseless) is bluer than the host's integrated g-r."""
    diffs = []
    for row in quiet.clumps[quiet.clumps["label"] == 0]:
        img = quiet.images[row["image"]].astype(np.float64)
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        g, r = img[0, iy - 1 : iy + 2, ix - 1 : ix + 2].sum(), img[1, iy - 1 : iy + 2, ix - 1 : ix + 2].sum()
        m = quiet.masks[row["image"]]
        host = -2.5 * np.log10(img[0][m].sum() / img[1][m].sum())
        diffs.append(-2.5 * np.log10(g / r) - host)
    diffs = np.array(diffs)
    assert len(diffs) > 40
    assert np.median(diffs) < -0.1
    assert (diffs < 0).mean() > 0.9


def test_distractors_are_not_boxed():
    res = simulate(30, SimConfig(zero_clump_fraction=1.0, star_rate=3.0, nucleus_prob=1.0, noise=False), seed=2)
    assert len(res.clumps) == 0 and (res.catalog["n_clumps"] == 0).all()
    assert {"star", "nucleus", "background_galaxy"} <= set(res.distractors["kind"])
    # ... although they are in the images
    for d in res.distractors[res.distractors["kind"] == "star"][:10]:
        img = res.images[d["image"], 1]
        assert img[int(round(d["y"])), int(round(d["x"]))] > 0


def test_distractor_positions_are_not_clump_positions(run):
    d = run.distractors
    assert len(d) > 20
    for kind in ("star", "background_galaxy"):
        sel = d[d["kind"] == kind]
        for row in sel:
            cl = run.clumps[run.clumps["image"] == row["image"]]
            if len(cl):
                assert np.min(np.hypot(cl["x"] - row["x"], cl["y"] - row["y"])) > 0


def test_mask_covers_host_and_clumps(run):
    c = run.clumps
    inside = run.masks[np.asarray(c["image"]), np.rint(c["y"]).astype(int), np.rint(c["x"]).astype(int)]
    assert inside.all()
    centre = run.masks[np.arange(80), np.rint(run.catalog["y"]).astype(int), np.rint(run.catalog["x"]).astype(int)]
    assert centre.all()
    assert 0.02 < run.masks.mean() < 0.6


def test_noise_matches_sky():
    res = simulate(10, SimConfig(star_rate=0, background_galaxy_rate=0, zero_clump_fraction=1.0), seed=4)
    corner = res.images[:, :, :8, :8]
    np.testing.assert_allclose(corner.std(axis=(0, 2, 3)), sky_sigma_nmgy(), rtol=0.15)
    deep = simulate(10, SimConfig(star_rate=0, background_galaxy_rate=0, zero_clump_fraction=1.0, depth=16.0), seed=4)
    np.testing.assert_allclose(deep.images[:, :, :8, :8].std(axis=(0, 2, 3)), sky_sigma_nmgy(16.0), rtol=0.15)


def test_noiseless_flux_of_an_isolated_star():
    res = simulate(30, SimConfig(size=128, z_range=(0.14, 0.15), zero_clump_fraction=1.0, star_rate=3.0,
                                 background_galaxy_rate=0.0, nucleus_prob=0.0, noise=False), seed=6)
    # a star far from its (small) host and the edges: aperture flux ~ catalogue magnitude
    checked = 0
    for d in res.distractors:
        cat = res.catalog[d["image"]]
        far = np.hypot(d["x"] - cat["x"], d["y"] - cat["y"]) > 8 * cat["disk_scale_px"] + 10
        if min(d["x"], d["y"], 127 - d["x"], 127 - d["y"]) < 12 or not far:
            continue
        img = res.images[d["image"], 1]
        yy, xx = np.mgrid[:128, :128]
        ap = (xx - d["x"]) ** 2 + (yy - d["y"]) ** 2 <= 10**2
        mag = 22.5 - 2.5 * np.log10(img[ap].sum())
        assert abs(mag - d["mag_r"]) < 0.1
        checked += 1
    assert checked >= 1


def test_reproducible_and_prefix_stable(run):
    _same(run, simulate(80, SimConfig(), seed=3))
    head = simulate(10, SimConfig(), seed=3)
    np.testing.assert_array_equal(head.images, run.images[:10])
    assert len(head.clumps) == int(np.sum(run.catalog["n_clumps"][:10]))
    other = simulate(10, SimConfig(), seed=4)
    assert not np.array_equal(other.images, head.images)


def test_cache_hit_and_corrupt_entry(tmp_path, monkeypatch, caplog):
    cfg = SimConfig(size=48)
    a = simulate_cached(6, cfg, 1, tmp_path)
    npz = next(tmp_path.glob("*.npz"))
    key = npz.name[:-len(".npz")]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{key}.{t}.ecsv" for t in ("catalog", "clumps", "distractors")] + [f"{key}.npz"]
    with np.load(npz) as z:
        assert str(z["__key__"]) == key and sorted(z.files) == ["__key__", "images", "masks"]
        assert z["masks"].dtype == np.uint8 and z["masks"].shape == (6, 48, 6)  # np.packbits along x

    def boom(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(sim, "simulate", boom)
    t0 = time.perf_counter()
    b = simulate_cached(6, cfg, 1, tmp_path)
    assert time.perf_counter() - t0 < 5
    _same(a, b)
    monkeypatch.undo()
    npz.write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        c = simulate_cached(6, cfg, 1, tmp_path)
    _same(a, c)
    assert "rebuilding" in caplog.text and npz.name in caplog.text
    caplog.clear()
    (tmp_path / f"{key}.clumps.ecsv").unlink()  # an incomplete entry is rebuilt too
    with caplog.at_level("WARNING"):
        d = simulate_cached(6, cfg, 1, tmp_path)
    _same(a, d)
    assert "rebuilding" in caplog.text
    # a different seed, n or config is a different entry
    simulate_cached(6, cfg, 2, tmp_path)
    simulate_cached(5, cfg, 1, tmp_path)
    simulate_cached(6, SimConfig(size=48, star_rate=0.0), 1, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 4
    simulate_cached(6, SimConfig(size=48), 1, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_empty_and_zero_clump_tables_round_trip(tmp_path):
    res = simulate_cached(3, SimConfig(size=32, zero_clump_fraction=1.0), 0, tmp_path)
    again = simulate_cached(3, SimConfig(size=32, zero_clump_fraction=1.0), 0, tmp_path)
    assert len(res.clumps) == len(again.clumps) == 0
    assert simulate(0).images.shape == (0, 3, 64, 64)


def test_wcs_north_up_east_left():
    w = make_wcs(150.0, 2.0, 31.5, 31.5)
    ra, dec = w.pixel_to_world_values(31.5, 31.5)
    assert abs(ra - 150.0) < 1e-9 and abs(dec - 2.0) < 1e-9
    _, dec_up = w.pixel_to_world_values(31.5, 32.5)
    ra_right, _ = w.pixel_to_world_values(32.5, 31.5)
    assert dec_up > 2.0 and ra_right < 150.0
    assert abs((dec_up - 2.0) * 3600 - PIXEL_SCALE_ARCSEC) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=16), "size"),
        (dict(z_range=(0.2, 0.1)), "z_range"),
        (dict(z_range=(0.0, 0.1)), "z_range"),
        (dict(flux_ratio_range=(0.0, 0.1)), "flux_ratio_range"),
        (dict(seeing_range_arcsec=(0.1, 1.0)), "seeing_range_arcsec"),
        (dict(zero_clump_fraction=1.5), "zero_clump_fraction"),
        (dict(odd_fraction=-0.1), "odd_fraction"),
        (dict(star_rate=-1.0), "star_rate"),
        (dict(mean_clumps=0.5), "mean_clumps"),
        (dict(max_clumps=0), "max_clumps"),
        (dict(box_scale=0.0), "box_scale"),
        (dict(bulge_fraction_range=(0.0, 1.0)), "bulge_fraction_range"),
        (dict(clump_size_kpc=(0.0, 1.0)), "clump_size_kpc"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**kwargs)


def test_argument_errors():
    with pytest.raises(ValueError, match="n="):
        simulate(-1)
    with pytest.raises(ValueError, match="seed="):
        simulate(1, seed=-2)
    with pytest.raises(ValueError, match="config="):
        simulate(1, {"size": 64})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config="):
        simulate_cached(1, {"size": 64}, 0, "/tmp")  # type: ignore[arg-type]


def test_speed():
    """Simulation must not be the bottleneck: well over 20 frames per CPU-second (measured ~180)."""
    simulate(2, SimConfig(), seed=0)
    t0 = time.process_time()
    simulate(60, SimConfig(), seed=9)
    rate = 60 / max(time.process_time() - t0, 1e-9)
    print(f"clumps_sim: {rate:.0f} frames per CPU-second (64 px)")
    assert rate > 20
