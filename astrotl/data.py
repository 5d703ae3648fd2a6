"""Data utilities shared by plugins: normalisation/stretch, D4 augmentation, collation."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from .interfaces import ComponentConfig


class NormalizeConfig(ComponentConfig):
    """Per-band normalisation and stretch applied to every image before the network."""

    background: Literal["image_median", "none"] = Field(
        "image_median", description="subtract each image's per-band median (local sky + galaxy background)")
    scale: Literal["dataset", "image", "none"] = Field(
        "dataset", description="divide by a per-band noise scale from the training set (keeps colours), per image, or not")
    stretch: Literal["asinh", "linear", "log"] = "asinh"
    softening: float = Field(3.0, gt=0, description="asinh(x / softening): noise-scaled units where the stretch turns logarithmic")
    clip: float | None = Field(10.0, description="clip the stretched values to +-clip (None: no clip)")


def robust_band_scale(images: np.ndarray, max_images: int = 2000) -> np.ndarray:
    """Per-band noise scale (1.4826 x median absolute deviation) from a stack ``[N, C, H, W]``."""
    sub = np.asarray(images[:max_images], dtype=np.float64)
    sub = sub - np.nanmedian(sub, axis=(2, 3), keepdims=True)
    mad = np.nanmedian(np.abs(sub), axis=(0, 2, 3))
    scale = 1.4826 * mad
    scale[~np.isfinite(scale) | (scale <= 0)] = 1.0
    return scale.astype(np.float32)


def normalize_images(images: np.ndarray, cfg: NormalizeConfig, band_scale: np.ndarray | None = None) -> np.ndarray:
    """Apply :class:`NormalizeConfig` to a stack ``[N, C, H, W]`` (vectorised); NaNs become 0."""
    x = np.asarray(images, dtype=np.float32).copy()
    x[~np.isfinite(x)] = np.nan
    if cfg.background == "image_median":
        x -= np.nanmedian(x, axis=(2, 3), keepdims=True)
    if cfg.scale == "dataset":
        if band_scale is None:
            band_scale = robust_band_scale(images)
        x /= band_scale[None, :, None, None]
    elif cfg.scale == "image":
        mad = np.nanmedian(np.abs(x - np.nanmedian(x, axis=(2, 3), keepdims=True)), axis=(2, 3), keepdims=True)
        x /= np.where(mad > 0, 1.4826 * mad, 1.0)
    if cfg.stretch == "asinh":
        x = np.arcsinh(x / cfg.softening)
    elif cfg.stretch == "log":
        x = np.sign(x) * np.log1p(np.abs(x) / cfg.softening)
    if cfg.clip is not None:
        np.clip(x, -cfg.clip, cfg.clip, out=x)
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def d4_augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random element of the dihedral group D4 per image: rotation by k x 90 degrees and a 50% flip.

    This is Wei et al. (2020)'s augmentation. Works on a batch ``[B, C, H, W]`` on any device.
    """
    b = images.shape[0]
    k = torch.randint(0, 4, (b,), generator=generator).tolist()
    flip = torch.randint(0, 2, (b,), generator=generator).tolist()
    out = images.clone()
    for rot in range(4):
        for f in (0, 1):
            idx = [i for i in range(b) if k[i] == rot and flip[i] == f]
            if not idx:
                continue
            sel = images[idx]
            if f:
                sel = torch.flip(sel, dims=(-1,))
            if rot:
                sel = torch.rot90(sel, rot, dims=(-2, -1))
            out[idx] = sel
    return out


def list_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for variable-size targets (detection): stack images, keep everything else as lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "image":
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.as_tensor(values)
        else:
            out[key] = values
    return out
