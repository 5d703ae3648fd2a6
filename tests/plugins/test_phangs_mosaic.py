"""Tests of the painted PHANGS-HST-like mosaic (astrotl_phangs.mosaic), its data set and its CLI command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from pydantic import ValidationError

from astrotl.datasets.cutouts import CatalogCutoutConfig, CatalogCutoutDataset
from astrotl.errors import DataError
from astrotl_phangs.mosaic import MosaicConfigError, paint_mosaic
from astrotl_phangs.mosaic_dataset import PhangsMosaicConfig, PhangsMosaicDataset
from astrotl_phangs.simulate import BANDS, SimConfig

REPO = Path(__file__).resolve().parents[2]
#: Many stars and edge objects so the checks below have something to look at in 30 candidates.
CFG = SimConfig(class_fractions=(0.25, 0.15, 0.1, 0.5), artifact_fractions=(("4.1", 0.6), ("4.11", 0.3), ("4.2", 0.1)))
ARGS = dict(n_sources=30, shape=(256, 256), config=CFG, seed=1)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return paint_mosaic(tmp_path_factory.mktemp("mosaic"), **ARGS)


def test_files_and_headers(mosaic):
    assert list(mosaic.images) == list(BANDS)
    for band, path in mosaic.images.items():
        with fits.open(path) as hdul:
            sci = hdul["SCI"]
            assert sci.data.dtype == np.dtype(">f4") and sci.data.shape == (256, 256)
            h = sci.header
            assert h["BUNIT"] == "ELECTRONS/S" and h["FILTER"] == band and hdul[0].header["FILTER"] == band
            assert h["EXPTIME"] > 0 and h["PHOTFLAM"] > 0 and h["PHOTPLAM"] > 0 and "ZP_VEGA" in h
            w = WCS(h)
            assert w.has_celestial and list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
            assert np.allclose(np.abs(w.proj_plane_pixel_scales()[0].to_value("arcsec")), 0.04)
            centre = w.pixel_to_world(127.5, 127.5)
            assert abs(centre.ra.deg - 24.174) < 1e-6 and abs(centre.dec.deg - 15.784) < 1e-6
    cat = Table.read(mosaic.catalog_path)
    for col in ["id", "x", "y", "ra", "dec", "cls", "subclass", *[f"mag_{b}" for b in BANDS], "log_age", "ebv",
                "redundant"]:
        assert col in cat.colnames, col
    assert len(cat) == 30 and len(set(cat["id"])) == 30
    assert set(np.asarray(cat["cls"]).tolist()) <= {1, 2, 3, 4}
    assert (mosaic.out_dir / "manifest.json").is_file()


def test_wcs_round_trip(mosaic):
    with fits.open(mosaic.images["F814W"]) as hdul:
        w = WCS(hdul["SCI"].header)
    cat = mosaic.catalog
    x, y = w.all_world2pix(np.asarray(cat["ra"]), np.asarray(cat["dec"]), 0)
    assert np.max(np.abs(x - cat["x"])) < 0.01 and np.max(np.abs(y - cat["y"])) < 0.01


def test_sources_where_the_catalogue_says(mosaic):
    img = fits.getdata(mosaic.images["F555W"], "SCI")
    cat = mosaic.catalog
    xy = np.column_stack([cat["x"], cat["y"]])
    checked = 0
    for row, (x, y) in zip(cat, xy):
        others = np.hypot(*(xy - (x, y)).T)
        isolated = np.sort(others)[1] > 10
        if row["subclass_drawn"] != "4.1" or not isolated or row["edge_dist"] < 8:
            continue
        ix, iy = int(round(x)), int(round(y))
        box = img[iy - 3: iy + 4, ix - 3: ix + 4]
        j, i = np.unravel_index(np.nanargmax(box), box.shape)
        assert np.hypot(ix - 3 + i - x, iy - 3 + j - y) <= 1.0, (row["id"], row["subclass_drawn"])
        checked += 1
    assert checked >= 2


def test_nan_footprint_and_edge_flags(mosaic):
    nan = {b: ~np.isfinite(fits.getdata(p, "SCI")) for b, p in mosaic.images.items()}
    for b, m in nan.items():
        assert 0.005 < m.mean() < 0.3, b
        assert m[0, 0] or m[0, -1] or m[-1, 0] or m[-1, -1]  # rotated footprint: NaN corners
    assert (nan["F275W"] == nan["F336W"]).all() and (nan["F555W"] == nan["F814W"]).all()
    assert (nan["F275W"] != nan["F555W"]).any()  # two pointings
    cat = mosaic.catalog
    edge = np.asarray(cat["subclass"]) == "4.11"
    assert edge.sum() >= 2
    assert (np.asarray(cat["cls"])[edge] == 4).all() and (np.asarray(cat["edge_dist"])[edge] <= 5).all()
    cfg = CatalogCutoutConfig(**mosaic.cutout_config(size=16, split_fractions=(1, 0, 0)))
    ds = CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=mosaic.out_dir / "cache")
    flags = ds.catalog()
    assert len(flags) == 30
    by_id = {int(i): k for k, i in enumerate(flags["id"])}
    for row in cat[edge]:
        assert flags["flag_nan"][by_id[int(row["id"])]], row["id"]
    image = ds[int(np.flatnonzero(edge)[0])]["image"]
    assert image.shape == (5, 16, 16) and np.isfinite(image.numpy()).all()


def test_reproducible_and_cached(mosaic, tmp_path):
    t0 = time.perf_counter()
    again = paint_mosaic(mosaic.out_dir, **ARGS)
    assert again.cached and time.perf_counter() - t0 < 1.0
    other = paint_mosaic(tmp_path / "b", **ARGS)
    assert not other.cached and other.key == mosaic.key
    for band in BANDS:
        np.testing.assert_array_equal(fits.getdata(mosaic.images[band], "SCI"), fits.getdata(other.images[band], "SCI"))
    assert (mosaic.out_dir / "candidates.ecsv").read_text() == (tmp_path / "b" / "candidates.ecsv").read_text()
    different = paint_mosaic(tmp_path / "c", **{**ARGS, "seed": 2})
    assert different.key != mosaic.key
    assert not np.array_equal(np.asarray(different.catalog["x"]), np.asarray(mosaic.catalog["x"]))


def test_redundancy_marks(mosaic):
    cat = mosaic.catalog
    red = np.asarray(cat["redundant"], dtype=bool)
    assert red.sum() >= 1 and cat.meta["redundancy"]["n_redundant"] == red.sum()
    assert (np.asarray(cat["subclass"])[red] == "4.9").all() and (np.asarray(cat["cls"])[red] == 4).all()
    ids = {int(i): k for k, i in enumerate(cat["id"])}
    for row in cat[red]:
        k = ids[int(row["redundant_of"])]
        assert not red[k] and np.hypot(row["x"] - cat["x"][k], row["y"] - cat["y"][k]) <= 5.0
        assert row["mag_F555W"] >= cat["mag_F555W"][k]
    assert (np.asarray(cat["spurious"])[red]).all()


def test_dataset_splits(tmp_path):
    cfg = PhangsMosaicConfig(n_sources=30, shape=(256, 256), seed=1, size=16, split_fractions=(0.5, 0.25, 0.25),
                             class_fractions=(0.3, 0.2, 0.2, 0.3))
    sets = {s: PhangsMosaicDataset(cfg, split=s, seed=0, cache_dir=tmp_path) for s in ("train", "val", "test", "predict")}
    n_kept = int((~np.asarray(sets["train"].mosaic.catalog["redundant"], dtype=bool)).sum())
    assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == n_kept == len(sets["predict"])
    assert abs(len(sets["train"]) - 0.5 * n_kept) <= 3 and len(sets["val"]) >= 4 and len(sets["test"]) >= 4
    info = sets["train"].info()
    assert info.classes == ("1", "2", "3", "4") and info.bands == BANDS and "symmetric" in info.class_descriptions[0]
    s = sets["test"][0]
    assert s["image"].shape == (5, 16, 16) and 0 <= s["label"] < 4
    cat = sets["test"].catalog()
    assert len(cat) == len(sets["test"])
    for col in ("id", "ra", "dec", "subclass", "mag_F555W", "flag_nan", "class"):
        assert col in cat.colnames
    assert "4.9" not in set(np.asarray(cat["subclass"]).tolist())


@pytest.mark.slow  # ~15 s alone, more on a busy machine (Lightning start-up + one epoch)
def test_end_to_end_smoke_run(tmp_path):
    from astrotl.cli import main

    code = main(["-q", "run", str(REPO / "tasks/smoke/phangs_mosaic_tiny.yaml"), "--set", f"output_dir={tmp_path}"])
    assert code == 0
    pred = Table.read(tmp_path / "phangs_mosaic_tiny" / "predictions.ecsv")
    assert len(pred) > 0
    for col in ("ra", "dec", "pred_class", "true_class", "subclass", "mag_F555W"):
        assert col in pred.colnames


def test_cli_paints_and_reuses(tmp_path, capsys):
    from astrotl.cli import main

    argv = ["phangs-mosaic", str(tmp_path / "m"), "--n-sources", "30", "--shape", "256", "256", "--seed", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "painted" in out and "30 candidates" in out
    assert all((tmp_path / "m" / f"mosaic_{b.lower()}.fits").is_file() for b in BANDS)
    data = yaml.safe_load((tmp_path / "m" / "data_catalog_cutouts.yaml").read_text())["data"]
    assert data["name"] == "catalog_cutouts" and data["hdu"] == "SCI" and data["coords"] == "sky"
    assert main(argv) == 0 and capsys.readouterr().out.startswith("reused")


@pytest.mark.parametrize("kwargs, match", [
    ({"n_sources": 0}, "n_sources=0 is invalid"),
    ({"n_sources": 10_000}, "too many"),
    ({"shape": (48, 256)}, "too small"),
    ({"shape": (256,)}, "two integers"),
    ({"seed": -1}, "seed=-1"),
    ({"config": "nope"}, "must be a SimConfig"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(MosaicConfigError, match=match):
        paint_mosaic(tmp_path, **{**ARGS, **kwargs})


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write the mosaic to out_dir"):
        paint_mosaic(blocker / "sub", **ARGS)


def test_dataset_shape_too_small_for_stamp():
    with pytest.raises(ValidationError, match="too small for the stamp size 64"):
        PhangsMosaicConfig(n_sources=10, shape=(128, 128), size=64)


@pytest.mark.parametrize("extra, match", [
    (["--n-sources", "0"], "n_sources=0 is invalid"),
    (["--shape", "32", "32"], "too small"),
    (["--psf-fwhm", "0.1"], "psf-fwhm"),
])
def test_cli_bad_input(tmp_path, capsys, extra, match):
    from astrotl.cli import main

    assert main(["phangs-mosaic", str(tmp_path / "m"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("astrotl: error:") and match in err[0]


def test_cli_unwritable(tmp_path, capsys):
    from astrotl.cli import main

    (tmp_path / "f").write_text("x")
    assert main(["phangs-mosaic", str(tmp_path / "f" / "m"), "--n-sources", "30", "--shape", "256", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0]
