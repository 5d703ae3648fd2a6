"""Normalisation, D4 augmentation, collation, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.table import Table

from astrotl.data import NormalizeConfig, d4_augment, list_collate, normalize_images, robust_band_scale
from astrotl.io import atomic_path, write_json, write_table


def test_robust_band_scale_recovers_noise_per_band():
    rng = np.random.default_rng(0)
    sigmas = np.array([1.0, 5.0, 20.0])
    imgs = rng.normal(100, sigmas[None, :, None, None], size=(200, 3, 16, 16))
    assert np.allclose(robust_band_scale(imgs), sigmas, rtol=0.05)


def test_normalize_subtracts_background_and_keeps_colour_ratios():
    rng = np.random.default_rng(1)
    imgs = rng.normal(0, 1, size=(50, 2, 16, 16)).astype(np.float32)
    imgs[:, 0] += 500.0  # background only in band 0
    imgs[:, 1, 8, 8] += 30.0  # a source in band 1
    out = normalize_images(imgs, NormalizeConfig(stretch="linear", clip=None))
    assert abs(np.median(out[:, 0])) < 0.1  # background gone
    assert out[:, 1, 8, 8].mean() == pytest.approx(30.0, rel=0.1)  # in noise units
    asinh = normalize_images(imgs, NormalizeConfig(softening=3.0, clip=None))
    assert asinh[:, 1, 8, 8].mean() == pytest.approx(np.arcsinh(out[:, 1, 8, 8] / 3.0).mean(), rel=0.05)


def test_normalize_handles_nan_and_clip():
    imgs = np.zeros((2, 1, 8, 8), dtype=np.float32)
    imgs[0, 0, 0, 0] = np.nan
    imgs[1, 0, 4, 4] = 1e9
    out = normalize_images(imgs, NormalizeConfig(scale="none", clip=5.0))
    assert np.isfinite(out).all() and out.max() <= 5.0


def test_d4_augment_produces_all_eight_symmetries_and_preserves_content():
    img = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(400, 1, 1, 1)
    out = d4_augment(img, generator=torch.Generator().manual_seed(0))
    variants = {tuple(o.flatten().tolist()) for o in out}
    assert len(variants) == 8
    assert torch.allclose(out.sum(dim=(1, 2, 3)), img.sum(dim=(1, 2, 3)))
    assert out[:, :, 1:3, 1:3].sum() == img[:, :, 1:3, 1:3].sum()  # the centre stays the centre


def test_list_collate_keeps_variable_length_targets():
    samples = [{"image": torch.zeros(1, 4, 4), "index": i, "boxes": torch.zeros(i, 4)} for i in range(3)]
    batch = list_collate(samples)
    assert batch["image"].shape == (3, 1, 4, 4)
    assert batch["index"].tolist() == [0, 1, 2]
    assert [b.shape[0] for b in batch["boxes"]] == [0, 1, 2]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    dest = tmp_path / "metrics.json"
    write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert dest.read_text().strip().startswith("{") and '"a": 1' in dest.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_table_and_json_nan(tmp_path):
    t = Table({"x": [1.0, np.nan]})
    write_table(tmp_path / "t.ecsv", t)
    assert np.isnan(Table.read(tmp_path / "t.ecsv")["x"][1])
    write_json(tmp_path / "m.json", {"v": float("nan"), "arr": np.arange(2)})
    assert '"v": null' in (tmp_path / "m.json").read_text()
