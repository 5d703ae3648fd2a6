"""Tests of the clump detection data sets: clumps_sim, clumpscout (tiny images written here) and gzh_s82."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from testutils import shared_data_dir

import astrotl_clumps.s82 as s82
from astrotl.errors import AstrotlWarning, DataError
from astrotl_clumps.dataset import ClumpScoutConfig, ClumpScoutDataset, ClumpsSimConfig, ClumpsSimDataset
from astrotl_clumps.s82 import (ALPHA, S82ClumpsConfig, S82ClumpsDataset, calibrate_s82, clump_pixels,
                                orientation_checks, read_s82)

TINY = dict(n_train=24, n_val=8, n_test=8, size=48)


def _shared(*parts: str):
    root = shared_data_dir()
    if root is None or not root.joinpath(*parts).exists():
        pytest.skip("shared data not found (set ASTROTL_SHARED_DATA or put it at ../shared/data)")
    return root.joinpath(*parts)


# --------------------------------------------------------------------------------------
# clumps_sim


@pytest.fixture(scope="module")
def sim_ds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return ClumpsSimDataset(ClumpsSimConfig(**TINY), split="train", seed=0, cache_dir=cache), cache


def test_sim_samples(sim_ds):
    ds, _ = sim_ds
    assert len(ds) == 24
    n_boxes = []
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"image", "boxes", "labels", "index"} and s["index"] == i
        assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
        assert s["boxes"].dtype == torch.float32 and s["boxes"].ndim == 2 and s["boxes"].shape[1] == 4
        assert s["labels"].dtype == torch.int64 and len(s["labels"]) == len(s["boxes"])
        assert set(s["labels"].tolist()) <= {0, 1}
        n_boxes.append(len(s["boxes"]))
    assert 0 in n_boxes  # an empty target has shape [0, 4]
    assert tuple(ds[n_boxes.index(0)]["boxes"].shape) == (0, 4)
    np.testing.assert_array_equal(n_boxes, np.asarray(ds.catalog()["n_clumps"]))
    batch = ds.collate_fn([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 48, 48) and isinstance(batch["boxes"], list) and len(batch["boxes"]) == 3
    assert torch.isfinite(ds[0]["image"]).all() and ds[0]["image"].abs().max() <= 10


def test_sim_info_catalog_truth(sim_ds):
    ds, _ = sim_ds
    info = ds.info()
    assert info.bands == ("g", "r", "i") and info.classes == ("clump", "odd_clump") and info.image_size == 48
    cat = ds.catalog()
    assert len(cat) == 24 and {"id", "ra", "dec", "redshift", "n_clumps", "disk_scale_px"} <= set(cat.colnames)
    assert len(ds.clumps()) == int(np.sum(cat["n_clumps"]))
    assert ds.masks().shape == (24, 48, 48)
    x, y, a, b, th = ds.host_ellipse(0)
    assert a >= b > 0
    w = ds.wcs(0)
    ra, dec = w.pixel_to_world_values(cat["x"][0], cat["y"][0])
    assert abs(ra - cat["ra"][0]) < 1e-9 and abs(dec - cat["dec"][0]) < 1e-9
    assert ds.raw_images().shape == (24, 3, 48, 48)
    assert "star" in set(ds.distractors()["kind"]) or len(ds.distractors()) >= 0


def test_sim_splits_differ_and_cache_hit(sim_ds, monkeypatch):
    ds, cache = sim_ds
    val = ClumpsSimDataset(ClumpsSimConfig(**TINY), split="val", seed=0, cache_dir=cache)
    assert len(val) == 8 and not torch.equal(val[0]["image"], ds[0]["image"])

    import astrotl_clumps.simulate as sim

    monkeypatch.setattr(sim, "simulate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("cache miss")))
    t0 = time.perf_counter()
    again = ClumpsSimDataset(ClumpsSimConfig(**TINY), split="train", seed=123, cache_dir=cache)
    assert time.perf_counter() - t0 < 5
    assert torch.equal(again[3]["image"], ds[3]["image"])  # the run seed does not change the data


def test_sim_registered():
    from astrotl.plugins import load_registries

    reg = load_registries()
    for name in ("clumps_sim", "clumpscout", "gzh_s82"):
        assert reg.datasets.get(name) is not None


@pytest.mark.parametrize("kwargs, match", [
    (dict(z_range=(0.2, 0.1)), "z_range"),
    (dict(size=8), "size"),
    (dict(odd_fraction=2.0), "odd_fraction"),
    (dict(colour=1), "colour"),
])
def test_sim_config_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        ClumpsSimConfig(**kwargs)


# --------------------------------------------------------------------------------------
# clumpscout

CSV_HEADER = "image_id,local_ids,filename,label,label_text,x1,x2,y1,y2\n"


def _png(path, w=40, h=30, rgb=(1.0, 0.5, 0.0)):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = (int(255 * v) for v in rgb)
    Image.fromarray(arr).save(path)


@pytest.fixture
def scout(tmp_path):
    """Four tiny images (40 x 30) and a labels file with normal, odd, edge, out-of-frame and no boxes."""
    img = tmp_path / "images"
    img.mkdir()
    for lid in ("101", "102", "103", "104"):
        _png(img / f"{lid}.png")
    rows = [
        "1,101,x,1,clumpy,10.5,20.5,5.5,15.5",   # plain box
        "1,101,x,2,\"clumpy, odd\",30,45,20,28",  # sticks out on the right: clipped
        "2,102,x,1,clumpy,-10,-2,3,8",            # wholly outside: dropped
        "2,102,x,2,\"clumpy, odd\",2,6,2,6",
        "3,103,x,1,clumpy,15,25,10,20",
        "4,104,x,,,,,,",                          # an image without clumps (the reference's NaN row)
    ]
    (tmp_path / "train.csv").write_text(CSV_HEADER + "\n".join(rows) + "\n")
    (tmp_path / "valid.csv").write_text(CSV_HEADER + rows[-2] + "\n")
    return tmp_path


def _scout(root, split="train", **kw):
    cfg = ClumpScoutConfig(train_labels=str(root / "train.csv"), val_labels=str(root / "valid.csv"),
                           images_dir=str(root / "images"), **kw)
    return ClumpScoutDataset(cfg, split=split, seed=0, cache_dir=root / "cache")


def test_clumpscout_samples(scout):
    ds = _scout(scout)
    assert len(ds) == 4 and ds.info().classes == ("clump", "odd_clump")
    s = ds[0]
    assert s["image"].shape == (3, 30, 40) and s["image"].dtype == torch.float32
    # channels reversed to (g, r, i): the PNG's (R, G, B) = (1, 0.5, 0) becomes (0, 0.5, 1)
    np.testing.assert_allclose(s["image"][:, 0, 0].numpy(), [0.0, 127 / 255, 1.0], atol=1e-6)
    np.testing.assert_allclose(s["boxes"][0].numpy(), [10.0, 5.0, 20.0, 15.0])  # PNG corners -> pixel centres
    np.testing.assert_allclose(s["boxes"][1].numpy(), [29.5, 19.5, 39.0, 27.5])  # clipped to [0, W-1]
    assert s["labels"].tolist() == [0, 1]
    s1 = ds[1]
    assert s1["labels"].tolist() == [1] and s1["boxes"].shape == (1, 4)  # the out-of-frame box is gone
    cat = ds.catalog()
    assert list(cat["local_ids"]) == ["101", "102", "103", "104"] and list(cat["n_boxes"]) == [2, 2, 1, 0]
    assert list(cat["n_odd"]) == [1, 1, 0, 0]
    assert tuple(ds[3]["boxes"].shape) == (0, 4) and ds[3]["labels"].dtype == torch.int64
    batch = ds.collate_fn([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 30, 40)
    val = _scout(scout, split="val")
    assert len(val) == 1 and len(_scout(scout, split="test")) == 1  # test defaults to the val labels


def test_clumpscout_odd_modes_and_crop(scout):
    merged = _scout(scout, odd="merge")
    assert merged.info().classes == ("clump",) and merged[0]["labels"].tolist() == [0, 0]
    dropped = _scout(scout, odd="drop")
    assert dropped[0]["labels"].tolist() == [0] and len(dropped) == 4
    assert tuple(dropped[1]["boxes"].shape) == (0, 4)  # image 102 is left with its out-of-frame box only
    cropped = _scout(scout, crop=20)
    s = cropped[0]
    assert s["image"].shape == (3, 20, 20)
    # offsets (10, 5): the first box moves by them; the second box's centre (34.25, 23.5) is outside
    np.testing.assert_allclose(s["boxes"].numpy(), [[0.0, 0.0, 10.0, 10.0]])
    cut = _scout(scout, cutout=(5, 5, 35, 25))  # the reference loader's way: boxes already in the cut frame
    with pytest.warns(AstrotlWarning, match="lie outside its 30 x 20 frame"):
        s = cut[0]
    assert s["image"].shape == (3, 20, 30)
    np.testing.assert_allclose(s["boxes"][0].numpy(), [10.0, 5.0, 20.0, 15.0])


def test_clumpscout_warns_when_boxes_miss_the_frame(scout):
    (scout / "far.csv").write_text(CSV_HEADER + "1,101,x,1,clumpy,100,110,100,110\n1,101,x,1,clumpy,1,9,1,9\n")
    ds = ClumpScoutDataset(ClumpScoutConfig(train_labels=str(scout / "far.csv"), images_dir=str(scout / "images")),
                           split="train", seed=0, cache_dir=scout)
    with pytest.warns(AstrotlWarning, match="50% of the boxes of 101.png lie outside its 40 x 30 frame"):
        s = ds[0]
    assert len(s["boxes"]) == 1


def test_clumpscout_missing_images(scout):
    (scout / "images" / "102.png").unlink()
    with pytest.raises(DataError, match=r"1 of 4 images listed in train.csv are missing from .*102.png"):
        _scout(scout)


def test_clumpscout_errors(scout, tmp_path):
    with pytest.raises(DataError, match="no labels file for the train split"):
        ClumpScoutDataset(ClumpScoutConfig(images_dir=str(scout)), split="train", seed=0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ClumpScoutDataset(ClumpScoutConfig(train_labels=str(scout / "nope.csv"), images_dir=str(scout)),
                          split="train", seed=0, cache_dir=tmp_path)
    (scout / "bad.csv").write_text("local_ids,label\n101,1\n")
    with pytest.raises(DataError, match="has no column x1, x2, y1, y2"):
        ClumpScoutDataset(ClumpScoutConfig(train_labels=str(scout / "bad.csv"), images_dir=str(scout)),
                          split="train", seed=0, cache_dir=tmp_path)
    (scout / "badlab.csv").write_text(CSV_HEADER + "1,101,x,7,?,1,2,1,2\n")
    with pytest.raises(DataError, match=r"label values \[7\]"):
        ClumpScoutDataset(ClumpScoutConfig(train_labels=str(scout / "badlab.csv"), images_dir=str(scout / "images")),
                          split="train", seed=0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="image_pattern"):
        _scout(scout, image_pattern="{nonexistent}.png")
    (scout / "images" / "101.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        _scout(scout)[0]
    with pytest.raises(ValidationError, match="odd"):
        ClumpScoutConfig(images_dir="x", odd="sometimes")


@pytest.mark.shared
def test_clumpscout_real_labels_without_images(tmp_path):
    csv = _shared("clumpscout_boxes_labels_only", "clumpscout_boxes_valid.csv")
    cfg = ClumpScoutConfig(val_labels=str(csv), images_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"5987 of 5987 images listed in clumpscout_boxes_valid.csv are missing"):
        ClumpScoutDataset(cfg, split="val", seed=0, cache_dir=tmp_path)
    # with (tiny stand-in) images for the first three ids the format reads through
    from astropy.table import Table

    t = Table.read(csv, format="ascii.csv")[:7]
    ids = list(dict.fromkeys(str(v) for v in t["local_ids"]))
    t.write(tmp_path / "head.csv", format="ascii.csv")
    for lid in ids:
        _png(tmp_path / f"{lid}.png", w=400, h=400)
    ds = ClumpScoutDataset(ClumpScoutConfig(val_labels=str(tmp_path / "head.csv"), images_dir=str(tmp_path),
                                            cutout=(50, 50, 350, 350)), split="val", seed=0, cache_dir=tmp_path)
    assert len(ds) == len(ids)
    assert ds[0]["image"].shape == (3, 300, 300)
    assert sum(len(ds[i]["boxes"]) for i in range(len(ds))) == len(t)


# --------------------------------------------------------------------------------------
# GZH S82: synthetic folder (no shared data needed) and the real one


def _blob(img, x, y, sigma, amp, rgb):
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    g = amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    for k in range(3):
        img[..., k] += g * rgb[k]


def _fake_s82(root, scale=0.2, n_gal=2):
    """JPEG-like 424 px images: a disk plus bright blue clumps at known sky offsets and a known scale."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [",".join(s82._CSV_COLUMNS)]
    for gi in range(n_gal):
        gid = 8647474690000000000 + gi
        img = rng.normal(10, 3, size=(424, 424, 3))
        yy, xx = np.mgrid[:424, :424]
        sma_px, smb_px = 30.0, 18.0
        disk = 120 * np.exp(-0.5 * (((xx - 211.5) / sma_px) ** 2 + ((yy - 211.5) / smb_px) ** 2))
        img += disk[..., None] * np.array([0.9, 0.8, 0.9])
        e = rng.uniform(-8, 8, 6)
        n = rng.uniform(-4, 4, 6)
        x, y = clump_pixels(e, n, scale, (424, 424))
        for xi, yi in zip(x, y):
            _blob(img, xi, yi, 2.0, 80, (0.3, 0.5, 1.0))
        name = f"images/objID{gid:020d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name, quality=95)
        # gal_sma chosen so that the prior scale (ALPHA * gal_sma / sma_jpeg) is 20 % off
        for j in range(6):
            lines.append(",".join(str(v) for v in [
                name, gid, 10.0, 0.0, 0.05, 4.0, 1.2 * scale * sma_px / ALPHA, 3.0, 0.0, 1.3, j + 1, 10.0, 0.0,
                e[j], n[j], float(np.hypot(e[j], n[j])), 1, 21.0, 20.0]))
    (root / "clumps.csv").write_text("\n".join(lines) + "\n")
    return root


