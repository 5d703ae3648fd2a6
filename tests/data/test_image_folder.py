"""ImageFolderDataset (image_folder): PNG/JPEG/FITS + labels table, crop/resize, cache, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from data_helpers import require_shared
from PIL import Image

from astrotl.datasets import ImageFolderDataset
from astrotl.errors import DataError


def make_folder(root, n=24, suffix=".png", size=40, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        arr[size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] = 255  # a bright centre
        name = f"img/g{i:03d}{suffix}"
        Image.fromarray(arr).save(root / name)
        rows.append((i + 100, name, classes[i % len(classes)]))
    Table(rows=rows, names=("objid", "file", "label")).write(root / "labels.csv", format="ascii.csv")
    return root


def make(root, cache_dir, split="train", **over):
    opts = {"root": str(root), "file_col": "file", **over}
    return ImageFolderDataset(ImageFolderDataset.Config(**opts), split=split, seed=0, cache_dir=cache_dir)


def test_png_crop_resize(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f")
    ds = make(root, cache_dir, crop=20, resize=10)
    assert len(ds) == 18  # 70 % of 24 (8 per class -> 6/1/1 after largest-remainder rounding per class)
    s = ds[0]
    assert s["image"].shape == (3, 10, 10) and s["image"].dtype == torch.float32 and s["label"] in (0, 1, 2)
    info = ds.info()
    assert info.bands == ("R", "G", "B") and info.classes == ("a", "b", "c") and info.image_size == 10
    raw = ds.raw_images()
    assert raw.dtype == np.uint8 and raw.shape == (18, 3, 10, 10)
    # the split's pixels are standardised with the training split's mean/std
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1) < 0.2


def test_centre_crop_is_centred(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=3)
    ds = make(root, cache_dir, split="predict", crop=4, pixel_norm="unit")
    assert torch.allclose(ds[0]["image"], torch.ones(3, 4, 4))  # the 4x4 bright centre


def test_cache_is_reused(tmp_path, cache_dir, monkeypatch):
    from astrotl.datasets import image_folder

    root = make_folder(tmp_path / "f", suffix=".jpg")
    first = make(root, cache_dir, resize=16)
    assert len(list((cache_dir / "image_folder").glob("stack_*.npy"))) == 1
    monkeypatch.setattr(image_folder._Loader, "__call__", lambda self, p: pytest.fail("decoded again"))
    for split in ("train", "val", "test", "predict"):
        again = make(root, cache_dir, split=split, resize=16)
        assert again.raw_images().shape[1:] == (3, 16, 16)
    torch.testing.assert_close(first[0]["image"], make(root, cache_dir, resize=16)[0]["image"])


def test_splits(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=30)
    ids = {s: set(make(root, cache_dir, split=s, id_col="objid").catalog()["id"].tolist()) for s in ("train", "val", "test")}
    assert sum(len(v) for v in ids.values()) == 30 and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    t = Table.read(root / "labels.csv")
    t["split"] = ["train", "val", "test"] * 10
    t.write(root / "labels_split.csv", format="ascii.csv")
    ds = make(root, cache_dir, split="test", labels="labels_split.csv", split_col="split")
    assert len(ds) == 10 and set(ds.catalog()["file"]) == {f"img/g{i:03d}.png" for i in range(2, 30, 3)}


def test_grayscale_and_band_names(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=6)
    ds = make(root, cache_dir, split="predict", color="grayscale", bands=["r"])
    assert ds[0]["image"].shape == (1, 40, 40) and ds.info().bands == ("r",)
    with pytest.raises(DataError, match=r"data.bands lists 2 bands .* have 3 channel\(s\)"):
        make(root, cache_dir, bands=["g", "r"])


def test_fits_images_and_mef_bands(tmp_path, cache_dir):
    root = tmp_path / "fits"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(rng.normal(size=(20, 20)).astype(np.float32), name=b)
                                      for b in ("F814W", "F555W")]
        fits.HDUList(hdus).writeto(root / f"c{i}.fits")
        fits.PrimaryHDU(rng.normal(size=(20, 20)).astype(np.float32)).writeto(root / f"s{i}.fits")
        rows.append((f"c{i}.fits", f"s{i}.fits", str(i % 3)))
    Table(rows=rows, names=("file", "single", "label")).write(root / "labels.csv", format="ascii.csv")
    ds = make(root, cache_dir, split="predict", bands=["F555W", "F814W"], crop=16, resize=8)
    assert ds[0]["image"].shape == (2, 8, 8) and ds.info().bands == ("F555W", "F814W")
    assert ds.raw_images().dtype == np.float32
    single = make(root, cache_dir, split="predict", file_col="single")
    assert single[0]["image"].shape == (1, 20, 20)
    with pytest.raises(DataError, match="has no HDU named 'F336W'"):
        make(root, cache_dir, bands=["F336W"])


# -- bad input -------------------------------------------------------------------------------------


def test_missing_root_and_files(tmp_path, cache_dir):
    with pytest.raises(DataError, match="image folder .* does not exist"):
        make(tmp_path / "nope", cache_dir)
    root = make_folder(tmp_path / "f", n=5)
    (root / "img" / "g003.png").unlink()
    with pytest.raises(DataError, match=r"1 of 5 images listed in labels table .* are missing \(first: .*g003.png'\)"):
        make(root, cache_dir)


def test_unreadable_image(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=5)
    (root / "img" / "g002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*g002.png"):
        make(root, cache_dir)
    assert not list((cache_dir / "image_folder").glob("stack_*.npy"))  # no half-written cache


def test_sizes_differ_and_crop_too_big(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=4)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "img" / "g001.png")
    with pytest.raises(DataError, match="set data.crop and/or data.resize so all images match"):
        make(root, cache_dir)
    with pytest.raises(DataError, match=r"smaller than data.crop=35"):
        make(root, cache_dir, crop=35)
    assert len(make(root, cache_dir, split="predict", resize=16)) == 4


def test_duplicate_ids_and_bad_columns(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=4)
    t = Table.read(root / "labels.csv")
    t["objid"][1] = t["objid"][0]
    t.write(root / "dup.csv", format="ascii.csv")
    with pytest.raises(DataError, match=r"duplicated id\(s\) in column 'objid' \('100'\)"):
        make(root, cache_dir, labels="dup.csv", id_col="objid")
    with pytest.raises(DataError, match=r"no column 'files' \(data.file_col\) \(did you mean 'file'\?\)"):
        make(root, cache_dir, file_col="files")
    with pytest.raises(DataError, match="no label column 'klass'"):
        make(root, cache_dir, label_col="klass")


def test_config_needs_file_or_id():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set file_col"):
        ImageFolderDataset.Config(root=".")
    with pytest.raises(ValidationError, match="must contain"):
        ImageFolderDataset.Config(root=".", id_col="id", file_pattern="img.png")


# -- the real Galaxy Zoo 1 images (../shared/data/gz1_dev) ------------------------------------------

GZ1_COUNTS = [3058, 279, 275, 669, 43, 76]  # README.txt


@pytest.mark.shared
def test_gz1_labels_and_split(tmp_path):
    root = require_shared("gz1_dev")
    cfg = dict(root=str(root), labels="labels.csv", id_col="OBJID", file_pattern="images/{id}.jpeg", label_col="CLASS",
               classes=[str(i) for i in range(6)], crop=128, resize=32, max_images=600)
    ds = ImageFolderDataset(ImageFolderDataset.Config(**cfg), split="predict", seed=0, cache_dir=tmp_path)
    assert len(ds) == 600 and ds[0]["image"].shape == (3, 32, 32)
    assert str(ds.catalog()["id"][0]) == "588848901537202306"
    # the full table: class counts as in the README, and every split keeps the class proportions
    from astrotl.catalogs import read_catalog
    from astrotl.datasets.common import assign_labels, split_assignment

    table = read_catalog(root / "labels.csv", "csv")
    conf = ImageFolderDataset.Config(**{**cfg, "max_images": None})
    labels, classes, _ = assign_labels(table, conf, where="gz1")
    assert len(table) == 4400 and np.bincount(labels).tolist() == GZ1_COUNTS
    split = split_assignment(len(table), labels, conf, table, where="gz1")
    for s, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = np.bincount(labels[split == s], minlength=6)
        assert np.all(np.abs(counts - frac * np.array(GZ1_COUNTS)) <= 1), (s, counts)


@pytest.mark.shared
def test_gz1_chirality_stage_uses_the_six_class_split(tmp_path, monkeypatch):
    """The shipped GZ1 file's first stage trains on the spirals of the six-class training split: none of its rows
    is a validation or test galaxy of the final stage."""
    from astrotl.config import load_config
    from astrotl.plugins import load_registries
    from testutils import REPO

    monkeypatch.setenv("ASTROTL_SHARED_DATA", str(require_shared("gz1_dev").parent))
    cfg = load_config(REPO / "tasks" / "gz1_morphology.yaml", load_registries(), ["data.resize=8", "data.max_images=800"])
    assert [st.run.name for st in cfg.stages] == ["chirality", "morphology"]
    ids = {}
    for st in cfg.stages:
        cls, conf = st.component("data")
        ids[st.run.name] = {s: cls(conf, split=s, seed=0, cache_dir=tmp_path) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        full = ids["morphology"][s].catalog()
        spirals = full["id"][np.isin(np.asarray(full["class"]), ["1", "2"])].tolist()
        assert ids["chirality"][s].catalog()["id"].tolist() == spirals and spirals
    assert ids["chirality"]["train"].info().classes == ("1", "2")


def test_a_band_given_twice_is_an_error(tmp_path, cache_dir):
    """Issue 8 group 6: `bands: [g, g]` used to read one HDU twice without a word."""
    from pydantic import ValidationError

    root = make_folder(tmp_path / "f")
    for bands in (["R", "G", "R"], ["F555W", "f555w", "B"]):
        with pytest.raises(ValidationError, match="bands lists band .* twice"):
            make(root, cache_dir, bands=bands)


def test_labels_not_in_classes_are_reported(tmp_path, cache_dir, caplog):
    import logging

    root = make_folder(tmp_path / "f")
    with caplog.at_level(logging.WARNING, logger="astrotl"):
        ds = make(root, cache_dir, classes=["a", "b"])
    assert any("8 of 24 rows have a 'label' label that is not in data.classes ['a', 'b'] ('c': 8)" in r.getMessage()
               for r in caplog.records)
    assert ds.catalog().meta["label_report"]["labels_not_a_class"] == {"c": 8}


def test_class_subset_keeps_the_split_of_all_classes(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f", n=60)
    desc = ["alpha", "beta", "gamma"]
    full = {s: make(root, cache_dir, split=s, id_col="objid", classes=["a", "b", "c"], class_descriptions=desc)
            for s in ("train", "val", "test")}
    sub = {s: make(root, cache_dir, split=s, id_col="objid", classes=["a", "b", "c"], class_descriptions=desc,
                   class_subset=["c", "a"]) for s in ("train", "val", "test")}
    for s in full:
        cat = full[s].catalog()
        keep = np.isin(np.asarray(cat["class"]), ["a", "c"])
        # exactly the subset's rows of the same split: a stage on classes a, c never trains on b's split's test rows
        assert sub[s].catalog()["id"].tolist() == cat["id"][keep].tolist()
        assert sub[s].info().classes == ("a", "c") and sub[s].info().class_descriptions == ("alpha", "gamma")
        assert sub[s].labels().tolist() == [0 if c == "a" else 1 for c in cat["class"][keep]]
    # listing the classes alone draws a different split (what class_subset avoids)
    alone = {s: set(make(root, cache_dir, split=s, id_col="objid", classes=["a", "c"]).catalog()["id"].tolist())
             for s in ("train", "test")}
    assert alone["train"] & set(full["test"].catalog()["id"].tolist())


def test_class_subset_errors(tmp_path, cache_dir):
    root = make_folder(tmp_path / "f")
    with pytest.raises(ValueError, match=r"class_subset lists \['z'\], which are not among classes \['a', 'b', 'c'\]"):
        ImageFolderDataset.Config(root=str(root), file_col="file", classes=["a", "b", "c"], class_subset=["a", "z"])
    with pytest.raises(ValueError, match="class_subset must list one or more distinct classes"):
        ImageFolderDataset.Config(root=str(root), file_col="file", class_subset=["a", "a"])
    with pytest.raises(DataError, match=r"class_subset lists \['z'\], which are not among the classes \['a', 'b', "
                                        r"'c'\]; use class codes from that list"):
        make(root, cache_dir, class_subset=["z"])  # classes from the labels seen: checked when the data are read
