"""Post-processing of per-image clump detections, as in the Clump Scout reference pipeline.

ou-astrophysics/Faster-R-CNN-for-Galaxy-Zoo-Clump-Scout runs the detector with NMS at IoU
0.2, keeps detections scoring at least 0.3, drops those whose centre lies outside the host
galaxy's segmentation map, and merges detections whose centres are closer than one PSF
FWHM. Each step here is a pure function of one image's detections, a dict::

    {"boxes": [N, 4] (x0, y0, x1, y1; 0-based pixels), "scores": [N], "labels": [N]}

of torch tensors or numpy arrays (any further per-detection arrays of length N are carried
along); every function returns a new dict of the same kind. :func:`postprocess` chains them
in the reference order (NMS, score cut, host mask, merge) under a
:class:`PostprocessConfig`.

The reference pipeline merges a connected group of nearby detections into one at the
group's centroid, taking the highest score and the odd label if any member is odd; here the
merge is greedy (highest score first, like NMS with a centre distance), keeping the
highest-scoring member's box and label unchanged.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field

from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig
from astrotl.io import atomic_path

__all__ = [
    "PostprocessConfig",
    "mask_outside_host",
    "merge_close",
    "nms",
    "postprocess",
    "read_ds9_regions",
    "score_cut",
    "write_ds9_regions",
]

#: One SDSS PSF FWHM (1.4") in 0.396" pixels: the default merge distance.
DEFAULT_MERGE_PX = 1.4 / 0.396


class PostprocessConfig(ComponentConfig):
    """Knobs of :func:`postprocess` (``None`` switches a step off)."""

    nms_iou: float | None = Field(0.2, gt=0, le=1, description="IoU above which NMS suppresses the lower score")
    class_agnostic_nms: bool = Field(False, description="NMS across classes (True) or within each class")
    score_threshold: float | None = Field(0.3, ge=0, le=1, description="keep detections scoring at least this")
    mask_outside_host: bool = Field(True, description="drop detections whose centre lies outside the host galaxy")
    merge_distance_px: float | None = Field(
        DEFAULT_MERGE_PX, gt=0, description="merge detections whose centres are closer (pixels; ~ one PSF FWHM)")
    class_agnostic_merge: bool = Field(True, description="merge across classes (True) or within each class")


# --------------------------------------------------------------------------------------
# helpers


def _check(det: Mapping[str, Any]) -> tuple[int, bool]:
    """Validate a detection dict; return (N, is_torch)."""
    if not isinstance(det, Mapping):
        raise DataError(f"detections must be a dict with boxes, scores, labels, got {type(det).__name__}; "
                        "pass one image's detections")
    missing = [k for k in ("boxes", "scores") if k not in det]
    if missing:
        raise DataError(f"detections have no {', '.join(missing)}; give a dict with 'boxes' [N, 4], 'scores' [N] "
                        "and optionally 'labels' [N]")
    boxes = det["boxes"]
    shape = tuple(boxes.shape)
    if len(shape) != 2 or shape[1] != 4:
        raise DataError(f"detection boxes have shape {list(shape)}; expected [N, 4] (x0, y0, x1, y1)")
    n = shape[0]
    for k, v in det.items():
        if k != "boxes" and hasattr(v, "shape") and len(v.shape) >= 1 and v.shape[0] != n:
            raise DataError(f"detection '{k}' has {v.shape[0]} entries but there are {n} boxes; "
                            "give one value per box")
    return n, isinstance(boxes, torch.Tensor)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _select(det: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """Rows ``keep`` (integer indices, in this order) of every per-detection array."""
    n = det["boxes"].shape[0]
    out: dict[str, Any] = {}
    for k, v in det.items():
        if hasattr(v, "shape") and len(v.shape) >= 1 and v.shape[0] == n:
            if isinstance(v, torch.Tensor):
                out[k] = v[torch.as_tensor(keep, dtype=torch.long, device=v.device)]
            else:
                out[k] = np.asarray(v)[keep]
        else:
            out[k] = v
    return out


def _labels(det: Mapping[str, Any], n: int) -> np.ndarray:
    return _np(det["labels"]).astype(np.int64) if "labels" in det else np.zeros(n, dtype=np.int64)


def _centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0


# --------------------------------------------------------------------------------------
# steps


def nms(det: Mapping[str, Any], iou: float = 0.2, class_agnostic: bool = False) -> dict[str, Any]:
    """Non-maximum suppression (:func:`torchvision.ops.batched_nms`).

    Parameters
    ----------
    det : dict
        One image's detections (``boxes``, ``scores``, optional ``labels``).
    iou : float
        Boxes overlapping a higher-scoring one with IoU > ``iou`` are removed (default 0.2,
        the reference pipeline's value).
    class_agnostic : bool
        Suppress across classes instead of within each class.

    Returns
    -------
    dict
        The kept detections, highest score first.
    """
    from torchvision.ops import batched_nms

    n, _ = _check(det)
    if not 0 < iou <= 1:
        raise DataError(f"nms iou={iou!r} is invalid; use a value in (0, 1]")
    if n == 0:
        return _select(det, np.zeros(0, dtype=np.int64))
    boxes = torch.as_tensor(_np(det["boxes"]), dtype=torch.float32)
    scores = torch.as_tensor(_np(det["scores"]), dtype=torch.float32)
    idx = torch.zeros(n, dtype=torch.int64) if class_agnostic else torch.as_tensor(_labels(det, n))
    keep = batched_nms(boxes, scores, idx, float(iou)).numpy()
    return _select(det, keep)


def score_cut(det: Mapping[str, Any], threshold: float = 0.3) -> dict[str, Any]:
    """Keep detections with ``score >= threshold`` (default 0.3, as the reference pipeline)."""
    _check(det)
    if not 0 <= threshold <= 1:
        raise DataError(f"score threshold={threshold!r} is invalid; use a value in [0, 1]")
    return _select(det, np.nonzero(_np(det["scores"]) >= threshold)[0])


def merge_close(det: Mapping[str, Any], distance_px: float = DEFAULT_MERGE_PX,
                class_agnostic: bool = True) -> dict[str, Any]:
    """Merge detections whose box centres are closer than ``distance_px``, keeping the highest score.

    Greedy: detections are visited from the highest score down and one is dropped when its
    centre lies within ``distance_px`` of an already kept detection (of the same class when
    ``class_agnostic`` is False).

    Parameters
    ----------
    det : dict
        One image's detections.
    distance_px : float
        Merge distance in pixels (default: one SDSS PSF FWHM, 1.4" = 3.54 px).
    class_agnostic : bool
        Merge across classes.

    Returns
    -------
    dict
        The kept detections, highest score first.
    """
    n, _ = _check(det)
    if not (isinstance(distance_px, int | float) and math.isfinite(distance_px) and distance_px > 0):
        raise DataError(f"merge distance_px={distance_px!r} is invalid; use a positive number of pixels")
    if n == 0:
        return _select(det, np.zeros(0, dtype=np.int64))
    x, y = _centres(_np(det["boxes"]))
    lab = _labels(det, n)
    order = np.argsort(-_np(det["scores"]).astype(np.float64), kind="stable")
    kept: list[int] = []
    d2 = float(distance_px) ** 2
    for i in order:
        close = [(x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2 < d2 and (class_agnostic or lab[i] == lab[j]) for j in kept]
        if not any(close):
            kept.append(int(i))
    return _select(det, np.array(kept, dtype=np.int64))


def _inside_ellipse(x, y, ellipse) -> np.ndarray:
    try:
        xc, yc, a, b, theta_deg = (float(v) for v in ellipse)
    except (TypeError, ValueError):
        raise DataError(f"host ellipse {ellipse!r} is invalid; give (x, y, a, b, theta_deg) in pixels") from None
    if not (a > 0 and b > 0):
        raise DataError(f"host ellipse semi-axes a={a}, b={b} are invalid; both must be > 0 pixels")
    t = math.radians(theta_deg)
    dx, dy = x - xc, y - yc
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def mask_outside_host(det: Mapping[str, Any], mask: np.ndarray | torch.Tensor | None = None,
                      ellipse: tuple[float, float, float, float, float] | None = None) -> dict[str, Any]:
    """Drop detections whose box centre lies outside the host galaxy.

    Parameters
    ----------
    det : dict
        One image's detections.
    mask : array_like of bool, optional
        Host segmentation map ``[H, W]``; the centre's nearest pixel is looked up (centres
        outside the frame count as outside).
    ellipse : tuple, optional
        ``(x, y, a, b, theta_deg)``: centre, semi-axes (pixels) and angle of the major axis
        from +x towards +y. Used when ``mask`` is not given.

    Returns
    -------
    dict
        The detections inside the host.

    Raises
    ------
    astrotl.errors.DataError
        When neither or a malformed ``mask``/``ellipse`` is given.
    """
    n, _ = _check(det)
    x, y = _centres(_np(det["boxes"]))
    if mask is not None:
        m = _np(mask).astype(bool)
        if m.ndim != 2:
            raise DataError(f"host mask has shape {list(m.shape)}; expected one image's [H, W] boolean map")
        h, w = m.shape
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        inside = np.zeros(n, dtype=bool)
        inside[ok] = m[iy[ok], ix[ok]]
    elif ellipse is not None:
        inside = _inside_ellipse(x, y, ellipse)
    else:
        raise DataError("mask_outside_host needs the host's segmentation mask or ellipse; pass mask=[H, W] "
                        "or ellipse=(x, y, a, b, theta_deg), or switch the step off (mask_outside_host: false)")
    return _select(det, np.nonzero(inside)[0])


def postprocess(det: Mapping[str, Any], config: PostprocessConfig | None = None, *,
                mask: np.ndarray | torch.Tensor | None = None,
                ellipse: tuple[float, float, float, float, float] | None = None) -> dict[str, Any]:
    """Apply the configured steps in the reference order: NMS, score cut, host mask, merge.

    Parameters
    ----------
    det : dict
        One image's detections.
    config : PostprocessConfig, optional
        The knobs (defaults: NMS 0.2, score 0.3, host mask on, merge within 3.54 px).
    mask, ellipse
        The host's segmentation map or ellipse (see :func:`mask_outside_host`); needed when
        ``config.mask_outside_host`` is True.

    Returns
    -------
    dict
        The surviving detections.

    Examples
    --------
    >>> import torch
    >>> det = {"boxes": torch.tensor([[10., 10., 20., 20.], [11., 10., 21., 20.]]),
    ...        "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}
    >>> postprocess(det, PostprocessConfig(mask_outside_host=False))["scores"]
    tensor([0.9000])
    """
    cfg = config or PostprocessConfig()
    out = dict(det)
    if cfg.nms_iou is not None:
        out = nms(out, cfg.nms_iou, cfg.class_agnostic_nms)
    if cfg.score_threshold is not None:
        out = score_cut(out, cfg.score_threshold)
    if cfg.mask_outside_host:
        out = mask_outside_host(out, mask=mask, ellipse=ellipse)
    if cfg.merge_distance_px is not None:
        out = merge_close(out, cfg.merge_distance_px, cfg.class_agnostic_merge)
    _check(out)
    return out


# --------------------------------------------------------------------------------------
# DS9 regions

_COLOURS = ("green", "magenta", "cyan", "yellow", "red", "blue")


def write_ds9_regions(path: str | os.PathLike, detections: Mapping[str, Any], wcs=None,
                      class_names: tuple[str, ...] | None = ("clump", "odd_clump")) -> os.PathLike:
    """Write one image's detections as a DS9 region file (with the ``regions`` package).

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written atomically).
    detections : dict
        ``boxes`` [N, 4] (0-based pixels), optional ``scores`` and ``labels``.
    wcs : astropy.wcs.WCS, optional
        If given, the boxes are written as sky rectangles (fk5 centre, arcsec sizes, angle 0 in
        the image frame); else as image rectangles (DS9's 1-based pixels, converted by
        ``regions``).
    class_names : tuple of str, optional
        Names of the labels, written as each region's text with the score.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from pathlib import Path

    from regions import PixCoord, RectanglePixelRegion, Regions

    if not isinstance(detections, Mapping) or "boxes" not in detections:
        raise DataError("detections have no boxes; give a dict with 'boxes' [N, 4] (and 'scores', 'labels')")
    b = _np(detections["boxes"]).astype(np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise DataError(f"detection boxes have shape {list(b.shape)}; expected [N, 4] (x0, y0, x1, y1)")
    n = len(b)
    scores = _np(detections["scores"]).astype(float) if "scores" in detections else None
    labels = _labels(detections, n)
    regs = []
    for i in range(n):
        x0, y0, x1, y1 = b[i]
        reg = RectanglePixelRegion(center=PixCoord((x0 + x1) / 2.0, (y0 + y1) / 2.0), width=x1 - x0, height=y1 - y0)
        name = class_names[labels[i]] if class_names and 0 <= labels[i] < len(class_names) else str(labels[i])
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        reg.meta["text"] = text
        reg.visual["color"] = _COLOURS[int(labels[i]) % len(_COLOURS)]
        if wcs is not None:
            reg = reg.to_sky(wcs)
            reg.meta["text"] = text
            reg.visual["color"] = _COLOURS[int(labels[i]) % len(_COLOURS)]
        regs.append(reg)
    path = Path(path)
    with atomic_path(path) as tmp:
        Regions(regs).write(str(tmp), format="ds9", overwrite=True)
    return path


def read_ds9_regions(path: str | os.PathLike, wcs=None) -> dict[str, np.ndarray]:
    """Read boxes written by :func:`write_ds9_regions` back (pixel boxes; sky regions need ``wcs``).

    Returns
    -------
    dict
        ``boxes`` [N, 4] (0-based pixels, axis-aligned in the image) and ``text`` [N].
    """
    from regions import Regions, SkyRegion

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            regs = Regions.read(str(path), format="ds9")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read DS9 regions from '{path}' ({exc}); give a file written by "
                        "write_ds9_regions") from None
    skipped = [str(w.message) for w in caught if "unable to parse" in str(w.message)]
    if skipped:
        raise DataError(f"cannot read DS9 regions from '{path}' ({skipped[0]}); give a file written by "
                        "write_ds9_regions")
    boxes, text = [], []
    for r in regs:
        if isinstance(r, SkyRegion):
            if wcs is None:
                raise DataError(f"'{path}' holds sky regions; pass the image's wcs to convert them to pixels")
            r = r.to_pixel(wcs)
        w, h = float(r.width), float(r.height)
        boxes.append([r.center.x - w / 2, r.center.y - h / 2, r.center.x + w / 2, r.center.y + h / 2])
        text.append(r.meta.get("text", ""))
    return {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4), "text": np.array(text, dtype=str)}
