"""Data utilities shared by plugins: normalisation/stretch (per data set and per image), D4 augmentation, collation."""

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
    from astropy.stats import mad_std

    sub = np.asarray(images[:max_images], dtype=np.float64)
    sub = sub - np.nanmedian(sub, axis=(2, 3), keepdims=True)
    # per band over all images and pixels, about 0 (each image's median was subtracted)
    scale = np.asarray(mad_std(np.moveaxis(sub, 1, 0).reshape(sub.shape[1], -1), axis=1, ignore_nan=True))
    scale[~np.isfinite(scale) | (scale <= 0)] = 1.0
    return scale.astype(np.float32)


def normalize_images(images: np.ndarray, cfg: NormalizeConfig, band_scale: np.ndarray | None = None) -> np.ndarray:
    """Apply :class:`NormalizeConfig` to a stack ``[N, C, H, W]`` (vectorised); NaNs become 0."""
    x = np.asarray(images, dtype=np.float32).copy()
    finite = np.isfinite(x)
    x[~finite] = np.nan
    if cfg.background == "image_median":  # np.median equals np.nanmedian on finite data, several times faster
        x -= (np.median if finite.all() else np.nanmedian)(x, axis=(2, 3), keepdims=True)
    if cfg.scale == "dataset":
        if band_scale is None:
            band_scale = robust_band_scale(images)
        x /= band_scale[None, :, None, None]
    elif cfg.scale == "image":
        from astropy.stats import mad_std

        sigma = np.asarray(mad_std(x.reshape(x.shape[0], x.shape[1], -1), axis=2, ignore_nan=True))[..., None, None]
        x /= np.where(sigma > 0, sigma, 1.0)
    if cfg.stretch == "asinh":
        x = np.arcsinh(x / cfg.softening)
    elif cfg.stretch == "log":
        x = np.sign(x) * np.log1p(np.abs(x) / cfg.softening)
    if cfg.clip is not None:
        np.clip(x, -cfg.clip, cfg.clip, out=x)
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


#: Per-image normalisations (no statistics from the training set), for PNG/JPEG and FITS alike.
PER_IMAGE_NORMS = ("image", "robust", "asinh")


def per_image_normalise(images: torch.Tensor | np.ndarray, method: str, softening: float = 3.0) -> torch.Tensor:
    """Normalise each image of a stack ``[N, C, H, W]`` on its own (all bands together, so colours are kept).

    ``image``
        ``(x - mean) / std`` (TensorFlow's per-image standardisation; std at least ``1/sqrt(C H W)``);
    ``robust``
        ``(x - median) / (1.4826 MAD)`` (a bright galaxy core or a star does not set the scale; a MAD of 0,
        e.g. an empty quantised sky, falls back to the standard deviation);
    ``asinh``
        ``asinh(robust / softening)``: linear in the noise, logarithmic in the bright parts.

    NaNs are ignored in the statistics and become 0.

    Examples
    --------
    >>> x = torch.arange(8.0).reshape(1, 2, 2, 2)
    >>> y = per_image_normalise(x, "image")
    >>> round(float(y.mean()), 6), round(float(y.std()), 6)
    (0.0, 1.0)
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
    if method not in PER_IMAGE_NORMS:
        raise ValueError(f"unknown per-image normalisation '{method}'; use one of {PER_IMAGE_NORMS}")
    flat = x.reshape(x.shape[0], -1)
    finite = torch.isfinite(flat)
    if method == "image":
        clean = torch.where(finite, flat, torch.zeros_like(flat))
        n = finite.sum(dim=1, keepdim=True).clamp_min(1)
        mean = clean.sum(dim=1, keepdim=True) / n
        var = (torch.where(finite, flat - mean, torch.zeros_like(flat)) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1)
        scale = var.sqrt().clamp_min(1.0 / float(np.sqrt(flat.shape[1])))
        centre = mean
    else:
        nan = torch.where(finite, flat, torch.full_like(flat, float("nan")))
        centre = torch.nanmedian(nan, dim=1, keepdim=True).values
        mad = 1.4826 * torch.nanmedian((nan - centre).abs(), dim=1, keepdim=True).values
        clean = torch.where(finite, flat, centre)
        std = clean.std(dim=1, keepdim=True)
        scale = torch.where(mad > 0, mad, std)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        centre = torch.nan_to_num(centre)
    out = (flat - centre) / scale
    if method == "asinh":
        out = torch.asinh(out / softening)
    out = torch.where(finite, out, torch.zeros_like(out))
    return out.reshape(x.shape)


def adopt_weights_normalisation(config):
    """``config`` with the data section's ``auto`` normalisation replaced by what the backbone's weights were trained with.

    When ``backbone.weights`` is an astrotl export (``run:<dir>`` or a file it wrote) that records its input
    normalisation, and the data set class has ``adopt_normalisation(config, recorded)`` (``image_folder`` does:
    its ``pixel_norm: auto``), the recorded normalisation replaces ``auto``; an explicit choice is kept.
    The engine calls this before anything else, so the run's ``config.resolved.yaml`` (and ``astrotl predict``)
    hold the normalisation actually used.
    """
    import dataclasses

    from .weights import recorded_input_normalisation

    ds_cls, ds_cfg = config.component("data")
    adopt = getattr(ds_cls, "adopt_normalisation", None)
    if adopt is None:
        return config
    bb_cfg = config.component("backbone")[1]
    recorded = recorded_input_normalisation(getattr(bb_cfg, "weights", None))
    if not recorded:
        return config
    new_cfg = adopt(ds_cfg, recorded)
    if new_cfg is ds_cfg:
        return config
    components = dict(config.components)
    components["data"] = (ds_cls, new_cfg)
    return dataclasses.replace(config, components=components)


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


def random_shift(images: torch.Tensor, max_shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of a batch ``[B, C, H, W]`` by random whole pixels, up to ``max_shift`` x its side.

    Shifts are drawn uniformly in ``[-round(max_shift * H), round(max_shift * H)]`` (and the same for
    ``W``) per image; the pixels shifted in repeat the edge (Keras' ``fill_mode="nearest"``).

    Examples
    --------
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> random_shift(x, 0.0).equal(x)
    True
    """
    b, _, h, w = images.shape
    sy, sx = int(round(max_shift * h)), int(round(max_shift * w))
    if b == 0 or (sy == 0 and sx == 0):
        return images
    dy = torch.randint(-sy, sy + 1, (b,), generator=generator).tolist()
    dx = torch.randint(-sx, sx + 1, (b,), generator=generator).tolist()
    padded = torch.nn.functional.pad(images, (sx, sx, sy, sy), mode="replicate")
    return torch.stack([padded[i, :, sy - dy[i]: sy - dy[i] + h, sx - dx[i]: sx - dx[i] + w] for i in range(b)])


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
