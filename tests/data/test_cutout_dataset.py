"""CatalogCutoutDataset (catalog_cutouts): samples, splits, flags, caching and every bad-input path."""

from __future__ import annotations

import pickle
import shutil

import make_fits
import numpy as np
import pytest
import torch
from astropy.table import Table

from astrotl.datasets import CatalogCutoutDataset
from astrotl.errors import DataError


def make(mosaic, cache_dir, split="predict", **over):
    opts = {"images": mosaic["images"], "catalog": mosaic["catalog"], "hdu": "SCI", "size": 12, **over}
    cfg = CatalogCutoutDataset.Config(**opts)
    return CatalogCutoutDataset(cfg, split=split, seed=0, cache_dir=cache_dir)


def test_samples_and_info(mosaic, cache_dir):
    ds = make(mosaic, cache_dir, label_col="cls")
    assert len(ds) == 32
    s = ds[0]
    assert s["image"].shape == (5, 12, 12) and s["image"].dtype == torch.float32
    assert s["index"] == 0 and s["label"] == 0
    info = ds.info()
    assert info.bands == tuple(make_fits.BANDS) and info.classes == ("1", "2", "3", "4") and info.image_size == 12
    assert torch.isfinite(ds[6]["image"]).all()  # the outside row: NaNs become zeros, no crash


def test_catalog_flags(mosaic, cache_dir):
    ds = make(mosaic, cache_dir, label_col="cls", mag_cols="mag_{band}", extra_columns=["cls"])
    cat = ds.catalog()
    assert len(cat) == len(ds) and list(cat["id"][:3]) == [10, 20, 30]
    assert {"ra", "dec", "class", "label_raw", "mag_F555W", "cls"} <= set(cat.colnames)
    expect = {  # row: (outside, edge, nan, missing_band) for make_fits.source_positions
        0: (False, False, False, False), 3: (False, True, True, False), 4: (False, True, True, False),
        5: (False, True, True, True), 6: (True, True, True, True)}
    for row, (outside, edge, nan, missing) in expect.items():
        got = (cat["flag_outside"][row], cat["flag_edge"][row], cat["flag_nan"][row], cat["flag_missing_band"][row])
        assert tuple(bool(v) for v in got) == (outside, edge, nan, missing), row
    assert cat["nan_fraction"][5] == pytest.approx(1.0) and cat["missing_bands"][5] == ",".join(make_fits.BANDS)
    # flags are cached: a second data set on the same inputs reads them back
    assert list((cache_dir / "catalog_cutouts").glob("flags_*.npz"))


def test_splits_are_disjoint_stratified_and_seeded(mosaic, cache_dir):
    ids = {}
    for split in ("train", "val", "test"):
        ds = make(mosaic, cache_dir, split=split, label_col="cls", split_fractions=(0.5, 0.25, 0.25))
        ids[split] = set(ds.catalog()["id"].tolist())
        assert set(np.bincount(ds.labels(), minlength=4)) <= {1, 2, 3, 4}  # 8 per class -> 4/2/2
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["train"]) + len(ids["val"]) + len(ids["test"]) == 32
    again = make(mosaic, cache_dir, split="val", label_col="cls", split_fractions=(0.5, 0.25, 0.25))
    assert set(again.catalog()["id"].tolist()) == ids["val"]
    other = make(mosaic, cache_dir, split="val", label_col="cls", split_fractions=(0.5, 0.25, 0.25), split_seed=1)
    assert set(other.catalog()["id"].tolist()) != ids["val"]


def test_split_column_and_class_map(mosaic, cache_dir, tmp_path):
    t = Table.read(mosaic["catalog"])
    t["split"] = (["train", "valid", "test"] * 11)[:32]
    t.write(tmp_path / "cat_split.ecsv")
    ds = make(mosaic, cache_dir, split="val", catalog=str(tmp_path / "cat_split.ecsv"), label_col="cls",
              split_col="split", class_map={"1": "compact", "2": "compact", "3": "assoc"},
              classes=["compact", "assoc"])
    expected = int(((t["split"] == "valid") & (t["cls"] != 4)).sum())  # class 4 is not in class_map: dropped
    assert 0 < len(ds) == expected < 11
    assert set(ds.catalog()["class"]) <= {"compact", "assoc"}
    t["split"] = t["split"].astype("U8")
    t["split"][0] = "holdout"
    t.write(tmp_path / "bad_split.ecsv")
    with pytest.raises(DataError, match=r"split column 'split' has values \['holdout'\]; use train, val or test"):
        make(mosaic, cache_dir, catalog=str(tmp_path / "bad_split.ecsv"), split_col="split")


