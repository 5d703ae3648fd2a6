"""Per-image normalisation (image_folder pixel_norm: image / robust / asinh, PNG and FITS) and the normalisation
that travels with exported weights (pixel_norm: auto)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from astrotl.data import per_image_normalise
from astrotl.datasets.image_folder import DEFAULT_PIXEL_NORM, ImageFolderConfig, ImageFolderDataset

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402


def test_per_image_methods():
    g = torch.Generator().manual_seed(0)
    x = 50 + 10 * torch.randn(4, 3, 8, 8, generator=g)
    x[0] *= 7  # a brighter image gets the same statistics after normalisation
    y = per_image_normalise(x, "image")
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-4)
    # colours kept: one band brighter than another stays brighter
    x2 = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 3.0)])[None] + 0.01 * torch.randn(1, 2, 4, 4, generator=g)
    y2 = per_image_normalise(x2, "image")
    assert float(y2[0, 1].mean()) > 0 > float(y2[0, 0].mean())
    # robust: a bright core does not set the scale; the sky is in noise units
    sky = torch.randn(1, 1, 32, 32, generator=g)
    sky[0, 0, 14:18, 14:18] += 1000.0
    r = per_image_normalise(sky, "robust")
    assert 0.8 < float(r[0, 0, :10, :10].std()) < 1.3 and float(r.max()) > 500
    assert float(per_image_normalise(sky, "image")[0, 0, :10, :10].std()) < 0.1
    a = per_image_normalise(sky, "asinh", softening=3.0)
    assert torch.allclose(a, torch.asinh(r / 3.0), atol=1e-5)
    # NaNs are ignored and become 0; a constant image does not divide by zero
    nan = sky.clone()
    nan[0, 0, 0, :5] = float("nan")
    out = per_image_normalise(nan, "robust")
    assert torch.isfinite(out).all() and float(out[0, 0, 0, 0]) == 0.0
    assert torch.isfinite(per_image_normalise(torch.ones(1, 1, 4, 4), "robust")).all()
    with pytest.raises(ValueError, match="unknown per-image normalisation"):
        per_image_normalise(x, "zscore")


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("norm_png"), n=16, size=12, seed=4)


def _cfg(root, **kw):
    return ImageFolderConfig(root=str(root), id_col="id", file_pattern=kw.pop("file_pattern", "images/{id}.png"),
                             color="grayscale", split_fractions=(0.5, 0.25, 0.25), **kw)


@pytest.mark.parametrize("method", ["image", "robust", "asinh", "dataset", "unit", "auto"])
def test_png_pixel_norm_options(png_dir, tmp_path, method):
    ds = ImageFolderDataset(_cfg(png_dir, pixel_norm=method), split="train", seed=0, cache_dir=tmp_path)
    img = ds[0]["image"]
    raw = torch.from_numpy(ds.raw_images()[:1].astype(np.float32)) / 255.0
    effective = DEFAULT_PIXEL_NORM if method == "auto" else method
    assert ds.pixel_norm == effective
    assert ds.info().extra["normalisation"]["pixel_norm"] == effective
    if effective in ("image", "robust", "asinh"):
        assert torch.allclose(img, per_image_normalise(raw, effective)[0], atol=1e-5)
    elif effective == "unit":
        assert torch.allclose(img, raw[0], atol=1e-6)
    if effective == "image":
        assert abs(float(img.mean())) < 1e-5 and abs(float(img.std()) - 1) < 1e-3


def test_fits_pixel_norm_per_image_and_normalize_block(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    (tmp_path / "f").mkdir()
    rows = []
    for i in range(8):
        data = (rng.normal(100, 5, (10, 10)) * (1 + i)).astype(np.float32)
        fits.PrimaryHDU(data).writeto(tmp_path / "f" / f"s{i}.fits")
        rows.append({"id": f"s{i}", "label": "a" if i % 2 else "b"})
    with open(tmp_path / "f" / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "label"])
        w.writeheader()
        w.writerows(rows)
    robust = ImageFolderDataset(_cfg(tmp_path / "f", pixel_norm="robust", file_pattern="{id}.fits"), split="train",
                                seed=0, cache_dir=tmp_path)
    assert robust.pixel_norm == "robust"
    img = robust[0]["image"]
    assert abs(float(img.median())) < 0.2 and 0.6 < float(img.abs().median()) < 1.5  # sky in noise units
    block = ImageFolderDataset(_cfg(tmp_path / "f", file_pattern="{id}.fits"), split="train", seed=0, cache_dir=tmp_path)
    assert block.pixel_norm == "normalize"
    assert block.info().extra["normalisation"]["pixel_norm"] == "dataset"
    assert "normalize" in block.info().extra["normalisation"]


def test_adopt_normalisation_rules():
    cfg = ImageFolderConfig(root=".", id_col="id")
    assert ImageFolderDataset.adopt_normalisation(cfg, {"pixel_norm": "robust"}).pixel_norm == "robust"
    explicit = ImageFolderConfig(root=".", id_col="id", pixel_norm="image")
    assert ImageFolderDataset.adopt_normalisation(explicit, {"pixel_norm": "robust"}) is explicit
    grey = ImageFolderConfig(root=".", id_col="id", color="grayscale")
    assert ImageFolderDataset.adopt_normalisation(grey, {"pixel_norm": "imagenet"}).pixel_norm == "auto"
    fitsy = ImageFolderDataset.adopt_normalisation(cfg, {"pixel_norm": "dataset", "normalize": {"stretch": "linear"}})
    assert fitsy.pixel_norm == "dataset" and fitsy.normalize.stretch == "linear"


def test_normalisation_travels_with_exported_weights(cli, tmp_path, png_dir):
    cfg = {
        "name": "travel", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", "augment": "none"},
        "data": {"name": "image_folder", "root": str(png_dir), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "trainer": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
        "stages": [
            {"name": "pre", "data": {"pixel_norm": "robust"}},
            {"name": "auto", "backbone": {"weights": "stage:pre"}},
            {"name": "explicit", "backbone": {"weights": "stage:pre"}, "data": {"pixel_norm": "image"}},
        ],
    }
    path = tmp_path / "travel.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, out, err = cli("run", path)
    assert code == 0, err
    run = tmp_path / "runs" / "travel" / "stages"
    from astrotl.weights import read_metadata

    meta = read_metadata(run / "pre" / "backbone.safetensors")
    assert meta["input_normalisation"]["pixel_norm"] == "robust"
    resolved = {s: yaml.safe_load((run / s / "config.resolved.yaml").read_text())["data"]["pixel_norm"]
                for s in ("pre", "auto", "explicit")}
    assert resolved == {"pre": "robust", "auto": "robust", "explicit": "image"}
    assert read_metadata(run / "auto" / "model.safetensors")["input_normalisation"]["pixel_norm"] == "robust"
