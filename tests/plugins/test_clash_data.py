"""The CLASH plugin's data sets: clash_sim (simulated) and clash_votes (real labels + FITS stamps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from pydantic import ValidationError

from astrotl.data import NormalizeConfig
from astrotl.errors import DataError
from astrotl_clash import dataset as clash_dataset
from astrotl_clash.dataset import (
    CHANNEL,
    ClashSimConfig,
    ClashSimDataset,
    ClashVotesConfig,
    ClashVotesDataset,
    infer_votes,
    parse_clash_id,
    read_labels,
    read_stamp,
)
from astrotl_clash.simulate import CLASH_BANDS, CLASSES
from testutils import shared_data_dir

HEADER = "ID,p_smooth,p_features,p_irregular,p_point_source,p_unclassifiable\n"


def _shared(*parts: str) -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data not found (set ASTROTL_SHARED_DATA or put it at ../shared/data)")
    path = root.joinpath("candels_clash_labels_only", *parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} not found")
    return path


# ---------------------------------------------------------------------- clash_sim


@pytest.fixture(scope="module")
def clash_splits(_cache_dir):
    cfg = ClashSimConfig(domain="clash", size=16, n_train=6, n_val=3, n_test=3, bands=["F275W", "F606W", "F160W"])
    return {s: ClashSimDataset(cfg, split=s, seed=0, cache_dir=_cache_dir) for s in ("train", "val", "test", "predict")}


@pytest.fixture(scope="module")
def candels_train(_cache_dir):
    return ClashSimDataset(ClashSimConfig(domain="candels", size=16, n_train=40, n_val=5, n_test=5), split="train",
                           seed=0, cache_dir=_cache_dir)


def test_sim_sample_dict_info_and_catalogue(candels_train):
    ds = candels_train
    assert len(ds) == 40
    s = ds[3]
    assert set(s) == {"image", "target", "votes", "index"} and s["index"] == 3
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert s["target"].shape == (5,) and s["target"].dtype == torch.float32
    assert s["votes"].dtype == torch.int64 and float(s["target"].sum()) == pytest.approx(1.0, abs=1e-6)
    info = ds.info()
    assert info.bands == CHANNEL == ("flux",) and info.targets == CLASSES and info.classes is None
    assert info.image_size == 16 and info.extra["filters"] == ["F160W"]
    cat = ds.catalog()
    for col in ("id", "galaxy_id", "band", "true_type", "intrinsic_type", "mag", "snr", "r_e_px", "n_voters",
                *(f"true_{c}" for c in CLASSES)):
        assert col in cat.colnames
    assert list(cat.colnames[:2]) == ["id", "galaxy_id"] and cat["id"][0] == "candels-train-00000"
    np.testing.assert_allclose(ds.targets().sum(1), 1.0, atol=1e-6)
    assert (ds.votes().sum(1) == np.asarray(cat["n_voters"])).all()
    np.testing.assert_allclose(ds.targets(), ds.votes() / np.asarray(cat["n_voters"])[:, None], atol=1e-6)
    assert ds.labels().dtype == np.int64 and np.array_equal(ds.labels(), ds.targets().argmax(1))
    assert np.array_equal(ds.groups(), np.asarray(cat["id"]))  # CANDELS: one stamp per galaxy


def test_sim_clash_splits_are_grouped_by_galaxy(clash_splits):
    gal = {s: np.asarray(d.groups()) for s, d in clash_splits.items()}
    assert {s: len(d) for s, d in clash_splits.items()} == {"train": 18, "val": 9, "test": 9, "predict": 9}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(gal[a]) & set(gal[b])
    for s in ("train", "val", "test"):
        ids, counts = np.unique(gal[s], return_counts=True)
        assert (counts == 3).all()  # every band of a galaxy in the same split
        cat = clash_splits[s].catalog()
        for g in ids:
            assert sorted(cat["band"][gal[s] == g]) == ["F160W", "F275W", "F606W"]
    assert np.array_equal(gal["predict"], gal["test"])
    assert clash_splits["train"].catalog()["id"][1] == "clash-train-00000_F606W"


def test_sim_data_seed_not_run_seed_and_cache_hit(clash_splits, _cache_dir, monkeypatch):
    cfg = ClashSimConfig(domain="clash", size=16, n_train=6, n_val=3, n_test=3, bands=["F275W", "F606W", "F160W"])

    def boom(*args, **kwargs):
        raise AssertionError("simulated again instead of loading the cache")

    monkeypatch.setattr("astrotl_clash.simulate.simulate", boom)
    again = ClashSimDataset(cfg, split="train", seed=123, cache_dir=_cache_dir)
    assert torch.equal(again[4]["image"], clash_splits["train"][4]["image"])
    monkeypatch.undo()
    other = ClashSimDataset(cfg.model_copy(update={"seed": 1}), split="val", seed=0, cache_dir=_cache_dir)
    assert not torch.equal(other[0]["image"], clash_splits["val"][0]["image"])


def test_sim_train_subset_keeps_whole_galaxies(clash_splits):
    from astrotl.engine import subset_indices

    ds = clash_splits["train"]
    idx = subset_indices(ds, 2, unit="groups", seed=0)
    chosen = set(ds.groups()[idx])
    assert len(chosen) == 2 and len(idx) == 6
    assert set(np.flatnonzero(np.isin(ds.groups(), list(chosen)))) == set(idx)


def test_sim_normalisation_is_per_image_by_default(_cache_dir):
    cfg = ClashSimConfig(domain="clash", size=16, n_train=2, n_val=1, n_test=1, bands=["F225W", "F160W"])
    assert cfg.normalize.scale == "image" and cfg.normalize.stretch == "asinh"
    ds = ClashSimDataset(cfg, split="train", seed=0, cache_dir=_cache_dir)
    x = ds.raw_images()
    assert torch.isfinite(x).all() and x.abs().max() <= 10.0
    # in noise units both a shallow UV and a deep IR stamp have a sky scatter of order one (asinh(x / 3))
    for i in range(len(ds)):
        corner = torch.cat([x[i, 0, :4, :4].flatten(), x[i, 0, -4:, -4:].flatten()])
        assert 0.05 < float(corner.std()) < 1.5
    raw = ClashSimDataset(cfg.model_copy(update={"normalize": NormalizeConfig(background="none", scale="none",
                                                                               stretch="linear", clip=None)}),
                          split="train", seed=0, cache_dir=_cache_dir)
    assert float(raw.raw_images().abs().max()) > 10.0  # nJy


def test_sim_config_errors():
    with pytest.raises(ValidationError, match="bands"):
        ClashSimConfig(domain="candels", bands=["F275W"])
    with pytest.raises(ValidationError, match="bands"):
        ClashSimConfig(domain="clash", bands=["F999W"])
    with pytest.raises(ValidationError, match="mag_range"):
        ClashSimConfig(mag_range=(25.0, 20.0))
    with pytest.raises(ValidationError, match="extra"):
        ClashSimConfig(n_galaxies=10)
    assert ClashSimConfig(domain="clash").counts() == {"train": 60, "val": 20, "test": 20, "predict": 20}
    assert ClashSimConfig().counts()["train"] == 3000


def test_datasets_registered():
    from astrotl.plugins import load_registries

    regs = load_registries()
    assert regs.datasets.get("clash_sim") is ClashSimDataset
    assert regs.datasets.get("clash_votes") is ClashVotesDataset


# ---------------------------------------------------------------------- label helpers


def test_parse_clash_id_and_errors():
    assert parse_clash_id("macs1206_f435w_1322") == ("macs1206", "F435W", "1322")
    assert parse_clash_id("rxj1347_F850LP_7") == ("rxj1347", "F850LP", "7")
    with pytest.raises(DataError, match="not of the form <cluster>_<band>_<id>"):
        parse_clash_id("macs1206-f435w-1322")
    with pytest.raises(DataError, match="F999W, which is not one of the 16 CLASH filters"):
        parse_clash_id("a611_f999w_860")


def test_infer_votes():
    f = np.array([[0.4, 0.6, 0, 0, 0], [1.0, 0, 0, 0, 0], [1 / 7, 2 / 7, 4 / 7, 0, 0],
                  [0.066666667, 0.106666667, 0.813333333, 0.0, 0.013333333]])
    v, n, exact = infer_votes(f, min_voters=5, max_denominator=12)
    assert n.tolist() == [5, 5, 7, 12] and exact.tolist() == [True, True, True, False]
    assert v[:3].tolist() == [[2, 3, 0, 0, 0], [5, 0, 0, 0, 0], [1, 2, 4, 0, 0]]
    assert (v.sum(1) == n).all() and v[3].argmax() == 2
    v, n, _ = infer_votes(f[:1], min_voters=6)
    assert n.tolist() == [10] and v.tolist() == [[4, 6, 0, 0, 0]]


def _write_labels(path: Path, rows: list[tuple]) -> Path:
    path.write_text(HEADER + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("content, match", [
    ("ID,p_smooth,p_features\nx,0.5,0.5\n", "lacks column"),
    (HEADER + "a611_f475w_1,0.5,0.5,0,0,0\na611_f475w_1,1,0,0,0,0\n", "repeats id"),
    (HEADER + "a611_f475w_1,0.5,0.3,0,0,0\n", "row 'a611_f475w_1' has vote fractions"),
    (HEADER + "a611_f475w_1,-0.5,1.5,0,0,0\n", "must be >= 0"),
    (HEADER + "a611_f475w_1,x,1,0,0,0\n", "must hold numbers"),
    (HEADER + "a611-f475w-1,1,0,0,0,0\n", "not of the form"),
])
def test_read_labels_errors(tmp_path, content, match):
    p = tmp_path / "labels.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        read_labels(p, "clash")


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(DataError, match="labels file .* not found; set data.labels"):
        read_labels(tmp_path / "nope.csv")


# ---------------------------------------------------------------------- clash_votes with tiny FITS stamps


def _stamp(path: Path, band: str, shape=(40, 40), seed=0, key="FILTER", nan=False, extname=None) -> Path:
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    data = (rng.normal(0, 0.01, shape) + np.exp(-((xx - (nx - 1) / 2) ** 2 + (yy - (ny - 1) / 2) ** 2) / 18.0))
    data = data.astype(np.float32)
    if nan:
        data[0, :5] = np.nan
    h = fits.Header()
    h[key] = band
    h["EXPTIME"] = 1000.0
    h["BUNIT"] = "ELECTRONS/S"
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -0.065 / 3600, 0.0, 0.0, 0.065 / 3600
    if extname:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=h, name=extname)]).writeto(path)
    else:
        fits.PrimaryHDU(data, header=h).writeto(path)
    return path


@pytest.fixture
def tiny(tmp_path) -> dict:
    """Labels for 5 galaxies in 2-3 CLASH bands and their FITS stamps (various sizes, one non-square, a NaN)."""
    rows = []
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    k = 0
    for g, (cluster, obj) in enumerate([("a611", "1"), ("a611", "2"), ("macs1206", "7"), ("rxj1347", "33"),
                                        ("a209", "5")]):
        for band in (["F275W", "F814W", "F160W"] if g % 2 == 0 else ["F435W", "F125W"]):
            frac = [[0.6, 0.2, 0.2, 0, 0], [1 / 7, 2 / 7, 4 / 7, 0, 0], [0, 0, 0, 0, 1]][k % 3]
            rows.append((f"{cluster}_{band.lower()}_{obj}", *frac))
            shape = (40, 40) if k % 4 else (50, 44)
            _stamp(stamps / f"{cluster}_{band.lower()}_{obj}.fits", band, shape=shape, seed=k, nan=k == 2,
                   key="FILTER1" if band in ("F435W", "F814W") else "FILTER")
            k += 1
    labels = _write_labels(tmp_path / "labels.csv", rows)
    return {"labels": str(labels), "stamps": str(stamps), "n": len(rows), "dir": tmp_path}


def _votes_ds(tiny, split="predict", cache=None, **kw):
    cfg = ClashVotesConfig(labels=tiny["labels"], stamps_dir=tiny["stamps"], size=24, **kw)
    return ClashVotesDataset(cfg, split=split, seed=0, cache_dir=cache or tiny["dir"] / "cache")


def test_votes_dataset_samples_catalogue_and_groups(tiny):
    ds = _votes_ds(tiny, votes="infer")
    assert len(ds) == tiny["n"] == 13
    s = ds[0]
    assert set(s) == {"image", "target", "votes", "index"}
    assert s["image"].shape == (1, 24, 24) and s["image"].dtype == torch.float32 and torch.isfinite(s["image"]).all()
    cat = ds.catalog()
    assert cat["id"][0] == "a611_f275w_1" and cat["galaxy_id"][0] == "a611_1" and cat["band"][0] == "F275W"
    assert cat["cluster"][0] == "a611" and cat["object"][0] == "1" and cat["file"][0] == "a611_f275w_1.fits"
    assert cat["stamp_nx"][0] == 44 and cat["stamp_ny"][0] == 50
    np.testing.assert_allclose(np.asarray(cat["pixel_scale"]), 0.065, rtol=1e-6)
    assert set(cat["bunit"]) == {"ELECTRONS/S"} and (np.asarray(cat["exptime"]) == 1000).all()
    np.testing.assert_allclose(ds.targets().sum(1), 1.0, atol=1e-6)
    assert ds.votes()[1].tolist() == [1, 2, 4, 0, 0] and ds.votes()[0].tolist() == [3, 1, 1, 0, 0]
    assert (np.asarray(cat["n_voters"]) >= 5).all()
    assert ds.labels().tolist()[:3] == [0, 2, 4]
    assert len(set(ds.groups())) == 5
    info = ds.info()
    assert info.bands == ("flux",) and info.targets == CLASSES
    assert info.extra["filters"] == ["F125W", "F160W", "F275W", "F435W", "F814W"]
    # without vote inference there are no votes in the samples
    plain = _votes_ds(tiny)
    assert "votes" not in plain[0] and plain.votes() is None


def test_votes_dataset_grouped_split_and_band_subset(tiny):
    parts = {s: _votes_ds(tiny, split=s, split_fractions=(0.6, 0.2, 0.2)) for s in ("train", "val", "test")}
    assert sum(len(d) for d in parts.values()) == tiny["n"]
    gal = {s: set(d.groups()) for s, d in parts.items()}
    assert [len(g) for g in gal.values()] == [3, 1, 1]
    assert not (gal["train"] & gal["val"]) and not (gal["train"] & gal["test"]) and not (gal["val"] & gal["test"])
    sub = {s: _votes_ds(tiny, split=s, bands=["F160W"]) for s in ("train", "val", "test")}
    assert set(np.concatenate([np.asarray(d.catalog()["band"]) for d in sub.values() if len(d)])) == {"F160W"}
    for s in ("train", "val", "test"):  # a galaxy's split does not depend on data.bands
        assert set(sub[s].groups()) <= gal[s]


def test_votes_dataset_caches_stamps(tiny, monkeypatch):
    a = _votes_ds(tiny)

    def boom(*args, **kwargs):
        raise AssertionError("stamps read again instead of the cache")

    monkeypatch.setattr(clash_dataset, "read_stamp", boom)
    b = _votes_ds(tiny)
    assert torch.equal(a.raw_images(), b.raw_images())


def test_votes_dataset_candels_domain_and_hdu_by_name(tmp_path):
    stamps = tmp_path / "st"
    stamps.mkdir()
    rows = [("GDS_deep2_10000", 0.4, 0.0, 0.0, 0.6, 0.0), ("GDS_wide2_9993", 0.4, 0.6, 0.0, 0.0, 0.0)]
    for r in rows:
        _stamp(stamps / f"{r[0]}.fits", "F160W", extname="SCI")
    labels = _write_labels(tmp_path / "CANDELS_labels.csv", rows)
    cfg = ClashVotesConfig(domain="candels", labels=str(labels), stamps_dir=str(stamps), size=16, hdu="SCI",
                           votes="infer")
    ds = ClashVotesDataset(cfg, split="predict", seed=0, cache_dir=tmp_path / "c")
    cat = ds.catalog()
    assert list(cat["field"]) == ["GDS_deep2", "GDS_wide2"] and list(cat["object"]) == ["10000", "9993"]
    assert set(cat["band"]) == {"F160W"} and np.array_equal(ds.groups(), np.asarray(cat["id"]))
    assert (np.asarray(cat["n_voters"]) == 5).all()  # 2/5, 3/5 (min_voters 3 for CANDELS)
    with pytest.raises(ValidationError, match="F160W"):
        ClashVotesConfig(domain="candels", bands=["F275W"])


def test_read_stamp_resamples_and_reads_header(tiny):
    img, meta = read_stamp(Path(tiny["stamps"]) / "a611_f275w_1.fits", size=32, band="F275W")
    assert img.shape == (32, 32) and img.dtype == np.float32
    assert meta["filter"] == "F275W" and meta["stamp_nx"] == 44 and meta["stamp_ny"] == 50
    assert np.unravel_index(np.argmax(img), img.shape) in {(15, 15), (15, 16), (16, 15), (16, 16)}


# ---------------------------------------------------------------------- clash_votes errors


def test_error_no_stamps_dir(tiny):
    cfg = ClashVotesConfig(labels=tiny["labels"])
    with pytest.raises(DataError, match="needs the FITS stamps: set data.stamps_dir"):
        ClashVotesDataset(cfg, split="train", seed=0, cache_dir=tiny["dir"])


def test_error_stamps_dir_not_a_folder(tiny):
    with pytest.raises(DataError, match="is not a folder"):
        ClashVotesDataset(ClashVotesConfig(labels=tiny["labels"], stamps_dir=str(tiny["dir"] / "nowhere")),
                          split="train", seed=0, cache_dir=tiny["dir"])


def test_error_missing_stamps_named_with_count(tiny):
    for name in ("a611_f814w_1.fits", "a611_f160w_1.fits", "a209_f275w_5.fits", "a209_f814w_5.fits"):
        (Path(tiny["stamps"]) / name).unlink()
    with pytest.raises(DataError, match=r"^4 of 13 stamps of the predict split are missing in .*"
                                        r"\(e\.g\. a611_f814w_1\.fits, a611_f160w_1\.fits, a209_f275w_5\.fits \.\.\.\); "
                                        r"put the FITS stamps there"):
        _votes_ds(tiny)
    ds = _votes_ds(tiny, missing="drop")
    assert len(ds) == 9 and "a611_f814w_1" not in set(ds.catalog()["id"])


def test_error_all_missing_even_with_drop(tiny):
    for f in Path(tiny["stamps"]).glob("*.fits"):
        f.unlink()
    with pytest.raises(DataError, match="none is left with data.missing: drop"):
        _votes_ds(tiny, missing="drop")


def test_error_bad_file_pattern(tiny):
    with pytest.raises(DataError, match=r"file_pattern '\{galaxy\}.fits' is invalid"):
        _votes_ds(tiny, file_pattern="{galaxy}.fits")


def test_custom_file_pattern(tiny):
    for f in Path(tiny["stamps"]).glob("*.fits"):
        c, b, o = f.stem.split("_")
        f.rename(f.with_name(f"{c}-{o}-{b.upper()}.fits"))
    assert len(_votes_ds(tiny, file_pattern="{cluster}-{object}-{BAND}.fits")) == 13


def test_error_filter_mismatch(tiny):
    stamps = Path(tiny["stamps"])
    shutil.copy(stamps / "a611_f814w_1.fits", stamps / "a611_f275w_1.fits")
    with pytest.raises(DataError, match="is a F814W image .* but its label is for F275W"):
        _votes_ds(tiny)
    assert len(_votes_ds(tiny, check_filter=False)) == 13


def test_error_not_fits_and_not_an_image(tiny):
    stamps = Path(tiny["stamps"])
    (stamps / "a611_f275w_1.fits").write_text("not a fits file")
    with pytest.raises(DataError, match="is not a readable FITS file"):
        _votes_ds(tiny)
    fits.PrimaryHDU(np.zeros((2, 3, 30, 30), np.float32)).writeto(stamps / "a611_f275w_1.fits", overwrite=True)
    with pytest.raises(DataError, match="not a 2-D image|no 2-D image HDU"):
        _votes_ds(tiny)


def test_error_bands_leave_nothing(tiny):
    with pytest.raises(DataError, match="no label in .* is in bands"):
        _votes_ds(tiny, bands=["F225W"])
    with pytest.raises(ValidationError, match="not CLASH filters"):
        ClashVotesConfig(bands=["F999W"])


def test_error_default_labels_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROTL_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match="CLASH_labels.csv' not found"):
        ClashVotesDataset(ClashVotesConfig(stamps_dir=str(tmp_path)), split="train", seed=0, cache_dir=tmp_path)


# ---------------------------------------------------------------------- the real labels and the one real stamp


@pytest.mark.shared
def test_real_clash_labels():
    t = read_labels(_shared("CLASH_labels.csv"), "clash")
    assert len(t) == 1600 and len(set(t["cluster"])) == 25 and set(t["band"]) == set(CLASH_BANDS)
    assert len(set(t["galaxy_id"])) == 912  # most galaxies were labelled in one band only
    f = np.stack([np.asarray(t[f"p_{c}"]) for c in CLASSES], axis=1)
    np.testing.assert_allclose(f.sum(1), 1.0, atol=1e-12)
    # argmax counts as in the data README: smooth 787, features 257, irregular 294, PS 69, unc 193 (ties: first)
    assert np.bincount(f.argmax(1), minlength=5).sum() == 1600
    _, n, exact = infer_votes(f, min_voters=5)
    assert exact.mean() > 0.99 and (n >= 5).all()


@pytest.mark.shared
def test_real_candels_labels():
    t = read_labels(_shared("CANDELS_labels.csv"), "candels")
    assert len(t) == 7567 and set(t["band"]) == {"F160W"}
    assert set(t["field"]) == {"GDS_deep2", "GDS_wide2", "GDS_ers2"}
    f = np.stack([np.asarray(t[f"p_{c}"]) for c in CLASSES], axis=1)
    assert np.bincount(f.argmax(1), minlength=5)[1] > 4000  # disks dominate CANDELS


@pytest.mark.shared
def test_real_stamp_through_the_loader(tmp_path):
    stamp = _shared("a611_f475w_860.fits")
    img, meta = read_stamp(stamp, size=64, band="F475W")
    assert img.shape == (64, 64) and np.isfinite(img).all()
    assert meta["filter"] == "F475W" and meta["stamp_nx"] == 48 and meta["exptime"] == 4160.0
    assert meta["pixel_scale"] == pytest.approx(0.065, rel=1e-3) and meta["bunit"] == "ELECTRONS"
    cfg = ClashVotesConfig(stamps_dir=str(stamp.parent), missing="drop", labels=str(_shared("CLASH_labels.csv")))
    ds = ClashVotesDataset(cfg, split="predict", seed=0, cache_dir=tmp_path)
    assert len(ds) == 1 and ds.catalog()["id"][0] == "a611_f475w_860" and ds.catalog()["galaxy_id"][0] == "a611_860"
    assert ds[0]["target"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0] and ds[0]["image"].shape == (1, 64, 64)
    # the header's filter guards against mis-named files
    labels = _write_labels(tmp_path / "labels.csv", [("a611_f606w_860", 1, 0, 0, 0, 0)])
    (tmp_path / "st").mkdir()
    shutil.copy(stamp, tmp_path / "st" / "a611_f606w_860.fits")
    with pytest.raises(DataError, match="is a F475W image .* but its label is for F606W"):
        ClashVotesDataset(ClashVotesConfig(labels=str(labels), stamps_dir=str(tmp_path / "st")), split="predict",
                          seed=0, cache_dir=tmp_path)