def test_s82_calibration_recovers_a_known_scale(tmp_path):
    root = _fake_s82(tmp_path / "s82", scale=0.2)
    gal, cl = read_s82(root)
    assert len(gal) == 2 and len(cl) == 12 and list(gal["n_clumps"]) == [6, 6]
    g, c = calibrate_s82(gal, cl, n_null=12)
    assert g["refined"].all()
    np.testing.assert_allclose(g["scale"], 0.2, rtol=0.05)
    assert (np.abs(g["scale_prior"] / 0.2 - 1) > 0.1).all()  # the prior alone was off
    x, y = clump_pixels(cl["dx_east_arcsec"], cl["dy_north_arcsec"], 0.2, (424, 424))
    assert np.max(np.hypot(c["x"] - x, c["y"] - y)) < 2.0
    assert (c["pos_err_px"] > 0).all()
    # north up, east left: a clump east of the centre is left of it, north is up (smaller row)
    xe, yn = clump_pixels([1.0], [1.0], 0.2, (424, 424))
    assert xe[0] < 211.5 and yn[0] < 211.5
    # the clump patterns (long east-west) line up with the disks (long along x) only without a 90 deg turn
    checks = {r["mapping"]: r for r in orientation_checks(g, c)}
    assert checks["north up, east left"]["align_n"] == 2
    assert checks["north up, east left"]["align_median_deg"] < 30
    assert checks["east down, north left"]["align_median_deg"] > 60


