"""Tests of the CANDELS / CLASH stamp and vote simulator (astrotl_clash.simulate)."""

from __future__ import annotations

import time

import galsim
import numpy as np
import pytest
from scipy import ndimage

from astrotl_clash import simulate as sim
from astrotl_clash.simulate import (
    CANDELS_BAND,
    CLASH_BANDS,
    CLASSES,
    KINDS,
    SimConfig,
    SimResult,
    cache_key,
    sample_votes,
    simulate,
    simulate_cached,
    tune_psf_sigma,
    vote_probabilities,
)

QUIET = dict(noise=False, defect_rate=0.0, neighbours=0.0)
DISKS = (0.0, 1.0, 0.0, 0.0)
POINTS = (0.0, 0.0, 0.0, 1.0)


def _same(a: SimResult, b: SimResult) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    assert a.catalog.colnames == b.catalog.colnames
    for name in a.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(a.catalog[name]), np.asarray(b.catalog[name]))


def _fractions(cat, prefix="p_") -> np.ndarray:
    return np.stack([np.asarray(cat[f"{prefix}{c}"], dtype=float) for c in CLASSES], axis=1)


def _per_band(cat, col: str, n_bands: int) -> np.ndarray:
    return np.asarray(cat[col], dtype=float).reshape(-1, n_bands)


@pytest.fixture(scope="module")
def candels_run() -> SimResult:
    return simulate(120, SimConfig(domain="candels", size=24), seed=4)


@pytest.fixture(scope="module")
def clash_run() -> SimResult:
    return simulate(12, SimConfig(domain="clash", size=24), seed=4)


# ---------------------------------------------------------------------- API, reproducibility


def test_same_seed_identical_different_seed_differs():
    cfg = SimConfig(domain="clash", size=16, bands=("F275W", "F160W"))
    a, b = simulate(6, cfg, seed=5), simulate(6, cfg, seed=5)
    _same(a, b)
    c = simulate(6, cfg, seed=6)
    assert not np.array_equal(a.images, c.images)


def test_first_galaxies_do_not_depend_on_n():
    cfg = SimConfig(domain="clash", size=16, bands=("F336W", "F814W"))
    small, big = simulate(3, cfg, seed=2), simulate(7, cfg, seed=2)
    np.testing.assert_array_equal(small.images, big.images[:6])
    for name in small.catalog.colnames:  # votes included: each galaxy's panel has its own seed
        np.testing.assert_array_equal(np.asarray(small.catalog[name]), np.asarray(big.catalog[name][:6]))


def test_shapes_columns_and_band_order(clash_run):
    res = clash_run
    assert res.images.shape == (12 * 16, 24, 24) and res.images.dtype == np.float32
    cat = res.catalog
    for col in ("galaxy", "band", "intrinsic_type", "true_type", "defect", "defect_weight", "mag", "mag_f160w", "snr",
                "r_e_arcsec", "r_e_px", "fwhm_px", "pixel_scale", "x", "y", "n_voters"):
        assert col in cat.colnames
    for c in CLASSES:
        assert {f"p_{c}", f"votes_{c}", f"true_{c}"} <= set(cat.colnames)
    # galaxy-major, bands in wavelength order
    assert list(cat["band"][:16]) == list(CLASH_BANDS)
    assert np.array_equal(np.asarray(cat["galaxy"]), np.repeat(np.arange(12), 16))
    assert cat.meta["bands"] == list(CLASH_BANDS) and cat.meta["classes"] == list(CLASSES)
    # a galaxy's morphology is fixed across bands
    for col in ("intrinsic_type", "r_e_arcsec", "mag_f160w", "n_voters", "x", "pixel_scale"):
        per = np.asarray(cat[col]).reshape(12, 16)
        assert (per == per[:, :1]).all(), col
    # bands given in any order come out in wavelength order
    cfg = SimConfig(domain="clash", size=16, bands=("F160W", "f275w"))
    assert cfg.bands == ("F275W", "F160W")
    assert simulate(0, cfg).images.shape == (0, 16, 16)


