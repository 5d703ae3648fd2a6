"""Cutouts around catalogue positions in FITS mosaics: :class:`CatalogCutoutDataset` (``catalog_cutouts``).

One FITS mosaic per band (the HDU chosen by name or index, memory-mapped) plus a source
catalogue (ECSV / FITS / CSV with pixel ``x``, ``y`` or sky ``ra``, ``dec``; LEGUS ``.tab``;
PHANGS-HST cluster catalogues). Each sample is a ``[C, size, size]`` stamp cut (with
:class:`astropy.nddata.Cutout2D`'s rule, by plain slicing of the memory-mapped bands, see
:mod:`astrotl.fitsio`) when the sample is asked for, so memory does not grow with the mosaic or
the catalogue; a DataLoader asking for a whole batch (``__getitems__``) gets its stamps cut and
normalised in one vectorised pass. ``cache: npy`` instead extracts and normalises the split once into
a memory-mapped ``.npy`` under ``cache_dir`` (keyed by the files, the rows and the normalisation), so
a training epoch reads images and does no per-sample work.

YAML::

    data:
      name: catalog_cutouts
      images: {F275W: f275w.fits, F336W: f336w.fits, F438W: f438w.fits, F555W: f555w.fits, F814W: f814w.fits}
      hdu: SCI                  # or 0/1/..., or {F275W: SCI, ...}; default: first 2-D image
      catalog: clusters.ecsv    # or a LEGUS .tab (format: legus), a FITS table, a CSV
      coords: pixel             # or sky (ra_col/dec_col through each band's WCS)
      x_col: x                  # 0-based unless pixel_origin: 1 (LEGUS/DS9/SExtractor)
      y_col: y
      id_col: id
      label_col: class_mode
      class_map: {"1": "1", "2": "2", "3": "3", "4": "4"}   # other labels (e.g. 0 = not inspected) are dropped
      size: 299                 # stamp side in pixels (Wei et al. 2020)
      drop_flagged: [outside]   # remove rows with these flags (outside, edge, nan, missing_band)

Python (e.g. on a simulated mosaic)::

    from astrotl.datasets import CatalogCutoutDataset
    cfg = CatalogCutoutDataset.Config(images={"F555W": "v.fits"}, catalog="cat.ecsv", size=64)
    ds = CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=Path("/tmp/cache"))
    ds[0]["image"]        # float32 tensor [1, 64, 64], normalised (NaNs -> 0)
    ds.raw_cutout(0)      # (float32 [1, 64, 64] with NaNs, CutoutFlags)
    ds.catalog()          # id, x, y, [ra, dec], label/class, flag_outside, flag_edge, flag_nan, ...

Per-row flags in :meth:`CatalogCutoutDataset.catalog` (PHANGS calls edge objects class 4.11):

``flag_outside``
    the position is off the image (in at least one band); the stamp is all NaN;
``flag_edge``
    the stamp extends beyond the image array;
``flag_nan`` / ``nan_fraction``
    the stamp has NaN pixels (off the footprint of a drizzled mosaic), and how many;
``flag_missing_band`` / ``missing_bands``
    some band has no finite pixel in the stamp.

``outside`` and ``edge`` come from the positions alone (instant); ``nan`` and ``missing_band``
need the pixels, so they are computed by one streaming pass when first needed (``catalog()``,
or ``drop_flagged`` naming them) and cached under ``cache_dir``; rows whose stamps this process
has already cut (e.g. by ``astrotl predict``) are not cut again.

Every input problem is a :class:`~astrotl.errors.DataError` raised in ``__init__``, before any
cutout is made: missing/corrupt/truncated FITS, an HDU that is not there, sky positions without
a WCS, bands on different pixel grids, a catalogue column that is not there, duplicated ids,
catalogue magnitude columns that do not match the image bands, no position on the image at all.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import MaskedColumn, Table
from pydantic import Field, field_validator, model_validator

from ..catalogs import (check_bands_once, check_unique_ids, pixel_positions, read_catalog, require_columns, sky_positions,
                        unlisted_label_report)
from ..data import NormalizeConfig, normalize_images, robust_band_scale
from ..errors import DataError
from ..fitsio import MosaicStack, geometry_flags
from ..interfaces import DatasetInfo, ImageDataset
from ..io import atomic_path, write_json
from .common import (FlagName, LabelSplitConfig, assign_labels, assign_targets, cache_key, class_descriptions,
                     file_stamp, group_ids, restrict_classes, select_split, split_assignment)

log = logging.getLogger(__name__)

#: Stamps cut per vectorised pass when the whole split is walked (pixel flags, npy cache).
_CHUNK = 1024


def _digest(rows: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


class CatalogCutoutConfig(LabelSplitConfig):
    """Options of :class:`CatalogCutoutDataset`."""

    images: dict[str, str] = Field(..., description="band -> FITS mosaic; the order is the channel order")
    hdu: str | int | dict[str, str | int] | None = Field(
        None, description="HDU holding the image, by EXTNAME or index, for all bands or per band (default: first 2-D image)")
    catalog: str = Field(..., description="source catalogue: .ecsv, .fits, .csv, LEGUS .tab, PHANGS-HST FITS")
    format: Literal["auto", "ecsv", "fits", "csv", "legus", "phangs"] = Field("auto", description="catalogue format")
    legus_bands: list[str] | None = Field(None, description="band names of a LEGUS table's 5 magnitude columns")
    coords: Literal["pixel", "sky"] = Field("pixel", description="cut at pixel x,y or at sky ra,dec (through each band's WCS)")
    x_col: str = "x"
    y_col: str = "y"
    ra_col: str = "ra"
    dec_col: str = "dec"
    pixel_origin: Literal[0, 1] | None = Field(
        None, description="1 if x/y are 1-based (DS9, IRAF, SExtractor); LEGUS/PHANGS readers already convert")
    id_col: str | None = Field("id", description="unique id column (None: row number)")
    mag_cols: str | None = Field(
        None, description="magnitude column pattern, e.g. 'mag_{band}': every image band must have one (carried to catalog())")
    extra_columns: list[str] = Field(default_factory=list, description="catalogue columns to carry into catalog()/predictions")
    size: int = Field(299, ge=4, le=4096, description="stamp side in pixels (the PHANGS papers used 299)")
    drop_flagged: list[FlagName] = Field(
        default_factory=list, description="drop rows with these flags: outside, edge, nan, missing_band")
    max_rows: int | None = Field(None, ge=1, description="use only the first N catalogue rows (quick tests)")
    cache: Literal["none", "npy"] = Field("none", description="npy: cut and normalise the split once into a memory-mapped "
                                                         ".npy (fastest training epochs; disk: N x bands x size^2 x 4 bytes)")
    normalize: NormalizeConfig = NormalizeConfig()
    scale_samples: int = Field(256, ge=1, description="training stamps used to estimate the per-band noise scale")

    @field_validator("images")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("give at least one band: {band: path}")
        return v

    @model_validator(mode="after")
    def _check(self):
        check_bands_once(list(self.images), "images")
        if self.legus_bands is not None:
            check_bands_once(self.legus_bands, "legus_bands")
        seen: dict[tuple[str, str], str] = {}
        for band, path in self.images.items():
            hdu = self.hdu.get(band) if isinstance(self.hdu, dict) else self.hdu
            key = (str(Path(str(path)).expanduser().resolve()) if "${" not in str(path) else str(path), str(hdu))
            if key in seen:
                raise ValueError(f"bands {seen[key]} and {band} both read {'HDU ' + str(hdu) + ' of ' if hdu is not None else ''}"
                                 f"'{path}': a band given twice; give each band its own image (or its own hdu)")
            seen[key] = band
        if self.mag_cols is not None and "{band}" not in self.mag_cols:
            raise ValueError(f"mag_cols must contain '{{band}}', e.g. 'mag_{{band}}', got {self.mag_cols!r}")
        return self


class CatalogCutoutDataset(ImageDataset):
    """Multi-band stamps cut from FITS mosaics at catalogue positions (memory-mapped, Cutout2D, per-row flags)."""

    name = "catalog_cutouts"
    Config = CatalogCutoutConfig

    def __init__(self, config: CatalogCutoutConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        c = config
        self.bands = tuple(c.images)
        self._memo: tuple[np.ndarray, np.ndarray] | None = None  # pixel flags of the rows cut in this process
        where = f"catalogue '{c.catalog}'"
        # 1. images: all files opened and checked first (memory-mapped; no pixels read)
        self._stack = MosaicStack.open(c.images, c.hdu, need_wcs=c.coords == "sky", same_grid=c.coords == "pixel")
        # 2. catalogue, columns, ids
        table = read_catalog(c.catalog, c.format, legus_bands=c.legus_bands)
        if c.max_rows is not None:
            table = table[: c.max_rows]
        if len(table) == 0:
            raise DataError(f"{where} has no rows; give a catalogue with sources")
        if c.id_col is not None:
            require_columns(table, [c.id_col], where=where, key="id_col")
            check_unique_ids(table, c.id_col, where=where)
        require_columns(table, c.extra_columns, where=where, key="extra_columns")
        self._mag_cols = self._check_mag_columns(table, where)
        # 3. positions (0-based pixels, per band for sky coordinates)
        origin = table.meta.get("pixel_origin")
        if c.pixel_origin is not None and origin is not None and c.pixel_origin != origin:
            raise DataError(f"data.pixel_origin: {c.pixel_origin}, but the {c.format} reader already gives 0-based "
                            f"pixels; remove pixel_origin")
        n = len(table)
        if c.coords == "pixel":
            x, y = pixel_positions(table, c.x_col, c.y_col, c.pixel_origin or 0)
            self._px = np.tile(x, (len(self.bands), 1))
            self._py = np.tile(y, (len(self.bands), 1))
            self._ra = self._dec = None
        else:
            ra, dec = sky_positions(table, c.ra_col, c.dec_col)
            per_band = self._stack.world_to_pixel(ra, dec)
            self._px = np.stack([p[0] for p in per_band])
            self._py = np.stack([p[1] for p in per_band])
            self._ra, self._dec = ra, dec
        # WCS round trips leave ~1e-9 px noise; at integer positions with an even size that flips Cutout2D's
        # ceil() by one pixel, so positions are rounded to a micro-pixel (pixel and sky give the same stamps)
        self._px, self._py = np.round(self._px, 6), np.round(self._py, 6)
        outside = np.zeros(n, dtype=bool)
        edge = np.zeros(n, dtype=bool)
        for b, band in enumerate(self._stack.bands):
            o, e = geometry_flags(self._px[b], self._py[b], band.shape, c.size)
            outside |= o
            edge |= e
        if outside.all():
            ny, nx = self._stack.shape
            raise DataError(f"none of the {n} positions in {where} falls on the images ({nx} x {ny} px; first position "
                            f"x={self._px[0, 0]:.1f}, y={self._py[0, 0]:.1f}); check coords, x_col/y_col, pixel_origin "
                            f"and that the catalogue belongs to these images")
        self._outside, self._edge = outside, edge
        # 4. labels and split
        labels, classes, raw = assign_labels(table, c, where=where)
        self._label_report = unlisted_label_report(raw, labels, classes, label_col=c.label_col, class_map=c.class_map,
                                                   keep_unlabelled=c.keep_unlabelled, where=where)
        target_set = assign_targets(table, c, where=where, ids=np.asarray(table[c.id_col]) if c.id_col else None)
        if target_set is not None:
            # rows without targets are unlabelled; without label_col the targets' argmax stratifies the split
            labels = np.where(target_set.labelled, labels if classes is not None else target_set.labels, -1)
        labelled = classes is not None or target_set is not None
        assignment = split_assignment(n, labels, c, table, where=where)
        labels, classes = restrict_classes(labels, classes, c, where=where)
        self._all_labels, self.classes, self._raw_labels = labels, classes, raw
        keep = np.ones(n, dtype=bool)
        if "outside" in c.drop_flagged:
            keep &= ~outside
        if "edge" in c.drop_flagged:
            keep &= ~edge
        self._table = table
        self._key = cache_key("catalog_cutouts", [file_stamp(p) for p in c.images.values()], c.hdu,
                              file_stamp(c.catalog), c.format, c.legus_bands, c.coords, c.x_col, c.y_col, c.ra_col,
                              c.dec_col, c.pixel_origin, c.max_rows, c.size)
        if {"nan", "missing_band"} & set(c.drop_flagged):
            cand = np.flatnonzero(keep)
            nanf, miss = self._pixel_flags(cand)
            if "nan" in c.drop_flagged:
                keep[cand[nanf > 0]] = False
            if "missing_band" in c.drop_flagged:
                keep[cand[miss != ""]] = False
        if c.drop_flagged:
            log.info("catalog_cutouts: %d of %d rows dropped for flags %s", int((~keep).sum()), n, c.drop_flagged)
        self._rows = select_split(split, assignment, labels, c.keep_unlabelled, labelled)
        self._rows = self._rows[keep[self._rows]]
        self._labels = labels[self._rows]
        self._target_names = target_set.names if target_set is not None else None
        self._targets = target_set.values[self._rows] if target_set is not None else None
        self._votes = target_set.votes[self._rows] if target_set is not None and target_set.votes is not None else None
        all_groups = group_ids(table, c, where=where)
        self._groups = all_groups[self._rows] if all_groups is not None else None
        if self._groups is None:
            self.groups = None  # no group_col: no groups() (the engine then counts samples, not objects)
        self._band_scale = self._noise_scale(assignment, keep, labels) if c.normalize.scale == "dataset" else None
        self._cache: np.ndarray | None = None
        self._cache_flags: tuple[np.ndarray, np.ndarray] | None = None
        if c.cache == "npy" and len(self._rows):
            self._cache = self._build_cache()

    # -- checks ------------------------------------------------------------------------------------
    def _check_mag_columns(self, table: Table, where: str) -> list[str]:
        pattern = self.config.mag_cols
        if pattern is None:
            return []
        wanted = [pattern.format(band=b) for b in self.bands]
        missing = [(b, w) for b, w in zip(self.bands, wanted) if w not in table.colnames]
        if missing:
            import re

            rx = re.compile("^" + re.escape(pattern).replace(re.escape("{band}"), "(.+)") + "$")
            have = [m.group(1) for col in table.colnames if (m := rx.match(col))]
            raise DataError(f"image band(s) {[b for b, _ in missing]} have no magnitude column in {where} "
                            f"(looked for {[w for _, w in missing]}; the catalogue has bands {have}); make data.images "
                            f"use the catalogue's band names or fix data.mag_cols")
        return wanted

    # -- pixels ------------------------------------------------------------------------------------
    def _positions(self, row: int) -> tuple[list[float], list[float]]:
        return self._px[:, row].tolist(), self._py[:, row].tolist()

    def raw_cutout(self, index: int, *, with_wcs: bool = False):
        """The unnormalised stamp ``float32 [C, size, size]`` (NaN off the image) and its :class:`~astrotl.fitsio.CutoutFlags`.

        ``with_wcs=True`` also returns each band's cutout WCS (for FITS export).
        """
        row = int(self._rows[index])
        x, y = self._positions(row)
        return self._stack.cutout(x, y, self.config.size, with_wcs=with_wcs)

    def _cut_rows(self, rows: np.ndarray) -> np.ndarray:
        """Unnormalised stamps ``float32 [N, C, size, size]`` of catalogue rows, cut in one vectorised pass
        (:meth:`astrotl.fitsio.MosaicStack.cutouts`); their pixel flags are remembered for :meth:`flags`."""
        rows = np.asarray(rows, dtype=np.int64)
        batch = self._stack.cutouts(self._px[:, rows], self._py[:, rows], self.config.size)
        if self._memo is None:
            n = len(self._table)
            self._memo = (np.full(n, np.nan, dtype=np.float64), np.zeros((n, len(self.bands)), dtype=bool))
        self._memo[0][rows] = batch.nan_fraction
        self._memo[1][rows] = batch.missing
        return batch.stamps

    def _band_list(self, missing: np.ndarray) -> str:
        """'F275W,F336W' from a row of the missing-band mask."""
        return ",".join(b for b, m in zip(self.bands, missing) if m)

    def _pixel_flags(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nan_fraction, missing_bands as 'a,b') for catalogue rows, streamed and cached on disk."""
        rows = np.asarray(rows, dtype=np.int64)
        key = cache_key(self._key, "flags", _digest(rows))
        path = self.cache_dir / "catalog_cutouts" / f"flags_{key}.npz"
        if path.is_file():
            try:
                z = np.load(path, allow_pickle=False)
                return z["nan_fraction"], z["missing"].astype(object)
            except Exception:  # a damaged cache file is recomputed
                log.warning("ignoring unreadable cache file %s", path)
        if self._memo is not None:
            known = np.isfinite(self._memo[0][rows])
        else:
            known = np.zeros(len(rows), dtype=bool)
        for start in range(0, int((~known).sum()), _CHUNK):  # the rows not cut yet, a batch at a time
            todo = rows[~known][start:start + _CHUNK]
            self._cut_rows(todo)
        memo_nanf, memo_miss = self._memo if self._memo is not None else (np.zeros(0, np.float32), None)
        nanf = memo_nanf[rows].astype(np.float32) if len(rows) else np.zeros(0, dtype=np.float32)
        miss = np.array([self._band_list(m) for m in memo_miss[rows]], dtype=object) if len(rows) \
            else np.empty(0, dtype=object)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, nan_fraction=nanf, missing=miss.astype(str))
        return nanf, miss

    def _noise_scale(self, assignment: np.ndarray, keep: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-band noise scale from up to ``scale_samples`` training stamps (same for every split; cached)."""
        c = self.config
        train = np.flatnonzero((assignment == "train") & keep & ~self._outside)
        if not len(train):
            train = np.flatnonzero(keep & ~self._outside)
        rng = np.random.default_rng(c.split_seed)
        pick = np.sort(rng.permutation(train)[: c.scale_samples])
        key = cache_key(self._key, "scale", c.split_col, c.split_fractions, c.split_seed, c.scale_samples,
                        c.label_col, c.class_map, c.drop_flagged, len(pick), pick[:64].tolist())
        path = self.cache_dir / "catalog_cutouts" / f"scale_{key}.json"
        if path.is_file():
            import json

            try:
                return np.asarray(json.loads(path.read_text())["band_scale"], dtype=np.float32)
            except (OSError, ValueError, KeyError, TypeError):  # unreadable/corrupt cache: recompute
                log.warning("ignoring unreadable cache file %s", path)
        stamps = self._cut_rows(pick)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scale = robust_band_scale(stamps)
        write_json(path, {"band_scale": scale.tolist(), "bands": list(self.bands), "n_stamps": len(pick)})
        return scale

    def _build_cache(self) -> np.ndarray:
        c = self.config
        # the stack holds the *normalised* images (the normalisation is per image, with a band scale fixed by the
        # training split), so a cached epoch costs a memory-mapped read and nothing else
        scale = None if self._band_scale is None else [float(v) for v in self._band_scale]
        key = cache_key(self._key, "stack", _digest(self._rows), c.normalize.model_dump(), scale)
        path = self.cache_dir / "catalog_cutouts" / f"stack_{key}.npy"
        flags_path = path.with_suffix(".flags.npz")
        if not (path.is_file() and flags_path.is_file()):
            n, nb = len(self._rows), len(self.bands)
            log.info("catalog_cutouts: extracting %d stamps of %dx%d px into %s", n, c.size, c.size, path)
            nanf = np.zeros(n, dtype=np.float32)
            miss = np.empty(n, dtype=object)
            with atomic_path(path) as tmp:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, nb, c.size, c.size))
                for start in range(0, n, _CHUNK):
                    rows = self._rows[start:start + _CHUNK]
                    arr[start:start + len(rows)] = self._normalised(self._cut_rows(rows))
                    nanf[start:start + len(rows)] = self._memo[0][rows]
                    miss[start:start + len(rows)] = [self._band_list(m) for m in self._memo[1][rows]]
                arr.flush()
                del arr
            with atomic_path(flags_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, nan_fraction=nanf, missing=miss.astype(str))
        z = np.load(flags_path, allow_pickle=False)
        self._cache_flags = (z["nan_fraction"], z["missing"].astype(object))
        return np.load(path, mmap_mode="r")

    # -- Dataset API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._cache is not None:
            return self._wrap([index], np.asarray(self._cache[index])[None])[0]
        stamp, _ = self.raw_cutout(index)
        return self._samples([index], stamp[None])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples of a whole batch (PyTorch's DataLoader asks for them this way): the stamps are cut
        (or read from the ``npy`` cache) and normalised in one vectorised pass; the same samples as
        ``[self[i] for i in indices]``."""
        indices = [int(i) for i in indices]
        if self._cache is not None:
            return self._wrap(indices, np.asarray(self._cache[np.asarray(indices, dtype=np.int64)]))
        return self._samples(indices, self._cut_rows(self._rows[np.asarray(indices, dtype=np.int64)]))

    def _samples(self, indices: list[int], stamps: np.ndarray) -> list[dict[str, Any]]:
        """Sample dicts from unnormalised stamps ``[N, C, size, size]`` of the samples ``indices``."""
        return self._wrap(indices, self._normalised(stamps))

    def _normalised(self, stamps: np.ndarray) -> np.ndarray:
        """The ``normalize`` section applied to unnormalised stamps ``[N, C, size, size]`` (NaNs become 0)."""
        finite = np.isfinite(stamps).all(axis=(1, 2, 3))
        if finite.all():
            images = normalize_images(stamps, self.config.normalize, self._band_scale)
        else:  # stamps with NaNs take numpy's slower NaN-aware statistics; the others need not
            images = np.empty(stamps.shape, dtype=np.float32)
            if finite.any():
                images[finite] = normalize_images(stamps[finite], self.config.normalize, self._band_scale)
            with warnings.catch_warnings():  # all-NaN bands (flagged rows) become zeros; numpy's warning is noise
                warnings.simplefilter("ignore", RuntimeWarning)
                images[~finite] = normalize_images(stamps[~finite], self.config.normalize, self._band_scale)
        return images

    def _wrap(self, indices: list[int], images: np.ndarray) -> list[dict[str, Any]]:
        """Sample dicts from normalised images ``[N, C, size, size]`` of the samples ``indices``."""
        out = []
        for j, index in enumerate(indices):
            sample: dict[str, Any] = {"image": torch.from_numpy(images[j]), "index": index}
            if self.classes is not None:
                sample["label"] = int(self._labels[index])
            if self._targets is not None:
                sample["target"] = torch.from_numpy(self._targets[index].copy())
                if self._votes is not None:
                    sample["votes"] = torch.from_numpy(self._votes[index].copy())
            out.append(sample)
        return out

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=self.bands, classes=tuple(self.classes) if self.classes else None,
                           class_descriptions=class_descriptions(self.config, self.classes),
                           targets=self._target_names, image_size=self.config.size,
                           extra={"catalog": str(self.config.catalog), "images": dict(self.config.images)})

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

    def rows(self) -> np.ndarray:
        """Catalogue row number of each sample."""
        return self._rows

    def flags(self, samples: np.ndarray | None = None) -> Table:
        """Per-sample flags: ``flag_outside``, ``flag_edge``, ``flag_nan``, ``nan_fraction``,
        ``flag_missing_band``, ``missing_bands`` (pixel flags computed once and cached); of the samples
        ``samples`` only, when given (e.g. one chunk of a prediction)."""
        sel = slice(None) if samples is None else np.asarray(samples, dtype=np.int64)
        rows = self._rows[sel]
        if self._cache_flags is not None:
            nanf, miss = (np.asarray(a)[sel] for a in self._cache_flags)
        else:
            nanf, miss = self._pixel_flags(rows) if len(rows) else (np.zeros(0, np.float32), np.zeros(0, object))
        t = Table()
        t["flag_outside"] = self._outside[rows]
        t["flag_edge"] = self._edge[rows]
        t["flag_nan"] = np.asarray(nanf) > 0
        t["nan_fraction"] = np.asarray(nanf, dtype=np.float32)
        t["flag_missing_band"] = np.array([m != "" for m in miss], dtype=bool)
        t["missing_bands"] = np.array([str(m) for m in miss], dtype=str) if len(miss) else np.zeros(0, dtype=str)
        t["flag_edge"].description = "stamp extends beyond the image (PHANGS class 4.11)"
        t["flag_outside"].description = "position off the image in at least one band"
        t["nan_fraction"].description = "fraction of NaN pixels in the stamp (all bands)"
        t["missing_bands"].description = "bands with no finite pixel in the stamp"
        return t

    def catalog(self, samples: np.ndarray | None = None) -> Table:
        """Per-sample metadata: ``id``, ``x``, ``y`` (0-based, first band), ``ra``, ``dec`` (sky coords),
        ``label_raw`` and ``class`` (when labelled), magnitudes and extra columns, and the flags; of the
        samples ``samples`` only, when given (their pixel flags alone are computed)."""
        c = self.config
        sel = slice(None) if samples is None else np.asarray(samples, dtype=np.int64)
        rows = self._rows[sel]
        t = Table(meta={"catalog": str(c.catalog), "bands": list(self.bands), "size": c.size, "pixel_origin": 0})
        if self._label_report:
            t.meta["label_report"] = dict(self._label_report)
        t["id"] = np.asarray(self._table[c.id_col])[rows] if c.id_col else rows
        t["x"] = self._px[0, rows]
        t["y"] = self._py[0, rows]
        if self._ra is not None:
            t["ra"], t["dec"] = self._ra[rows], self._dec[rows]
            t["ra"].unit = t["dec"].unit = "deg"
        else:
            for name in ("ra", "dec"):
                if name in self._table.colnames and name not in (c.x_col, c.y_col):
                    t[name] = self._table[name][rows]
        if self.classes is not None:
            t["label_raw"] = np.array([str(v) for v in self._raw_labels[rows]], dtype=str) if len(rows) else \
                np.zeros(0, dtype=str)
            t["class"] = np.array([self.classes[i] if i >= 0 else "" for i in self._labels[sel]], dtype=str) if len(rows) \
                else np.zeros(0, dtype=str)
        for col in [*self._mag_cols, *c.extra_columns]:
            if col not in t.colnames:
                src = self._table[col]
                t[col] = MaskedColumn(src[rows]) if hasattr(src, "mask") else src[rows]
        flags = self.flags(samples)
        for name in flags.colnames:
            t[name] = flags[name]
        return t

    def close(self) -> None:
        """Close the memory-mapped FITS files (they reopen on demand)."""
        self._stack.close()