def test_sky_equals_pixel(mosaic, cache_dir):
    pix = make(mosaic, cache_dir)
    sky = make(mosaic, cache_dir, coords="sky")
    for i in (0, 1, 2, 3, 9):
        a, _ = pix.raw_cutout(i)
        b, _ = sky.raw_cutout(i)
        np.testing.assert_array_equal(a, b)
    assert np.allclose(pix.catalog()["x"][:6], sky.catalog()["x"][:6])


def test_one_based_pixel_origin(mosaic, cache_dir, tmp_path):
    cat1 = make_fits.make_catalog(tmp_path / "cat1.csv", pixel_origin=1)
    a = make(mosaic, cache_dir)
    b = make(mosaic, cache_dir, catalog=str(cat1), pixel_origin=1)
    np.testing.assert_array_equal(a.raw_cutout(1)[0], b.raw_cutout(1)[0])
    assert b.catalog()["x"][0] == pytest.approx(30.0)


def test_legus_table_rejects_second_conversion(mosaic, cache_dir, tmp_path):
    tab = make_fits.make_legus_like(tmp_path / "l.tab", 39)
    ds = make(mosaic, cache_dir, catalog=str(tab), format="legus", label_col="class_mode",
              class_map={"1": "1", "2": "2", "3": "3", "4": "4"})
    assert ds.catalog()["x"][0] == pytest.approx(9.0)  # the file's 1-based 10 -> 9
    assert ds.labels().tolist() == [-1, 0, 1, 2, 3, -1]  # predict keeps class 0 (not inspected) as unlabelled
    train = make(mosaic, cache_dir, split="train", catalog=str(tab), format="legus", label_col="class_mode",
                 class_map={"1": "1", "2": "2", "3": "3", "4": "4"}, split_fractions=(1, 0, 0))
    assert len(train) == 4 and (train.labels() >= 0).all()  # training drops the unlabelled rows
    with pytest.raises(DataError, match="already gives 0-based pixels; remove pixel_origin"):
        make(mosaic, cache_dir, catalog=str(tab), pixel_origin=1)


def test_drop_flagged(mosaic, cache_dir):
    assert len(make(mosaic, cache_dir, drop_flagged=["outside"])) == 31
    assert len(make(mosaic, cache_dir, drop_flagged=["edge"])) == 28
    assert len(make(mosaic, cache_dir, drop_flagged=["missing_band"])) == 30
    ds = make(mosaic, cache_dir, drop_flagged=["nan"])
    assert len(ds) == 28 and not ds.catalog()["flag_nan"].any()


def test_npy_cache_matches_streaming(mosaic, cache_dir):
    stream = make(mosaic, cache_dir, label_col="cls", split="train")
    cached = make(mosaic, cache_dir, label_col="cls", split="train", cache="npy")
    assert list((cache_dir / "catalog_cutouts").glob("stack_*.npy"))
    for i in range(len(stream)):
        torch.testing.assert_close(stream[i]["image"], cached[i]["image"])
    idx = list(range(len(stream)))[::-1]
    for a, b in zip(stream.__getitems__(idx), cached.__getitems__(idx)):
        torch.testing.assert_close(a["image"], b["image"])
        assert a["index"] == b["index"] and a["label"] == b["label"]
    assert (stream.catalog()["nan_fraction"] == cached.catalog()["nan_fraction"]).all()
    # the stack holds normalised images: another normalisation is another cache file, not a stale one
    other = {"stretch": "linear", "clip": None}
    stream2 = make(mosaic, cache_dir, label_col="cls", split="train", normalize=other)
    cached2 = make(mosaic, cache_dir, label_col="cls", split="train", cache="npy", normalize=other)
    assert len(list((cache_dir / "catalog_cutouts").glob("stack_*.npy"))) == 2
    assert not torch.allclose(cached[0]["image"], cached2[0]["image"])
    for i in range(len(stream2)):
        torch.testing.assert_close(stream2[i]["image"], cached2[i]["image"])