def test_candels_is_one_f160w_stamp_per_galaxy(candels_run):
    cat = candels_run.catalog
    assert len(cat) == 120 and set(cat["band"]) == {"F160W"}
    assert set(cat["field"]) <= {"deep", "wide", "ers"} and len(set(cat["field"])) == 3
    assert np.all(np.asarray(cat["mag_f160w"]) <= 24.5) and np.all(np.asarray(cat["mag_f160w"]) >= 18.0)
    np.testing.assert_allclose(np.asarray(cat["mag"]), np.asarray(cat["mag_f160w"]), atol=0.01)
    kinds = set(cat["intrinsic_type"])
    assert kinds == set(KINDS)


def test_votes_are_counts_and_fractions_sum_to_one(candels_run, clash_run):
    for res, lo, hi in ((candels_run, 4, 8), (clash_run, 5, 9)):
        cat = res.catalog
        p, t = _fractions(cat), _fractions(cat, "true_")
        votes = _fractions(cat, "votes_").astype(int)
        nv = np.asarray(cat["n_voters"])
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-12)
        assert (votes.sum(1) == nv).all() and nv.min() >= lo and nv.max() <= hi
        np.testing.assert_allclose(p, votes / nv[:, None])


def test_sample_votes_multinomial_limit_and_counts():
    rng = np.random.default_rng(0)
    p = np.tile([0.5, 0.3, 0.1, 0.05, 0.05], (4000, 1))
    v = sample_votes(rng, p, 7, float("inf"))
    assert v.shape == (4000, 5) and (v.sum(1) == 7).all()
    np.testing.assert_allclose(v.mean(0) / 7, p[0], atol=0.01)
    # a Dirichlet panel disagrees more than independent voters (overdispersion)
    w = sample_votes(rng, p, 7, 5.0)
    assert (w / 7).var(0)[0] > (v / 7).var(0)[0] * 1.3


# ---------------------------------------------------------------------- physics


def test_disk_clumps_dominate_the_uv_and_look_clumpy():
    bands = ("F336W", "F435W", "F850LP", "F160W")
    res = simulate(24, SimConfig(domain="clash", size=32, bands=bands, type_fractions=DISKS, mag_range=(19.0, 21.0),
                                 **QUIET), seed=2)
    cf = _per_band(res.catalog, "clump_frac", 4)
    # the clumps' UV/optical flux ratio exceeds the smooth disk's: their share falls with wavelength
    assert (cf[:, 0] > cf[:, 1]).all() and (cf[:, 1] > cf[:, 2]).all() and (cf[:, 2] > cf[:, 3]).all()
    assert np.median(cf[:, 0] / cf[:, 3]) > 4
    # and the images show it: more light off a median-smoothed version in F435W than in F850LP,
    # two ACS bands whose PSFs differ by only 15 %
    im = res.images.reshape(24, 4, 32, 32)

    def clumpiness(x):
        return np.abs(x - ndimage.median_filter(x, size=5)).sum() / np.abs(x).sum()

    s = np.array([[clumpiness(im[g, b]) for b in range(4)] for g in range(24)])
    assert s[:, 1].mean() > 1.2 * s[:, 2].mean() and (s[:, 1] > s[:, 2]).mean() > 0.75


def test_same_disks_get_more_irregular_votes_in_blue_than_red():
    n = 16
    # deep data: the band dependence comes from the clumps, not from faintness
    deep = simulate(n, SimConfig(domain="clash", size=16, type_fractions=DISKS, depth_offset=3.0, **QUIET), seed=3)
    t = _per_band(deep.catalog, "true_irregular", 16)
    blue, red = t[:, [1, 2, 3]].mean(1), t[:, [9, 13, 15]].mean(1)  # F275W-F390W vs F814W, F140W, F160W
    assert (blue > red).all() and blue.mean() > red.mean() + 0.2
    p = _per_band(deep.catalog, "p_irregular", 16)
    assert p[:, [1, 2, 3]].mean() > p[:, [9, 13, 15]].mean() + 0.2
    # disks are disks in the red
    assert _per_band(deep.catalog, "true_disk", 16)[:, 15].mean() > 0.45
    # at CLASH depth the bluest bands are also faint: unclassifiable votes there
    shallow = simulate(n, SimConfig(domain="clash", size=16, type_fractions=DISKS, **QUIET), seed=3)
    u = _per_band(shallow.catalog, "true_unclassifiable", 16)
    assert u[:, 0].mean() > u[:, 15].mean() + 0.2
    snr = _per_band(shallow.catalog, "snr", 16)
    assert (snr[:, 0] < snr[:, 15]).all()


