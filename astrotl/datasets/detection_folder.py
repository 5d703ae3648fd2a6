"""Images plus a table of boxes: :class:`ImageBoxesDataset` (``image_boxes``), the generic detection data set.

Two tables describe the data (CSV, ECSV or FITS, relative to ``root`` unless absolute):

* the **images table** (``images``, default ``images.csv``): one row per image, by a file column
  (``file_col``) or an id and a pattern (``id_col`` + ``file_pattern``), as in ``image_folder``;
  images without any box are kept (they teach the detector what empty sky looks like);
* the **boxes table** (``boxes``, default ``boxes.csv``): one row per box, naming its image in
  ``image_col`` (the image's ``id_col`` value, else its ``file_col`` value), the box in ``box_cols``
  and its class in ``label_col``.

Boxes are pixel edges, 0-based: a box covering the pixels 3, 4 and 5 in x has ``x0 = 3, x1 = 6``
(``box_format: xywh`` gives ``x0, y0, width, height`` instead; ``pixel_origin: 1`` converts 1-based
tables, e.g. from DS9, once on reading). The images are read by ``image_folder``'s loaders (PNG / JPEG /
FITS, centre ``crop``, ``resize``, a cached stack); the boxes move with the crop (shifted, clipped to
the crop, dropped when less than ``min_visible`` of their area remains) and the resize (scaled).

Splits are by image: ``split_col`` in the images table, else seeded ``split_fractions`` (``split_seed``),
with ``group_col`` keeping all images of one object in one split.

YAML::

    data:
      name: image_boxes
      root: data/clumps
      images: images.csv
      id_col: image_id
      file_pattern: "images/{id}.png"
      boxes: boxes.csv          # columns image_id, x0, y0, x1, y1, class
      image_col: image_id
      label_col: class          # null: every box is one class, "object"
      color: grayscale
      split_fractions: [0.7, 0.15, 0.15]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, create_model, model_validator

from ..catalogs import read_catalog, require_columns
from ..data import list_collate
from ..errors import DataError
from ..interfaces import DatasetInfo, ImageDataset
from .common import LabelSplitConfig, assign_labels, class_descriptions, label_text, split_assignment
from .image_folder import ImageFolderConfig, ImageFolderDataset, _kind

log = logging.getLogger(__name__)

#: Options shared with ``image_folder`` (same names, same meaning): how images are found and read.
IMAGE_OPTIONS = ("root", "file_col", "id_col", "file_pattern", "extra_columns", "color", "bands", "hdu", "crop",
                 "resize", "pixel_norm", "normalize", "max_images", "cache", "workers")

_ImageOptions = create_model(
    "_ImageOptions", __base__=LabelSplitConfig,
    **{k: (ImageFolderConfig.model_fields[k].annotation, ImageFolderConfig.model_fields[k]) for k in IMAGE_OPTIONS})


class ImageBoxesConfig(_ImageOptions):
    """Options of :class:`ImageBoxesDataset` (image options as in ``image_folder``)."""

    images: str = Field("images.csv", description="images table (CSV/ECSV/FITS), one row per image, relative to root")
    boxes: str = Field("boxes.csv", description="boxes table, one row per box, relative to root")
    image_col: str = Field("image_id", description="boxes-table column naming each box's image (its id_col value, "
                                                    "else its file_col value)")
    box_cols: tuple[str, str, str, str] = Field(("x0", "y0", "x1", "y1"), description="boxes-table columns of the box")
    box_format: Literal["xyxy", "xywh"] = Field("xyxy", description="xyxy: x0, y0, x1, y1 pixel edges; xywh: x0, y0, "
                                                                     "width, height")
    pixel_origin: Literal[0, 1] = Field(0, description="1 for 1-based box tables (DS9, IRAF): converted once on reading")
    label_col: str | None = Field("class", description="boxes-table column with each box's class (null, or the "
                                                        "default 'class' absent from the table: one class 'object')")
    clip_boxes: bool = Field(False, description="clip boxes that extend beyond their image (default: an error)")
    min_visible: float = Field(0.5, gt=0, le=1, description="after a crop, keep a box if at least this fraction of "
                                                            "its area is inside")

    @model_validator(mode="after")
    def _check_images(self):
        if self.file_col is None and self.id_col is None:
            raise ValueError("set file_col (image paths) or id_col with file_pattern (e.g. 'images/{id}.png')")
        if self.file_col is None and "{id}" not in self.file_pattern:
            raise ValueError(f"file_pattern must contain '{{id}}', got {self.file_pattern!r}")
        return self


def _table_path(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else root / p


def _read(path: Path, what: str) -> Table:
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist; check data.root and data.{what.split()[0]}")
    return read_catalog(path, "csv" if path.suffix.lower() in (".csv", ".txt") else "auto")


def original_size(path: Path, cfg: ImageBoxesConfig) -> tuple[int, int]:
    """``(height, width)`` of an image file before any crop, read from its header."""
    if _kind(path) == "fits":
        from .. import fitsio

        hdul = fitsio.open_fits(path, band=path.name)
        try:
            if cfg.bands:
                names = [h.name.upper() for h in hdul]
                idx = names.index(cfg.bands[0].upper()) if cfg.bands[0].upper() in names else 0
            else:
                idx = fitsio.select_hdu(hdul, cfg.hdu, path=path, band=path.name)
            shape = hdul[idx].shape
        finally:
            hdul.close()
        return int(shape[-2]), int(shape[-1])
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        w, h = im.size
    return int(h), int(w)


class ImageBoxesDataset(ImageDataset):
    """Images (PNG / JPEG / FITS) with a table of boxes: detection data with crop/resize that move the boxes."""

    name = "image_boxes"
    Config = ImageBoxesConfig
    collate_fn = staticmethod(list_collate)

    def __init__(self, config: ImageBoxesConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        c = config
        root = Path(c.root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder '{root}' does not exist; check data.root")
        images_path = _table_path(root, c.images)
        table = _read(images_path, "images table")
        if c.max_images is not None:
            table = table[: c.max_images]
        # the images: image_folder reads, crops, resizes, caches and normalises them (every row, in table order)
        inner = {k: getattr(c, k) for k in IMAGE_OPTIONS}
        inner.update(labels=str(images_path), label_col=None, split_col=c.split_col, group_col=c.group_col,
                     split_fractions=c.split_fractions, split_seed=c.split_seed, stratify=False)
        self._images = ImageFolderDataset(ImageFolderConfig(**inner), split="predict", seed=seed, cache_dir=cache_dir)
        self._table = table
        where_img = f"images table '{images_path}'"
        key_col = c.id_col or c.file_col
        keys = label_text(table[key_col])
        # the boxes
        boxes_path = _table_path(root, c.boxes)
        where = f"boxes table '{boxes_path}'"
        btable = _read(boxes_path, "boxes table")
        require_columns(btable, [c.image_col, *c.box_cols], where=where, key="image_col/box_cols")
        label_cfg = c
        if c.label_col is not None and c.label_col not in btable.colnames and "label_col" not in c.model_fields_set:
            label_cfg = c.model_copy(update={"label_col": None})
        if label_cfg.label_col is None:
            classes = list(c.classes) if c.classes else ["object"]
            if len(classes) != 1:
                raise DataError(f"{where}: data.classes lists {classes} but there is no class column; set data.label_col")
            box_labels = np.zeros(len(btable), dtype=np.int64)
        else:
            box_labels, classes, _ = assign_labels(btable, label_cfg, where=where)
            dropped = int((box_labels < 0).sum())
            if dropped:
                log.info("image_boxes: %d boxes have no class among %s and are ignored", dropped, classes)
        self.classes = list(classes)
        raw = np.stack([self._numeric(btable, col, where) for col in c.box_cols], axis=1) - float(c.pixel_origin)
        if c.box_format == "xywh":
            raw[:, 2:] += raw[:, :2]
            raw[:, 2:] += float(c.pixel_origin)  # widths do not shift with the origin
        image_of = {k: i for i, k in enumerate(keys)}
        box_keys = label_text(btable[c.image_col])
        unknown = [k for k in box_keys if k not in image_of]
        if unknown:
            raise DataError(f"{where}: {len(unknown)} boxes name images not in the {where_img} (first: "
                            f"'{unknown[0]}' in column '{c.image_col}'); image_col must hold the images' "
                            f"{key_col} values")
        box_image = np.array([image_of[k] for k in box_keys], dtype=np.int64)
        self._boxes_per_image = self._place_boxes(raw, box_labels, box_image, keys, root, where)
        # splits by image (the same assignment image_folder made, so its training-set normalisation matches)
        assignment = split_assignment(len(table), np.full(len(table), -1), c.model_copy(update={"stratify": False}),
                                      table, where=where_img)
        self._rows = np.arange(len(table)) if split == "predict" else np.flatnonzero(assignment == split)
        if c.group_col is None:
            self.groups = None  # no group_col: no groups() (the engine then counts images, not objects)

    @staticmethod
    def _numeric(table: Table, col: str, where: str) -> np.ndarray:
        try:
            values = np.ma.asarray(table[col]).astype(float)
        except (TypeError, ValueError):
            raise DataError(f"{where}: column '{col}' is not numeric; box_cols must name the pixel columns") from None
        return np.ma.filled(values, np.nan)

    def _place_boxes(self, raw: np.ndarray, labels: np.ndarray, image: np.ndarray, keys, root: Path,
                     where: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Boxes in the coordinates of the cropped, resized images, one ``(boxes, labels)`` per image."""
        c = self.config
        out_h, out_w = self._images._stack.shape[-2:]
        files = self._images._files
        need = c.crop is not None or c.resize is not None
        result = []
        for i in range(len(keys)):
            sel = np.flatnonzero((image == i) & (labels >= 0))
            b, lab = raw[sel].copy(), labels[sel]
            h0, w0 = (original_size(files[i], c) if need else (out_h, out_w)) if len(sel) else (out_h, out_w)
            for j, row in enumerate(sel):
                x0, y0, x1, y1 = b[j]
                name = f"{where} row {row} (image {keys[i]})"
                if not np.all(np.isfinite(b[j])):
                    raise DataError(f"{name} has a missing or non-numeric box coordinate; fill or remove the row")
                if x1 <= x0 or y1 <= y0:
                    raise DataError(f"{name}: box x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g} has x1 <= x0 or y1 <= y0; "
                                    f"give x0 < x1, y0 < y1 (box_format: xywh for width/height columns)")
                if (x0 < 0 or y0 < 0 or x1 > w0 or y1 > h0) and not c.clip_boxes:
                    raise DataError(f"{name}: box x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g} extends beyond the "
                                    f"{w0} x {h0} px image (0-based pixel edges); fix the box, set pixel_origin: 1 "
                                    f"for a 1-based table, or clip_boxes: true")
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            side_w, side_h = (c.crop, c.crop) if c.crop is not None else (w0, h0)
            if c.crop is not None:
                b[:, [0, 2]] -= (w0 - c.crop) // 2
                b[:, [1, 3]] -= (h0 - c.crop) // 2
            b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, side_w)
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, side_h)
            visible = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            if c.crop is not None:
                keep &= visible >= c.min_visible * area
            b, lab = b[keep], lab[keep]
            b[:, [0, 2]] *= out_w / side_w
            b[:, [1, 3]] *= out_h / side_h
            result.append((b.astype(np.float32), lab.astype(np.int64)))
        return result

    # -- Dataset API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self._rows[index])
        boxes, labels = self._boxes_per_image[row]
        return {"image": self._images[row]["image"], "index": index,
                "boxes": torch.from_numpy(boxes.copy()).reshape(-1, 4), "labels": torch.from_numpy(labels.copy())}

    def box_annotations(self) -> tuple[list[np.ndarray], list[np.ndarray], tuple[int, int]]:
        """Boxes and labels of every sample of this split without reading images, and the image ``(H, W)``."""
        picked = [self._boxes_per_image[int(r)] for r in self._rows]
        return [b for b, _ in picked], [lab for _, lab in picked], tuple(int(v) for v in self._images._stack.shape[-2:])

    def info(self) -> DatasetInfo:
        inner = self._images.info()
        n_boxes = int(sum(len(self._boxes_per_image[int(r)][0]) for r in self._rows))
        return DatasetInfo(bands=inner.bands, classes=tuple(self.classes),
                           class_descriptions=class_descriptions(self.config, self.classes),
                           image_size=inner.image_size,
                           extra={**inner.extra, "n_boxes": n_boxes, "boxes": str(self.config.boxes)})

    def groups(self) -> np.ndarray | None:
        """The ``group_col`` value of each image (``None`` without ``group_col``)."""
        g = self._images.groups() if callable(getattr(self._images, "groups", None)) else None
        return None if g is None else np.asarray(g)[self._rows]

    def raw_images(self) -> np.ndarray:
        """The cached (cropped, resized, not normalised) images of this split, ``[N, C, H, W]``."""
        return np.asarray(self._images._stack[self._rows])

    def catalog(self) -> Table:
        """``id``, ``file``, ``n_boxes`` (after crop) and the extra columns, one row per image of the split."""
        full = self._images.catalog()
        t = full[self._rows] if len(self._rows) else full[:0]
        t["n_boxes"] = np.array([len(self._boxes_per_image[int(r)][0]) for r in self._rows], dtype=np.int64)
        t.meta.update(images=str(self.config.images), boxes=str(self.config.boxes))
        return t