def test_init_reads_no_pixels_without_cache(mosaic, cache_dir, monkeypatch):
    from astrotl.fitsio import MosaicStack

    calls = []
    original = MosaicStack.cutout
    monkeypatch.setattr(MosaicStack, "cutout", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    ds = make(mosaic, cache_dir, normalize={"scale": "image"})
    assert calls == []  # nothing cut until asked
    ds[0]
    assert calls == [1]


def test_pickles_for_dataloader_workers(mosaic, cache_dir):
    ds = make(mosaic, cache_dir, label_col="cls")
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[2]["image"], ds[2]["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 5, 12, 12)


def test_normalisation_shared_across_splits(mosaic, cache_dir):
    a = make(mosaic, cache_dir, split="train", label_col="cls")
    b = make(mosaic, cache_dir, split="test", label_col="cls")
    np.testing.assert_array_equal(a._band_scale, b._band_scale)


# -- bad input: one DataError before any work ------------------------------------------------------


def test_missing_band_file(mosaic, cache_dir):
    images = dict(mosaic["images"], F814W=str(mosaic["dir"] / "gone.fits"))
    with pytest.raises(DataError, match=r"band F814W: FITS file .*gone.fits' does not exist"):
        make(mosaic, cache_dir, images=images)


def test_corrupt_and_truncated_band(mosaic, cache_dir, tmp_path):
    images = dict(mosaic["images"], F336W=str(make_fits.garbage(tmp_path / "bad.fits")))
    with pytest.raises(DataError, match="band F336W: .* is not a readable FITS file"):
        make(mosaic, cache_dir, images=images)
    images = dict(mosaic["images"], F336W=str(make_fits.truncate(mosaic["images"]["F336W"], tmp_path / "t.fits")))
    with pytest.raises(DataError, match="band F336W: FITS file .* is truncated"):
        make(mosaic, cache_dir, images=images)


def test_no_wcs_with_sky_coords(cache_dir, tmp_path):
    images = {b: str(p) for b, p in make_fits.make_mosaic(tmp_path, bands=("V",), with_wcs=False).items()}
    cat = make_fits.make_catalog(tmp_path / "c.ecsv")
    cfg = CatalogCutoutDataset.Config(images=images, catalog=str(cat), coords="sky", size=8)
    with pytest.raises(DataError, match="no celestial WCS, needed for coords: sky"):
        CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=cache_dir)


def test_all_positions_outside(mosaic, cache_dir, tmp_path):
    t = Table.read(mosaic["catalog"])
    t["x"] += 10_000
    t.write(tmp_path / "far.ecsv")
    with pytest.raises(DataError, match="none of the 32 positions .* falls on the images"):
        make(mosaic, cache_dir, catalog=str(tmp_path / "far.ecsv"))


def test_duplicate_ids(mosaic, cache_dir, tmp_path):
    t = Table.read(mosaic["catalog"])
    t["id"][5] = t["id"][4]
    t.write(tmp_path / "dup.ecsv")
    with pytest.raises(DataError, match=r"1 duplicated id\(s\) in column 'id' \('50'\)"):
        make(mosaic, cache_dir, catalog=str(tmp_path / "dup.ecsv"))


def test_band_list_mismatch_with_catalogue_magnitudes(mosaic, cache_dir):
    images = dict(mosaic["images"])
    images["F435W"] = images.pop("F438W")  # NGC 628's ACS band name against a catalogue with F438W
    with pytest.raises(DataError, match=r"image band\(s\) \['F435W'\] have no magnitude column .* bands \['F275W'"):
        make(mosaic, cache_dir, images=images, mag_cols="mag_{band}")


def test_missing_columns(mosaic, cache_dir):
    with pytest.raises(DataError, match=r"no column 'xc' \(data.x_col/y_col\)"):
        make(mosaic, cache_dir, x_col="xc")
    with pytest.raises(DataError, match=r"no label column 'klass'"):
        make(mosaic, cache_dir, label_col="klass")
    with pytest.raises(DataError, match=r"no column 'obj' \(data.id_col\)"):
        make(mosaic, cache_dir, id_col="obj")


def test_class_map_outside_classes(mosaic, cache_dir):
    with pytest.raises(DataError, match=r"class_map maps to \['9'\], which are not in data.classes"):
        make(mosaic, cache_dir, label_col="cls", class_map={"1": "9"}, classes=["1", "2"])


def test_config_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mag_cols must contain"):
        CatalogCutoutDataset.Config(images={"V": "v.fits"}, catalog="c.ecsv", mag_cols="mag")
    with pytest.raises(ValidationError, match="give at least one band"):
        CatalogCutoutDataset.Config(images={}, catalog="c.ecsv")
    with pytest.raises(ValidationError, match="extra"):
        CatalogCutoutDataset.Config(images={"V": "v.fits"}, catalog="c.ecsv", sise=12)


def test_error_leaves_no_files(mosaic, cache_dir):
    images = dict(mosaic["images"], F814W="/nonexistent/f814w.fits")
    with pytest.raises(DataError):
        make(mosaic, cache_dir, images=images, cache="npy")
    assert not cache_dir.exists() or not any(cache_dir.rglob("*"))
    shutil.rmtree(cache_dir, ignore_errors=True)


# -- issue 8 group 6: silently accepted nonsense -----------------------------------------------------


@pytest.mark.parametrize("images", ["same_name_other_case", "same_file_twice"])
def test_a_band_given_twice_is_an_error(mosaic, cache_dir, images):
    from pydantic import ValidationError

    imgs = dict(mosaic["images"])
    if images == "same_name_other_case":
        imgs["f555w"] = imgs["F814W"]
        match = r"images lists band f555w twice \(F555W and f555w are the same FITS band name\)"
    else:
        imgs["F435W"] = imgs["F438W"]
        match = r"bands F438W and F435W both read HDU SCI of .*a band given twice"
    with pytest.raises(ValidationError, match=match):
        make(mosaic, cache_dir, images=imgs)
    with pytest.raises(ValidationError, match="legus_bands lists band B twice"):
        make(mosaic, cache_dir, legus_bands=["U", "B", "B", "V", "I"])


def test_same_file_for_two_bands_with_their_own_hdus_is_fine(mosaic, cache_dir):
    imgs = {"F555W": mosaic["images"]["F555W"], "F555W_again": mosaic["images"]["F555W"]}
    with pytest.raises(Exception, match="a band given twice"):
        make(mosaic, cache_dir, images=imgs)
    CatalogCutoutDataset.Config(images=imgs, catalog=mosaic["catalog"], hdu={"F555W": "SCI", "F555W_again": 1})


def test_labels_not_in_classes_are_reported_not_silently_dropped(mosaic, cache_dir, caplog):
    """Issue 8 group 6: rows whose label is not in data.classes are counted, logged and recorded."""
    import logging

    with caplog.at_level(logging.WARNING, logger="astrotl"):
        ds = make(mosaic, cache_dir, split="train", label_col="cls", classes=["1", "2", "3"],
                  split_fractions=(1.0, 0.0, 0.0))
    n4 = int((Table.read(mosaic["catalog"])["cls"] == 4).sum())
    assert n4 > 0 and len(ds) == 32 - n4
    warned = [r.getMessage() for r in caplog.records if "not in data.classes" in r.getMessage()]
    assert len(warned) == 1 and f"{n4} of 32 rows" in warned[0] and "'4': " in warned[0], warned
    rep = ds.catalog().meta["label_report"]
    assert rep["n_label_not_a_class"] == n4 and rep["labels_not_a_class"] == {"4": n4} and rep["rule"] == "classes"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="astrotl"):  # once per process, not once per split
        make(mosaic, cache_dir, split="val", label_col="cls", classes=["1", "2", "3"], split_fractions=(1.0, 0.0, 0.0))
    assert not [r for r in caplog.records if "not in data.classes" in r.getMessage()]


def test_labels_a_class_map_leaves_out_are_counted(mosaic, cache_dir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="astrotl"):
        ds = make(mosaic, cache_dir, split="train", label_col="cls", class_map={"1": "a", "2": "b"},
                  split_fractions=(1.0, 0.0, 0.0))
    rep = ds.catalog().meta["label_report"]
    assert rep["rule"] == "class_map" and rep["n_label_not_a_class"] == 16 and set(rep["labels_not_a_class"]) == {"3", "4"}
    assert any("data.class_map does not list" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