def test_spheroids_are_red():
    res = simulate(10, SimConfig(domain="clash", size=16, type_fractions=(1, 0, 0, 0), **QUIET), seed=1)
    mag = _per_band(res.catalog, "mag", 16)
    assert (mag[:, 0] - mag[:, 15] > 4).all()  # F225W - F160W
    assert (_per_band(res.catalog, "clump_frac", 16) == 0).all()


def test_point_sources_stay_point_like_with_the_band_psf():
    cfg = SimConfig(domain="clash", size=48, type_fractions=POINTS, jitter_px=0.0, side_range_arcsec=(1.2, 1.2),
                    mag_range=(19.0, 20.0), **QUIET)
    res = simulate(2, cfg, seed=1)
    cat = res.catalog
    for k in range(len(cat)):
        img = res.images[k].astype(np.float64)
        fwhm = galsim.Image(img, scale=1.0).calculateFWHM(center=galsim.PositionD(cat["x"][k] + 1, cat["y"][k] + 1))
        # the band's PSF (tabulated mosaic FWHM) plus the stamp pixel
        assert 0.97 < fwhm / cat["fwhm_px"][k] < 1.2, (cat["band"][k], fwhm, cat["fwhm_px"][k])
        yy, xx = np.unravel_index(np.argmax(img), img.shape)
        assert abs(xx - cat["x"][k]) <= 1 and abs(yy - cat["y"][k]) <= 1
    fw = _per_band(cat, "fwhm_arcsec", 16)[0]
    assert fw[list(CLASH_BANDS).index("F160W")] > 1.8 * fw[list(CLASH_BANDS).index("F336W")]
    assert (_per_band(cat, "true_point_source", 16) > 0.8).all()
    assert (np.asarray(cat["r_e_arcsec"]) == 0).all()


def test_point_sources_in_candels_get_point_votes(candels_run):
    cat = candels_run.catalog
    ps = np.asarray(cat["intrinsic_type"]) == "point_source"
    clean = ps & (np.asarray(cat["defect"]) == "none")
    assert clean.sum() >= 2
    assert np.asarray(cat["true_point_source"])[clean].min() > 0.7


def test_vote_split_grows_as_snr_falls():
    snr = np.array([200.0, 50.0, 20.0, 10.0, 5.0, 3.0, 1.5])
    for kind in range(4):
        p = vote_probabilities(np.full(7, kind), snr, np.full(7, 3.0), np.full(7, 0.05), np.full(7, 0.1), np.zeros(7))
        top = p[:5].max(1)  # S/N 200 ... 5
        entropy = -(p * np.log(p)).sum(1)[:5]
        assert (np.diff(top) < 0).all() and (np.diff(entropy) > 0).all(), KINDS[kind]
        # below S/N ~ 2 the panel agrees again, on "unclassifiable"
        assert p[-1].argmax() == 4 and p[0, 4] < 0.05
    # and in simulated catalogues: faint stamps have less agreement
    res = simulate(40, SimConfig(domain="clash", size=16, bands=("F275W", "F475W", "F160W"), **QUIET), seed=8)
    t = _fractions(res.catalog, "true_")
    s = np.asarray(res.catalog["snr"])
    assert t.max(1)[s > 30].mean() > t.max(1)[(s > 2) & (s < 10)].mean() + 0.1


def test_small_galaxies_get_spheroid_and_point_votes():
    res = np.array([0.2, 0.5, 1.0, 3.0])
    p = vote_probabilities(np.ones(4, int), np.full(4, 100.0), res, np.full(4, 0.05), np.zeros(4), np.zeros(4))
    assert (np.diff(p[:, 1]) > 0).all()  # disk votes grow with resolution
    assert p[0, 0] + p[0, 3] > 0.6 and p[-1, 1] > 0.7