def test_s82_dataset_on_a_synthetic_folder(tmp_path, monkeypatch):
    root = _fake_s82(tmp_path / "s82", scale=0.2)
    ds = S82ClumpsDataset(S82ClumpsConfig(root=str(root)), split="test", seed=0, cache_dir=tmp_path / "cache")
    assert len(ds) == 2 and ds.info().classes == ("clump",)
    s = ds[0]
    assert s["image"].shape == (3, 424, 424) and s["boxes"].shape == (6, 4) and s["labels"].tolist() == [0] * 6
    hw = 1.5 * 1.3 / float(ds.catalog()["scale"][0])
    np.testing.assert_allclose((s["boxes"][:, 2] - s["boxes"][:, 0]).numpy(), 2 * hw, rtol=1e-5)
    assert {"id", "gal_id", "scale", "refined", "scale_rel_err"} <= set(ds.catalog().colnames)
    # the calibration is cached
    monkeypatch.setattr(s82, "calibrate_s82", lambda *a, **k: (_ for _ in ()).throw(AssertionError("miss")))
    again = S82ClumpsDataset(S82ClumpsConfig(root=str(root), refined_only=True), split="test", seed=0,
                             cache_dir=tmp_path / "cache")
    assert len(again) == 2


def test_s82_errors(tmp_path):
    with pytest.raises(DataError, match="no folder given"):
        S82ClumpsDataset(S82ClumpsConfig(), split="test", seed=0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="clumps.csv' does not exist"):
        read_s82(tmp_path)
    root = _fake_s82(tmp_path / "s82")
    next((root / "images").iterdir()).unlink()
    with pytest.raises(DataError, match="1 of 2 images are missing"):
        read_s82(root)
    (root / "clumps.csv").write_text("image,gal_id\nx,1\n")
    with pytest.raises(DataError, match="has no column gal_ra"):
        read_s82(root)


@pytest.mark.shared
def test_s82_real_reader_and_calibration():
    root = _shared("gzh_s82_clumps", "clumps.csv").parent
    gal, cl = read_s82(root)
    assert len(gal) == 92 and len(cl) == 543 and int(gal["n_clumps"].sum()) == 543
    assert (gal["gal_sma"] > 0).all() and np.isfinite(cl["dx_east_arcsec"]).all()
    # the most significant galaxy of the full run (docs/clumps.md) and two others
    pick = [int(np.nonzero(gal["gal_id"] == gid)[0][0]) for gid in
            (8647475120900800722, 8647475120386802080, 8647474690313946727)]
    sub = gal[pick]
    sel = np.isin(cl["galaxy"], pick)
    c = cl[sel]
    c["galaxy"] = [pick.index(int(k)) for k in c["galaxy"]]
    g2, c2 = calibrate_s82(sub, c, n_null=30)
    assert g2["refined"][0] and g2["refined"][1]
    assert ((g2["scale"] > 0.05) & (g2["scale"] < 0.6)).all()
    assert ((c2["x"] >= 0) & (c2["x"] <= 423) & (c2["y"] >= 0) & (c2["y"] <= 423)).all()
