"""A folder of PNG / JPEG / FITS images plus a labels table: :class:`ImageFolderDataset` (``image_folder``).

The labels table (CSV, ECSV or FITS) lists one image per row, either by a file column
(``file_col``, paths relative to ``root``) or by an id and a pattern (``id_col`` +
``file_pattern: "images/{id}.jpeg"``). Images are read once, centre-cropped (``crop``) and
resized (``resize``), and the whole stack is cached in ``cache_dir`` as a ``.npy`` (``uint8`` for
PNG/JPEG, ``float32`` for FITS) keyed by the table, the files and the preprocessing, so later
runs and the other splits memory-map it instead of decoding thousands of files again.

FITS files give one channel per 2-D image: with ``bands`` the HDUs are found by EXTNAME (the
one-file-per-candidate multi-extension cutouts of :mod:`astrotl.mef`), otherwise ``hdu`` (a 2-D
image, or a ``[C, H, W]`` cube).

YAML (the Galaxy Zoo 1 development set)::

    data:
      name: image_folder
      root: ${ASTROTL_SHARED_DATA:-../shared/data}/gz1_dev
      labels: labels.csv
      id_col: OBJID
      file_pattern: "images/{id}.jpeg"
      label_col: CLASS
      crop: 128          # the galaxy sits at the centre of a 423 x 423 frame
      resize: 64
      split_fractions: [0.7, 0.15, 0.15]   # seeded, stratified by class

Normalisation (``pixel_norm``), for PNG/JPEG (after ``x / 255``) and FITS alike:

``auto`` (default)
    the normalisation recorded with the backbone's weights when they are an astrotl export
    (``weights: run:<dir>``: pre-training and fine-tuning then see the same pixel statistics), else
    :data:`DEFAULT_PIXEL_NORM` for PNG/JPEG and the ``normalize`` block for FITS;
``image``
    per-image standardisation, ``(x - mean) / std`` over all bands of the image (keeps colours);
``robust``
    per image, ``(x - median) / (1.4826 MAD)``; ``asinh``: ``asinh(robust / normalize.softening)``;
``dataset``
    PNG/JPEG: per-channel mean and standard deviation of the training split; FITS: the ``normalize`` block;
``imagenet`` / ``unit``
    PNG/JPEG: ImageNet's channel mean and standard deviation / ``x / 255`` only (FITS: the ``normalize`` block).

The default for PNG/JPEG was chosen by measurement on the Galaxy Zoo 1 development set (docs/recipes.md).

Splits: ``split_col`` (values train/val/test), else seeded fractions stratified by class
(``split_seed``, independent of the run seed). ``predict`` is every row.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator

from ..catalogs import check_bands_once, check_unique_ids, read_catalog, require_columns, unlisted_label_report
from ..data import NormalizeConfig, normalize_images, per_image_normalise, robust_band_scale
from ..errors import DataError
from ..interfaces import DatasetInfo, ImageDataset
from ..io import atomic_path
from .common import (LabelSplitConfig, assign_labels, assign_targets, cache_key, class_descriptions, file_stamp,
                     group_ids, restrict_classes, select_split, split_assignment)

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
#: What ``pixel_norm: auto`` means for PNG/JPEG images without recorded weights normalisation (docs/recipes.md).
DEFAULT_PIXEL_NORM = "dataset"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderConfig(LabelSplitConfig):
    """Options of :class:`ImageFolderDataset`."""

    root: str = Field(..., description="folder holding the images (and, by default, the labels table)")
    labels: str = Field("labels.csv", description="labels table (CSV/ECSV/FITS), relative to root unless absolute")
    file_col: str | None = Field(None, description="column with image paths relative to root")
    id_col: str | None = Field(None, description="id column; with file_pattern gives the image path")
    file_pattern: str = Field("{id}", description="image path from the id, e.g. 'images/{id}.jpeg'")
    label_col: str | None = Field("label", description="column with the labels (None: unlabelled)")
    extra_columns: list[str] = Field(default_factory=list, description="label-table columns to carry into catalog()")
    color: Literal["rgb", "grayscale"] = Field("rgb", description="PNG/JPEG: 3 channels or 1")
    bands: list[str] | None = Field(
        None, description="channel names (PNG/JPEG default R,G,B or L); for FITS the EXTNAME of each band's HDU")
    hdu: str | int | None = Field(None, description="FITS without bands: the HDU (default first 2-D image or cube)")
    crop: int | None = Field(None, ge=1, description="centre crop to this side (px) before resizing")
    resize: int | None = Field(None, ge=1, description="resize to this side (px) after cropping")
    pixel_norm: Literal["auto", "image", "robust", "asinh", "dataset", "imagenet", "unit"] = Field(
        "auto", description="auto: what the backbone's astrotl weights were trained with, else the default; image: "
                            "per-image standardisation; robust: per-image median/MAD; asinh: asinh of robust; dataset: "
                            "training-split channel mean/std (FITS: the normalize block); imagenet; unit (x/255)")
    normalize: NormalizeConfig = Field(NormalizeConfig(), description="FITS images with pixel_norm auto/dataset: "
                                                                      "background, scale and stretch")
    max_images: int | None = Field(None, ge=1, description="use only the first N rows of the table (quick tests)")
    cache: bool = Field(True, description="cache the decoded, cropped, resized stack in cache_dir")
    workers: int = Field(4, ge=1, description="threads decoding images when the cache is built")

    @model_validator(mode="after")
    def _check(self):
        if self.bands is not None:
            check_bands_once(self.bands, "bands")
        if self.file_col is None and self.id_col is None:
            raise ValueError("set file_col (image paths) or id_col with file_pattern (e.g. 'images/{id}.jpeg')")
        if self.file_col is None and "{id}" not in self.file_pattern:
            raise ValueError(f"file_pattern must contain '{{id}}', got {self.file_pattern!r}")
        return self


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    return "unknown"


def _centre_crop(arr: np.ndarray, crop: int | None, path: Path) -> np.ndarray:
    """Centre crop of ``[C, H, W]``."""
    if crop is None:
        return arr
    h, w = arr.shape[-2:]
    if crop > h or crop > w:
        raise DataError(f"image '{path}' is {w} x {h} px, smaller than data.crop={crop}; lower crop")
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return arr[..., y0:y0 + crop, x0:x0 + crop]


class _Loader:
    """Reads one image file into ``[C, H, W]`` after crop and resize (thread-safe, no shared state)."""

    def __init__(self, cfg: ImageFolderConfig):
        self.cfg = cfg

    def raster(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        c = self.cfg
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if c.color == "rgb" else "L")
                w, h = im.size
                if c.crop is not None:
                    if c.crop > w or c.crop > h:
                        raise DataError(f"image '{path}' is {w} x {h} px, smaller than data.crop={c.crop}; lower crop")
                    x0, y0 = (w - c.crop) // 2, (h - c.crop) // 2
                    im = im.crop((x0, y0, x0 + c.crop, y0 + c.crop))
                if c.resize is not None and im.size != (c.resize, c.resize):
                    im = im.resize((c.resize, c.resize), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image '{path}' ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            f"replace the file or remove its row from the labels table") from None
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))

    def fits(self, path: Path) -> np.ndarray:
        from .. import fitsio

        c = self.cfg
        hdul = fitsio.open_fits(path, band=path.name)
        try:
            if c.bands:
                names = [h.name.upper() for h in hdul]
                planes = []
                for b in c.bands:
                    if b.upper() not in names:
                        raise DataError(f"FITS file '{path}' has no HDU named '{b}' (HDUs: {names}); make data.bands "
                                        f"match the EXTNAMEs of the band images")
                    planes.append(np.asarray(hdul[names.index(b.upper())].data, dtype=np.float32))
                shapes = {p.shape for p in planes}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise DataError(f"FITS file '{path}': band HDUs {list(c.bands)} are not 2-D images of one shape "
                                    f"({sorted(shapes)}); export the bands on a common grid")
                arr = np.stack(planes)
            else:
                idx = fitsio.select_hdu(hdul, c.hdu, path=path, band=path.name)
                data = hdul[idx].data
                if data is None:
                    raise DataError(f"FITS file '{path}' HDU {idx} has no data; set data.hdu to an image HDU")
                arr = np.asarray(data, dtype=np.float32)
                arr = arr[None] if arr.ndim == 2 else arr
                if arr.ndim != 3:
                    raise DataError(f"FITS file '{path}' HDU {idx} is {arr.ndim}-D; give 2-D images or [C, H, W] cubes")
        finally:
            hdul.close()
        arr = _centre_crop(arr, c.crop, path)
        if c.resize is not None and arr.shape[-2:] != (c.resize, c.resize):
            t = torch.from_numpy(np.nan_to_num(np.ascontiguousarray(arr)))[None]
            arr = torch.nn.functional.interpolate(t, size=(c.resize, c.resize), mode="bilinear", antialias=True,
                                                  align_corners=False)[0].numpy()
        return np.ascontiguousarray(arr, dtype=np.float32)

    def __call__(self, path: Path) -> np.ndarray:
        return self.fits(path) if _kind(path) == "fits" else self.raster(path)


class ImageFolderDataset(ImageDataset):
    """PNG / JPEG / FITS images listed in a labels table (centre crop, resize, cached stack, seeded splits)."""

    name = "image_folder"
    Config = ImageFolderConfig

    def __init__(self, config: ImageFolderConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        c = config
        root = Path(c.root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder '{root}' does not exist; check data.root (e.g. set ASTROTL_SHARED_DATA)")
        labels_path = Path(c.labels).expanduser()
        labels_path = labels_path if labels_path.is_absolute() else root / labels_path
        where = f"labels table '{labels_path}'"
        fmt = "csv" if labels_path.suffix.lower() in (".csv", ".txt") else "auto"
        table = read_catalog(labels_path, fmt)
        if c.max_images is not None:
            table = table[: c.max_images]
        if len(table) == 0:
            raise DataError(f"{where} has no rows; list one image per row")
        if c.file_col is not None:
            require_columns(table, [c.file_col], where=where, key="file_col")
            files = [root / str(v).strip() for v in table[c.file_col]]
        else:
            require_columns(table, [c.id_col], where=where, key="id_col")
            files = [root / c.file_pattern.format(id=str(v).strip()) for v in table[c.id_col]]
        if c.id_col is not None:
            check_unique_ids(table, c.id_col, where=where)
        require_columns(table, c.extra_columns, where=where, key="extra_columns")
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(files)} images listed in {where} are missing (first: "
                            f"'{missing[0]}'); check data.root, file_col/file_pattern, or remove those rows")
        kinds = {_kind(f) for f in files}
        if "unknown" in kinds:
            bad = next(f for f in files if _kind(f) == "unknown")
            raise DataError(f"'{bad}' is not a PNG/JPEG/FITS file (by its suffix); image_folder reads "
                            f"{', '.join(RASTER_SUFFIXES + FITS_SUFFIXES)}")
        if len(kinds) > 1:
            raise DataError(f"{where} mixes FITS and PNG/JPEG images; use one kind per data set")
        self.kind = kinds.pop()
        if self.kind == "raster":
            n_ch = 3 if c.color == "rgb" else 1
            default = ("R", "G", "B") if n_ch == 3 else ("L",)
            if c.bands is not None and len(c.bands) != n_ch:
                raise DataError(f"data.bands lists {len(c.bands)} bands {c.bands} but color: {c.color} images have "
                                f"{n_ch} channel(s); give {n_ch} names")
            self.bands = tuple(c.bands) if c.bands else default
        self._files = files
        self._table = table
        # soft labels (target_cols / votes_cols): label_col is then optional; its default 'label' is not required
        # (a resolved config repeats the default, so a missing default column is ignored too)
        soft = c.target_cols is not None or c.votes_cols is not None
        default_label = type(c).model_fields["label_col"].default
        unset = "label_col" not in c.model_fields_set or (c.label_col == default_label and
                                                           default_label not in table.colnames)
        label_cfg = c.model_copy(update={"label_col": None}) if soft and unset else c
        labels, classes, raw = assign_labels(table, label_cfg, where=where)
        self._label_report = unlisted_label_report(raw, labels, classes, label_col=label_cfg.label_col,
                                                   class_map=c.class_map, keep_unlabelled=c.keep_unlabelled, where=where)
        self.classes, self._raw_labels = classes, raw
        target_set = assign_targets(table, c, where=where, ids=np.asarray(table[c.id_col]) if c.id_col else None)
        if target_set is not None:
            # rows without targets are unlabelled; without label_col the targets' argmax stratifies the split
            labels = np.where(target_set.labelled, labels if classes is not None else target_set.labels, -1)
        labelled = classes is not None or target_set is not None
        assignment = split_assignment(len(table), labels, c, table, where=where)
        labels, classes = restrict_classes(labels, classes, c, where=where)
        self.classes = classes
        self._rows = select_split(split, assignment, labels, c.keep_unlabelled, labelled)
        self._labels = labels[self._rows]
        self._target_names = target_set.names if target_set is not None else None
        self._targets = target_set.values[self._rows] if target_set is not None else None
        self._votes = target_set.votes[self._rows] if target_set is not None and target_set.votes is not None else None
        all_groups = group_ids(table, c, where=where)
        self._groups = all_groups[self._rows] if all_groups is not None else None
        if self._groups is None:
            self.groups = None  # no group_col: no groups() (the engine then counts samples, not objects)
        self._stack = self._load_stack()
        if self.kind == "fits":
            self.bands = tuple(c.bands) if c.bands else tuple(f"band{i}" for i in range(self._stack.shape[1]))
        train = select_split("train", assignment, labels, c.keep_unlabelled, labelled)
        train = train if len(train) else np.arange(len(table))
        self._norm = self._normalisation(train)

    # -- normalisation -----------------------------------------------------------------------------
    @classmethod
    def adopt_normalisation(cls, config: ImageFolderConfig, recorded: dict[str, Any]) -> ImageFolderConfig:
        """``config`` with ``pixel_norm: auto`` replaced by the normalisation recorded with the weights.

        Called through :func:`astrotl.data.adopt_weights_normalisation`; an explicit ``pixel_norm`` is kept.
        A recorded ``normalize`` block (FITS pre-training) is adopted when the task file does not set one.
        """
        if config.pixel_norm != "auto":
            return config
        update: dict[str, Any] = {}
        method = recorded.get("pixel_norm")
        if method in ("image", "robust", "asinh", "dataset", "unit") or (method == "imagenet" and config.color == "rgb"):
            update["pixel_norm"] = method
        block = recorded.get("normalize")
        if isinstance(block, dict) and "normalize" not in config.model_fields_set:
            try:
                update["normalize"] = NormalizeConfig.model_validate(block)
            except ValueError:
                pass
        if update:
            log.info("image_folder: normalisation from the backbone's weights: %s", update)
        return config.model_copy(update=update) if update else config

    @property
    def pixel_norm(self) -> str:
        """The normalisation in effect: a ``pixel_norm`` value, or ``normalize`` (FITS: the ``normalize`` block)."""
        p = self.config.pixel_norm
        if self.kind == "fits":
            return p if p in ("image", "robust", "asinh") else "normalize"
        return DEFAULT_PIXEL_NORM if p == "auto" else p

    # -- loading -----------------------------------------------------------------------------------
    def _load_stack(self) -> np.ndarray:
        c = self.config
        stamps = [file_stamp(f) for f in self._files]
        key = cache_key("image_folder", stamps, c.color, c.bands, c.hdu, c.crop, c.resize, self.kind)
        path = self.cache_dir / "image_folder" / f"stack_{key}.npy"
        if c.cache and path.is_file():
            try:
                stack = np.load(path, mmap_mode="r")
                if stack.shape[0] == len(self._files):
                    return stack
            except (OSError, ValueError):  # unreadable/corrupt cache: rebuild
                log.warning("ignoring unreadable cache file %s", path)
        loader = _Loader(c)
        first = loader(self._files[0])
        dtype = np.uint8 if self.kind == "raster" else np.float32
        shape = (len(self._files), *first.shape)
        log.info("image_folder: reading %d images into a %s stack %s (cached at %s)", len(self._files),
                 np.dtype(dtype).name, list(shape[1:]), path if c.cache else "-")

        def fill(arr):
            def one(i):
                img = loader(self._files[i])
                if img.shape != first.shape:
                    raise DataError(f"image '{self._files[i]}' gives shape {list(img.shape)}, '{self._files[0]}' gives "
                                    f"{list(first.shape)}; set data.crop and/or data.resize so all images match")
                arr[i] = img
            with ThreadPoolExecutor(max_workers=c.workers) as pool:
                list(pool.map(one, range(len(self._files))))

        if not c.cache:
            arr = np.empty(shape, dtype=dtype)
            fill(arr)
            return arr
        with atomic_path(path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(arr)
            arr.flush()
            del arr
        return np.load(path, mmap_mode="r")

    def _normalisation(self, train: np.ndarray) -> dict[str, Any]:
        c = self.config
        method = self.pixel_norm
        if method in ("image", "robust", "asinh"):
            return {"method": method}
        if self.kind == "fits":
            scale = None
            if c.normalize.scale == "dataset":
                pick = np.sort(np.random.default_rng(c.split_seed).permutation(train)[:2000])
                scale = robust_band_scale(np.asarray(self._stack[pick]))
            return {"method": method, "band_scale": scale}
        if method == "unit":
            mean, std = np.zeros(len(self.bands)), np.ones(len(self.bands))
        elif method == "imagenet":
            if len(self.bands) != 3:
                raise DataError("pixel_norm: imagenet needs 3-channel (rgb) images; use dataset or unit")
            mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        else:
            pick = np.sort(np.random.default_rng(c.split_seed).permutation(train)[:4000])
            x = np.asarray(self._stack[pick], dtype=np.float32) / 255.0
            mean = x.mean(axis=(0, 2, 3))
            std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
        return {"method": method, "mean": torch.as_tensor(mean, dtype=torch.float32)[:, None, None],
                "std": torch.as_tensor(std, dtype=torch.float32)[:, None, None]}

    def normalisation(self) -> dict[str, Any]:
        """The normalisation in effect, as recorded with exported weights (``pixel_norm`` and its parameters)."""
        out: dict[str, Any] = {"pixel_norm": self.pixel_norm if self.pixel_norm != "normalize" else "dataset"}
        if self.pixel_norm in ("dataset", "imagenet", "unit"):
            out.update(mean=[float(v) for v in self._norm["mean"].flatten()],
                       std=[float(v) for v in self._norm["std"].flatten()], space="x / 255")
        elif self.pixel_norm == "normalize":
            out["normalize"] = self.config.normalize.model_dump(mode="json")
        elif self.pixel_norm == "asinh":
            out["softening"] = float(self.config.normalize.softening)
        return out

    # -- Dataset API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = np.asarray(self._stack[int(self._rows[index])])
        if self._norm["method"] in ("image", "robust", "asinh"):
            x = torch.from_numpy(raw.astype(np.float32))[None]
            image = per_image_normalise(x / 255.0 if self.kind == "raster" else x, self._norm["method"],
                                        self.config.normalize.softening)[0]
        elif self.kind == "raster":
            image = (torch.from_numpy(raw.astype(np.float32)) / 255.0 - self._norm["mean"]) / self._norm["std"]
        else:
            image = torch.from_numpy(normalize_images(raw[None], self.config.normalize, self._norm["band_scale"])[0])
        sample: dict[str, Any] = {"image": image, "index": index}
        if self.classes is not None:
            sample["label"] = int(self._labels[index])
        if self._targets is not None:
            sample["target"] = torch.from_numpy(self._targets[index].copy())
            if self._votes is not None:
                sample["votes"] = torch.from_numpy(self._votes[index].copy())
        return sample

    def info(self) -> DatasetInfo:
        size = self._stack.shape[-1] if self._stack.shape[-1] == self._stack.shape[-2] else None
        return DatasetInfo(bands=self.bands, classes=tuple(self.classes) if self.classes else None,
                           class_descriptions=class_descriptions(self.config, self.classes),
                           targets=self._target_names, image_size=size,
                           extra={"root": str(self.config.root), "kind": self.kind,
                                  "normalisation": self.normalisation()})

    def labels(self) -> np.ndarray:
        """Class index per sample (-1: unlabelled); for soft labels without ``label_col``, the targets' argmax."""
        return self._labels

    def targets(self) -> np.ndarray | None:
        """Soft labels ``float32 [N, K]`` of this split (NaN rows: unlabelled); ``None`` without target columns."""
        return self._targets

    def votes(self) -> np.ndarray | None:
        """Vote counts ``float32 [N, K]`` (``votes_cols`` or ``round(target * count_col)``), else ``None``."""
        return self._votes

    def groups(self) -> np.ndarray:
        """The ``group_col`` value (text) of each sample; the attribute is ``None`` without ``group_col``."""
        return self._groups

    def raw_images(self) -> np.ndarray:
        """The cached (cropped, resized, not normalised) images of this split, ``[N, C, H, W]``."""
        return np.asarray(self._stack[self._rows])

    def catalog(self) -> Table:
        """``id`` (id column or file name), ``file``, ``label_raw`` and ``class`` (when labelled), extra columns."""
        c = self.config
        rows = self._rows
        t = Table(meta={"root": str(c.root), "labels": str(c.labels)})
        if self._label_report:
            t.meta["label_report"] = dict(self._label_report)
        root = Path(c.root).expanduser()
        names = np.array([str(self._files[r].relative_to(root)) for r in rows], dtype=str) if len(rows) else \
            np.zeros(0, dtype=str)
        t["id"] = np.asarray(self._table[c.id_col])[rows] if c.id_col else names
        t["file"] = names
        if self.classes is not None:
            t["label_raw"] = np.array([str(self._raw_labels[r]) for r in rows], dtype=str) if len(rows) else \
                np.zeros(0, dtype=str)
            t["class"] = np.array([self.classes[i] if i >= 0 else "" for i in self._labels], dtype=str) if len(rows) \
                else np.zeros(0, dtype=str)
        for col in c.extra_columns:
            t[col] = self._table[col][rows]
        return t
