"""Clump detection data sets: simulated SDSS-like frames (``clumps_sim``) and the Galaxy Zoo:
Clump Scout aggregated boxes on user-supplied images (``clumpscout``).

Both yield the detection sample of :mod:`astrotl.interfaces`::

    {"image": float32 [3, H, W],       # bands ("g", "r", "i")
     "boxes": float32 [N, 4],          # x0, y0, x1, y1; 0-based pixel-centre coordinates; N may be 0
     "labels": int64 [N],              # 0 clump, 1 odd_clump (no background class)
     "index": int}

The evaluation splits (``val``, ``test``, ``predict``) of ``clumps_sim`` also carry what the
``clumps`` task's post-processing and outputs need (training never uses them, and the training
augmentation would not move them with the image)::

     "mask": bool [H, W],              # the host galaxy's segmentation map
     "wcs": astropy.wcs.WCS,           # the image's TAN WCS
     "box_meta": {"flux_ratio": float32 [N]}   # per box: clump r flux / host r flux
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator

from astrotl.data import NormalizeConfig, list_collate, normalize_images
from astrotl.errors import AstrotlWarning, DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset

from .simulate import BANDS, CLASS_DESCRIPTIONS, CLASSES, PIXEL_SCALE_ARCSEC, SimConfig, make_wcs, simulate_cached, \
    sky_sigma_nmgy

log = logging.getLogger(__name__)

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "predict": 3}


def _values_by_image(n: int, image: np.ndarray, values: np.ndarray) -> list[torch.Tensor]:
    """Per-object values split per image, in the order of :func:`_boxes_by_image` (float32 tensors)."""
    order = np.argsort(image, kind="stable")
    image, values = image[order], np.asarray(values, dtype=np.float32)[order]
    starts = np.searchsorted(image, np.arange(n + 1))
    return [torch.from_numpy(np.ascontiguousarray(values[starts[i]:starts[i + 1]])) for i in range(n)]


def _boxes_by_image(n: int, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    """Split per-object arrays into per-image ``(boxes [k, 4] float32, labels [k] int64)`` tensors."""
    order = np.argsort(image, kind="stable")
    image, boxes, labels = image[order], boxes[order], labels[order]
    starts = np.searchsorted(image, np.arange(n + 1))
    out = []
    for i in range(n):
        a, b = starts[i], starts[i + 1]
        out.append((torch.from_numpy(np.ascontiguousarray(boxes[a:b], dtype=np.float32).reshape(-1, 4)),
                    torch.from_numpy(np.ascontiguousarray(labels[a:b], dtype=np.int64))))
    return out


# --------------------------------------------------------------------------------------
# simulated


class ClumpsSimConfig(ComponentConfig):
    n_train: int = Field(2000, ge=1, description="training images")
    n_val: int = Field(300, ge=1, description="validation images")
    n_test: int = Field(500, ge=0, description="test images")
    seed: int = Field(0, ge=0, description="simulation seed (independent of the run seed)")
    size: int = Field(64, ge=32, le=512, description="frame side in pixels (0.396 arcsec/px; the paper: 200)")
    z_range: tuple[float, float] = Field((0.02, 0.15), description="redshift range")
    seeing_range_arcsec: tuple[float, float] = Field((1.1, 1.7), description="r-band seeing FWHM range (arcsec)")
    zero_clump_fraction: float = Field(0.2, ge=0, le=1, description="fraction of galaxies without clumps")
    mean_clumps: float = Field(3.0, ge=1, description="mean number of clumps of a clumpy galaxy")
    max_clumps: int = Field(10, ge=1, description="most clumps per galaxy")
    flux_ratio_range: tuple[float, float] = Field((0.01, 0.12), description="clump/host r-flux ratio range")
    odd_fraction: float = Field(0.25, ge=0, le=1, description="fraction of clumps that are odd")
    box_scale: float = Field(1.5, gt=0, description="box half-side in units of the clump's observed FWHM")
    star_rate: float = Field(0.6, ge=0, description="mean number of foreground stars per image")
    background_galaxy_rate: float = Field(1.0, ge=0, description="mean number of background galaxies per image")
    nucleus_prob: float = Field(0.3, ge=0, le=1, description="probability of a point-like nucleus")
    depth: float = Field(1.0, gt=0, description="exposure multiplier (1: SDSS single epoch)")
    normalize: NormalizeConfig = Field(
        NormalizeConfig(background="none"),
        description="normalisation; scale 'dataset' divides by the known sky noise per band (same for all splits)")

    @model_validator(mode="after")
    def _check(self):
        try:
            self.sim_config()
        except ValueError as exc:
            raise ValueError(str(exc).replace("SimConfig.", "")) from None
        return self

    def sim_config(self) -> SimConfig:
        return SimConfig(
            size=self.size, z_range=tuple(self.z_range), seeing_range_arcsec=tuple(self.seeing_range_arcsec),
            zero_clump_fraction=self.zero_clump_fraction, mean_clumps=self.mean_clumps, max_clumps=self.max_clumps,
            flux_ratio_range=tuple(self.flux_ratio_range), odd_fraction=self.odd_fraction, box_scale=self.box_scale,
            star_rate=self.star_rate, background_galaxy_rate=self.background_galaxy_rate,
            nucleus_prob=self.nucleus_prob, depth=self.depth)


class ClumpsSimDataset(ImageDataset):
    """Simulated SDSS-like g, r, i frames of clumpy disk galaxies with clump / odd-clump boxes."""

    name = "clumps_sim"
    Config = ClumpsSimConfig
    collate_fn = staticmethod(list_collate)

    def __init__(self, config: ClumpsSimConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        n = {"train": config.n_train, "val": config.n_val, "test": config.n_test, "predict": config.n_test}[split]
        sim_seed = int(np.random.SeedSequence([config.seed, SPLIT_OFFSETS[split]]).generate_state(1)[0])
        try:
            res = simulate_cached(n, config.sim_config(), sim_seed, Path(cache_dir) / "clumps_sim")
        except ValueError as exc:
            raise DataError(f"data (clumps_sim): {exc}") from None
        self._result = res
        band_scale = sky_sigma_nmgy(config.depth)
        self._images = torch.from_numpy(normalize_images(res.images, config.normalize, band_scale=band_scale))
        cl = res.clumps
        boxes = np.stack([np.asarray(cl[c], dtype=np.float32) for c in ("x0", "y0", "x1", "y1")], axis=1) \
            if len(cl) else np.zeros((0, 4), dtype=np.float32)
        image_of = np.asarray(cl["image"], dtype=np.int64)
        self._targets = _boxes_by_image(n, image_of, boxes, np.asarray(cl["label"], dtype=np.int64))
        self._flux_ratio = _values_by_image(n, image_of, np.asarray(cl["flux_ratio"], dtype=np.float32)) \
            if len(cl) else [torch.zeros(0) for _ in range(n)]
        self._masks = torch.from_numpy(np.ascontiguousarray(res.masks, dtype=bool))
        self._wcs_cache: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int):
        boxes, labels = self._targets[index]
        sample = {"image": self._images[index], "boxes": boxes, "labels": labels, "index": index}
        if self.split != "train":  # evaluation extras (see the module docstring)
            sample["mask"] = self._masks[index]
            sample["wcs"] = self.wcs(index)
            sample["box_meta"] = {"flux_ratio": self._flux_ratio[index]}
        return sample

    def box_annotations(self):
        """``(boxes per image, labels per image, (height, width))`` without rendering samples (for check_data)."""
        return [b for b, _ in self._targets], [lab for _, lab in self._targets], (self.config.size, self.config.size)

    def info(self) -> DatasetInfo:
        cat = self._result.catalog
        psf = float(np.median(cat["psf_fwhm_px"])) if len(cat) else 1.4 / PIXEL_SCALE_ARCSEC
        return DatasetInfo(bands=BANDS, classes=CLASSES, class_descriptions=CLASS_DESCRIPTIONS,
                           image_size=self.config.size,
                           extra={"pixel_scale_arcsec": PIXEL_SCALE_ARCSEC, "psf_fwhm_px": psf})

    def catalog(self) -> Table:
        """One row per image: ``id, ra, dec, x, y`` (galaxy centre), physical parameters, ``n_clumps``."""
        return self._result.catalog

    def clumps(self) -> Table:
        """The per-clump truth table (``image`` is the sample index; see :func:`~astrotl_clumps.simulate.simulate`)."""
        return self._result.clumps

    def distractors(self) -> Table:
        """Unlabelled sources per image (``star``, ``nucleus``, ``background_galaxy``)."""
        return self._result.distractors

    def masks(self) -> np.ndarray:
        """Host segmentation maps, bool ``[N, H, W]``."""
        return self._result.masks

    def host_ellipse(self, index: int) -> tuple[float, float, float, float, float]:
        """``(x, y, a, b, theta_deg)`` of the host ellipse of image ``index`` (pixels; theta from +x to +y)."""
        r = self._result.catalog[index]
        return (float(r["x"]), float(r["y"]), float(r["ellipse_a"]), float(r["ellipse_b"]),
                float(r["ellipse_theta_deg"]))

    def wcs(self, index: int):
        """TAN WCS of image ``index`` (0.396"/px, north +y, east -x, centred on the galaxy's made-up RA/Dec)."""
        index = int(index)
        if index not in self._wcs_cache:
            r = self._result.catalog[index]
            self._wcs_cache[index] = make_wcs(r["ra"], r["dec"], r["x"], r["y"])
        return self._wcs_cache[index]

    def raw_images(self) -> np.ndarray:
        """Un-normalised images ``[N, 3, H, W]`` in nanomaggies per pixel."""
        return self._result.images


# --------------------------------------------------------------------------------------
# Galaxy Zoo: Clump Scout


CLUMPSCOUT_COLUMNS = ("local_ids", "label", "x1", "x2", "y1", "y2")


class ClumpScoutConfig(ComponentConfig):
    train_labels: str | None = Field(None, description="aggregated-box CSV of the training split "
                                                       "(e.g. clumpscout_boxes_train.csv)")
    val_labels: str | None = Field(None, description="CSV of the validation split (clumpscout_boxes_valid.csv)")
    test_labels: str | None = Field(None, description="CSV of the test/predict split (default: val_labels)")
    images_dir: str = Field(..., description="folder of the SDSS colour cutouts, one per local_ids")
    image_pattern: str = Field("{local_ids}.png", description="file name of an image, formatted with its row")
    cutout: tuple[int, int, int, int] | None = Field(
        None, description="(left, top, right, bottom) region of each image cut out before use, the boxes already "
                          "referring to it, as the reference loader does with (50, 50, 350, 350); None: whole image")
    crop: int | None = Field(None, ge=16, description="central crop in pixels after the cutout, boxes shifted "
                                                      "with it; None: no crop")
    odd: Literal["keep", "merge", "drop"] = Field(
        "keep", description="odd clumps: keep as class 1, merge into 'clump', or drop them")


def _read_clumpscout(path: Path) -> Table:
    if not path.is_file():
        raise DataError(f"data (clumpscout): labels file '{path}' does not exist; give the aggregated-box CSV "
                        "(clumpscout_boxes_train.csv / _valid.csv) in train_labels / val_labels / test_labels")
    try:
        t = Table.read(path, format="ascii.csv", fast_reader=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise DataError(f"data (clumpscout): cannot read '{path}' as CSV ({exc}); give the aggregated-box CSV") \
            from None
    missing = [c for c in CLUMPSCOUT_COLUMNS if c not in t.colnames]
    if missing:
        raise DataError(f"data (clumpscout): '{path}' has no column {', '.join(missing)}; expected the columns "
                        f"{', '.join(CLUMPSCOUT_COLUMNS)} of the Clump Scout aggregated boxes")
    # a row without a box (empty coordinates) lists an image that has no clump, as the reference
    # loader's NaN rows do
    box = np.stack([_floats(t[c]) for c in ("x1", "x2", "y1", "y2")], axis=1)
    has_box = np.isfinite(box).all(axis=1)
    label = _floats(t["label"])
    bad = has_box & ~np.isin(label, (1.0, 2.0))
    if bad.any():
        raise DataError(f"data (clumpscout): '{path}' has label values "
                        f"{sorted(set(v.item() if not float(v).is_integer() else int(v) for v in label[bad]))}; "
                        "expected 1 (clumpy) or 2 (clumpy, odd)")
    t["_has_box"] = has_box
    return t


def _floats(col) -> np.ndarray:
    """A column as float64 with masked / empty entries as NaN."""
    arr = np.ma.asarray(col)
    if arr.dtype.kind not in "fiub":
        out = np.full(len(arr), np.nan)
        for k, v in enumerate(arr.filled("") if np.ma.is_masked(arr) else arr):
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                pass
        return out
    return np.ma.filled(arr.astype(np.float64), np.nan)


class ClumpScoutDataset(ImageDataset):
    """Galaxy Zoo: Clump Scout aggregated clump boxes on user-supplied SDSS colour cutouts."""

    name = "clumpscout"
    Config = ClumpScoutConfig
    collate_fn = staticmethod(list_collate)

    def __init__(self, config: ClumpScoutConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        key = {"train": "train_labels", "val": "val_labels", "test": "test_labels", "predict": "test_labels"}[split]
        path = getattr(config, key)
        if path is None and key == "test_labels":
            path, key = config.val_labels, "val_labels"
        if path is None:
            raise DataError(f"data (clumpscout): no labels file for the {split} split; set data.{key} to a "
                            "Clump Scout aggregated-box CSV")
        path = Path(path).expanduser()
        t = _read_clumpscout(path)
        if config.odd == "drop":
            t = t[~(np.asarray(t["_has_box"]) & (_floats(t["label"]) == 2))]
        ids = np.asarray(t["local_ids"]).astype(str)
        uniq, first = np.unique(ids, return_index=True)
        uniq = uniq[np.argsort(first)]  # file order
        idx = {u: k for k, u in enumerate(uniq)}
        img_dir = Path(config.images_dir).expanduser()
        rows = {u: t[f] for u, f in zip(ids[np.sort(first)], np.sort(first))}
        files = []
        for u in uniq:
            try:
                files.append(img_dir / config.image_pattern.format(**{c: rows[u][c] for c in t.colnames}))
            except (KeyError, IndexError, ValueError) as exc:
                raise DataError(f"data (clumpscout): image_pattern '{config.image_pattern}' cannot be formatted "
                                f"({exc}); use fields of the labels file, e.g. '{{local_ids}}.png'") from None
        missing = [f for f in files if not f.is_file()]
        if missing:
            shown = ", ".join(f.name for f in missing[:3])
            raise DataError(f"data (clumpscout): {len(missing)} of {len(files)} images listed in {path.name} are "
                            f"missing from {img_dir} (e.g. {shown}); the labels come without images: put the SDSS "
                            f"colour cutouts there as {config.image_pattern} or set images_dir / image_pattern")
        self._files = files
        image = np.array([idx[u] for u in ids], dtype=np.int64)
        # Zooniverse boxes are in continuous PNG coordinates (pixel i spans [i, i+1]); shift by -0.5 to
        # the 0-based pixel-centre convention once, here.
        has_box = np.asarray(t["_has_box"])
        image = image[has_box]
        boxes = np.stack([_floats(t[c])[has_box] for c in ("x1", "y1", "x2", "y2")], axis=1) - 0.5
        boxes = np.column_stack([np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3]),
                                 np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3])])
        labels = _floats(t["label"])[has_box].astype(np.int64) - 1
        if config.odd == "merge":
            labels[:] = 0
        self._raw = _boxes_by_image(len(files), image, boxes, labels)
        self._catalog = Table({
            "id": np.arange(len(files)),
            "local_ids": uniq,
            "image_id": np.array([rows[u]["image_id"] if "image_id" in t.colnames else -1 for u in uniq]),
            "filename": np.array([f.name for f in files]),
            "n_boxes": np.bincount(image, minlength=len(files)),
            "n_odd": np.bincount(image, weights=(labels == 1), minlength=len(files)).astype(np.int64),
        })
        self._catalog.meta["labels_file"] = str(path)
        self._frame_checked = False

    def __len__(self) -> int:
        return len(self._files)

    def _load(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        f = self._files[index]
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if self.config.cutout is not None:
                    im = im.crop(tuple(self.config.cutout))
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"data (clumpscout): cannot read image '{f}' ({exc}); replace it with a valid PNG/JPEG")\
                from None
        # SDSS composites map i -> R, r -> G, g -> B: reverse to the band order (g, r, i)
        return np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))

    def __getitem__(self, index: int):
        img = self._load(index)
        boxes, labels = self._raw[index]
        h, w = img.shape[1:]
        crop = self.config.crop
        if crop is not None and crop < min(h, w):
            oy, ox = (h - crop) // 2, (w - crop) // 2
            img = img[:, oy : oy + crop, ox : ox + crop]
            boxes = boxes - torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            keep = (cx >= -0.5) & (cx <= crop - 0.5) & (cy >= -0.5) & (cy <= crop - 0.5)
            boxes, labels = boxes[keep], labels[keep]
            h, w = crop, crop
        if not self._frame_checked and len(boxes):
            self._frame_checked = True
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            out = ((cx < -0.5) | (cx > w - 0.5) | (cy < -0.5) | (cy > h - 0.5)).float().mean().item()
            if out > 0.2:
                warnings.warn(f"clumpscout: {out:.0%} of the boxes of {self._files[index].name} lie outside its "
                              f"{w} x {h} frame; the labels may refer to another frame (check cutout / crop)",
                              AstrotlWarning, stacklevel=2)
        boxes = boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes wholly outside the frame
        return {"image": torch.from_numpy(np.ascontiguousarray(img)), "boxes": boxes[ok], "labels": labels[ok],
                "index": index}

    def info(self) -> DatasetInfo:
        merged = self.config.odd != "keep"
        return DatasetInfo(bands=BANDS, classes=CLASSES[:1] if merged else CLASSES,
                           class_descriptions=("clump (volunteer consensus box)",) if merged else (
                               "clump (volunteer consensus box)", "odd clump (volunteer consensus box)"),
                           image_size=self.config.crop)

    def catalog(self) -> Table:
        """One row per image: ``id, local_ids, image_id, filename, n_boxes, n_odd``."""
        return self._catalog