def test_faint_and_defective_stamps_are_unclassifiable():
    cfg = SimConfig(domain="clash", size=16, defect_rate=1.0, bands=("F225W", "F606W", "F160W"))
    res = simulate(40, cfg, seed=9)
    cat = res.catalog
    w = np.asarray(cat["defect_weight"])
    snr = np.asarray(cat["snr"])
    unc = np.asarray(cat["true_type"]) == "unclassifiable"
    assert np.array_equal(unc, (w >= 0.5) | (snr < 3))
    assert (np.asarray(cat["defect"])[snr < 3] != "none").all()
    kinds = set(np.asarray(cat["defect"])) - {"none", "faint"}
    assert kinds == {"cosmic_ray", "spikes", "edge", "blend"}
    t = np.asarray(cat["true_unclassifiable"])
    assert t[w >= 0.5].mean() > t[(w == 0) & (snr > 10)].mean() + 0.3
    # edges: the no-data side of the stamp is exactly 0
    edge = np.flatnonzero((np.asarray(cat["defect"]) == "edge") & (w > 0))
    assert len(edge) and all((res.images[k] == 0).sum() > 0 for k in edge)


def test_noise_tracks_band_depth():
    cfg = SimConfig(domain="clash", size=32, type_fractions=POINTS, framing="fixed", defect_rate=0.0, neighbours=0.0,
                    mag_range=(24.0, 24.5), bands=("F225W", "F814W"))
    res = simulate(6, cfg, seed=3)
    im = res.images.reshape(6, 2, 32, 32)
    corner = np.concatenate([im[:, :, :8, :8].reshape(6, 2, -1), im[:, :, -8:, -8:].reshape(6, 2, -1)], axis=2)
    sd = corner.std(axis=2).mean(0)
    f_lim = 10 ** (-0.4 * (np.array([CLASH_BANDS["F225W"].depth_ab, CLASH_BANDS["F814W"].depth_ab]) - 31.4))
    ratio_expected = f_lim[0] / f_lim[1]  # same cell size (UVIS and ACS below the 0.065" mosaic pixel)
    assert 0.75 < (sd[0] / sd[1]) / ratio_expected < 1.3
    snr = _per_band(res.catalog, "snr", 2)
    assert (snr[:, 0] < snr[:, 1]).all()


def test_noiseless_option():
    cfg = SimConfig(domain="candels", size=16, noise=False, defect_rate=0.0, neighbours=0.0, type_fractions=(1, 0, 0, 0))
    res = simulate(3, cfg, seed=0)
    assert np.abs(res.images[:, :2, :2]).max() < 1e-2 * res.images.max()


def test_rendering_matches_galsim():
    optics = sim._optics("clash", ("F275W", "F160W"))
    comp = sim._Sersic(4.0, 0.3, 0.6, 0.7, 0.0, 0.0, np.ones(2))
    x0 = y0 = 23.7
    for ovs in (1, 2):
        grid = sim._grid(48, ovs)
        img = sim._to_image(grid, sim._spectrum(grid, [comp], [], [], x0, y0, 0.065, 2) * sim._otf(grid, optics, 0.065))
        for b, spec in enumerate(optics.specs):
            psf = galsim.Convolve(galsim.Airy(lam_over_diam=optics.lam_d[b], obscuration=0.33),
                                  galsim.Gaussian(sigma=optics.sigma[b]), galsim.Pixel(spec.native_arcsec),
                                  galsim.Pixel(0.065))
            gal = galsim.Sersic(n=4.0, half_light_radius=0.3).shear(q=0.6, beta=0.7 * galsim.radians)
            ref = galsim.Convolve(gal, psf).drawImage(nx=48, ny=48, scale=0.065, offset=(x0 - 23.5, y0 - 23.5)).array
            tol = 0.003 if ovs == 2 or spec.name == "F160W" else 0.02  # un-folded UV: the aliasing is missing
            assert np.abs(img[b] - ref).max() < tol * ref.max(), (ovs, spec.name)


def test_stored_psf_tuning_matches_galsim():
    sigma, fwhm = tune_psf_sigma(CANDELS_BAND, 0.06)
    stored = sim._PSF_TUNED[("F160W", 0.06)]
    assert sigma == pytest.approx(stored[0], rel=0.03) and fwhm == pytest.approx(stored[1], rel=0.01)
    assert fwhm == pytest.approx(CANDELS_BAND.fwhm_arcsec, rel=0.01)


def test_speed_few_hundred_stamps_per_second():
    cfg = SimConfig(domain="clash", size=64)
    simulate(1, cfg, seed=0)  # tables
    t0 = time.process_time()
    res = simulate(8, cfg, seed=1)
    rate = len(res) / (time.process_time() - t0)
    assert rate > 100, f"{rate:.0f} stamps/s"


# ---------------------------------------------------------------------- cache


def test_cache_hit_returns_identical_result_without_simulating(tmp_path, monkeypatch):
    cfg = SimConfig(domain="clash", size=16, bands=("F435W", "F160W"))
    a = simulate_cached(5, cfg, 3, tmp_path)
    key = cache_key(5, cfg, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.catalog.ecsv", f"{key}.npz"]
    with np.load(tmp_path / f"{key}.npz") as z:
        assert str(z["__key__"]) == key and sorted(z.files) == ["__key__", "images"]

    def boom(*args, **kwargs):
        raise AssertionError("simulate() called on a cache hit")

    monkeypatch.setattr(sim, "simulate", boom)
    b = simulate_cached(5, cfg, 3, tmp_path)
    _same(a, b)


def test_cache_key_depends_on_config_seed_and_n(tmp_path):
    cfg = SimConfig(domain="candels", size=16)
    keys = {cache_key(4, cfg, 1), cache_key(4, cfg, 2), cache_key(5, cfg, 1),
            cache_key(4, SimConfig(domain="candels", size=16, defect_rate=0.2), 1),
            cache_key(4, SimConfig(domain="candels", size=16, vote_concentration=float("inf")), 1)}
    assert len(keys) == 5 and cache_key(4, cfg, 1) == cache_key(4, SimConfig(domain="candels", size=16), 1)


def test_corrupt_cache_is_regenerated(tmp_path, caplog):
    cfg = SimConfig(domain="candels", size=16)
    a = simulate_cached(4, cfg, 1, tmp_path)
    npz = tmp_path / f"{cache_key(4, cfg, 1)}.npz"
    npz.write_bytes(b"garbage")
    b = simulate_cached(4, cfg, 1, tmp_path)
    _same(a, b)
    assert "rebuilding" in caplog.text and npz.name in caplog.text
    caplog.clear()
    (tmp_path / f"{cache_key(4, cfg, 1)}.catalog.ecsv").unlink()  # an incomplete entry is rebuilt too
    c = simulate_cached(4, cfg, 1, tmp_path)
    _same(a, c)
    assert "rebuilding" in caplog.text


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(domain="hst"), "domain"),
    (dict(size=8), "size"),
    (dict(domain="candels", bands=("F275W",)), "bands"),
    (dict(domain="clash", bands=("F999W",)), "bands"),
    (dict(domain="clash", bands=("F275W", "F275W")), "bands"),
    (dict(type_fractions=(0, 0, 0, 0)), "type_fractions"),
    (dict(type_fractions=(1, 1, 1)), "type_fractions"),
    (dict(mag_range=(25.0, 20.0)), "mag_range"),
    (dict(defect_rate=1.5), "defect_rate"),
    (dict(framing="tight"), "framing"),
    (dict(petrosian_factor=0), "petrosian_factor"),
    (dict(side_range_arcsec=(3.0, 1.0)), "side_range_arcsec"),
    (dict(voters=(0, 5)), "voters"),
    (dict(voters=("a", 5)), "voters"),
    (dict(vote_concentration=0.0), "vote_concentration"),
    (dict(neighbours=-1.0), "neighbours"),
    (dict(depth_offset=float("nan")), "depth_offset"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**kwargs)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n=-1"):
        simulate(-1, SimConfig())
    with pytest.raises(ValueError, match="seed"):
        simulate(1, SimConfig(), seed=-3)
    with pytest.raises(ValueError, match="SimConfig"):
        simulate(1, {"domain": "clash"})


def test_docstring_examples():
    import doctest

    from astrotl_clash import dataset

    for module in (sim, dataset):
        assert doctest.testmod(module).failed == 0, module.__name__
