"""Pieces shared by the built-in table-driven data sets: labels -> classes, splits, cache keys."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from pydantic import Field, model_validator

from ..errors import DataError
from ..interfaces import ComponentConfig

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test", "predict": "predict"}


class LabelSplitConfig(ComponentConfig):
    """Options shared by table-driven data sets: where the labels are and how rows split."""

    label_col: str | None = Field(None, description="catalogue column with the labels (None: unlabelled, predict only)")
    class_map: dict[str, str] | None = Field(
        None, description="raw label (as text) -> class code, e.g. {'1': '1', '2': '1', '4': 'artifact'}; "
                          "labels not listed are unlabelled")
    classes: list[str] | None = Field(None, description="class codes in output order (default: sorted labels seen)")
    class_descriptions: list[str] | None = Field(None, description="human-readable names, same order as classes")
    keep_unlabelled: bool = Field(False, description="keep rows without a valid label in train/val/test (label -1)")
    split_col: str | None = Field(None, description="column with train/val/test per row (else seeded fractions)")
    split_fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, val, test fractions")
    split_seed: int = Field(0, description="seed of the split (independent of the run seed)")
    stratify: bool = Field(True, description="keep class proportions in every split")

    @model_validator(mode="after")
    def _check_split(self):
        f = self.split_fractions
        if any(v < 0 for v in f) or sum(f) <= 0:
            raise ValueError(f"split_fractions must be >= 0 and not all 0, got {list(f)}")
        if self.class_descriptions is not None and self.classes is not None and \
                len(self.class_descriptions) != len(self.classes):
            raise ValueError(f"class_descriptions has {len(self.class_descriptions)} entries, classes has "
                             f"{len(self.classes)}; give one description per class")
        return self


def label_text(values) -> np.ndarray:
    """Raw label values as text; integral floats lose their ``.0``; masked/NaN become ``""``."""
    arr = np.ma.asarray(values)
    mask = np.ma.getmaskarray(arr)
    out = np.empty(len(arr), dtype=object)
    data = np.asarray(arr.data if hasattr(arr, "data") else arr)
    for i, v in enumerate(data):
        if mask[i]:
            out[i] = ""
            continue
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode()
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                out[i] = ""
                continue
            out[i] = str(int(v)) if float(v).is_integer() else repr(float(v))
        else:
            out[i] = str(v).strip()
    return out


def _sort_key(c: str):
    try:
        return (0, float(c), c)
    except ValueError:
        return (1, 0.0, c)


def assign_labels(table: Table, cfg: LabelSplitConfig, *, where: str) -> tuple[np.ndarray, list[str] | None, np.ndarray]:
    """Map ``cfg.label_col`` through ``class_map`` onto ``classes``.

    Returns
    -------
    labels : ndarray of int64
        Class index per row, -1 where the row has no valid label.
    classes : list of str or None
        The class codes (``None`` without ``label_col``).
    raw : ndarray of str
        The raw label text per row.
    """
    n = len(table)
    if cfg.label_col is None:
        if cfg.classes:
            raise DataError(f"{where}: classes are given but no label_col; set data.label_col to the label column")
        return np.full(n, -1, dtype=np.int64), None, np.full(n, "", dtype=object)
    if cfg.label_col not in table.colnames:
        from ..errors import did_you_mean

        raise DataError(f"{where} has no label column '{cfg.label_col}'{did_you_mean(cfg.label_col, table.colnames)}; "
                        f"set data.label_col to one of: {', '.join(table.colnames[:15])}")
    raw = label_text(table[cfg.label_col])
    mapped = np.array([cfg.class_map.get(r, "") if cfg.class_map is not None else r for r in raw], dtype=object)
    if cfg.classes is not None:
        classes = [str(c) for c in cfg.classes]
        if len(set(classes)) != len(classes):
            raise DataError(f"{where}: data.classes has duplicates {classes}; list each class once")
        if cfg.class_map is not None:
            bad = sorted(set(cfg.class_map.values()) - set(classes))
            if bad:
                raise DataError(f"{where}: class_map maps to {bad}, which are not in data.classes {classes}; "
                                f"add them to classes or fix class_map")
    else:
        classes = sorted({m for m in mapped if m != ""}, key=_sort_key)
    if not classes:
        raise DataError(f"{where}: no row has a usable label in column '{cfg.label_col}'"
                        f"{' after class_map' if cfg.class_map is not None else ''}; check label_col and class_map")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(m, -1) for m in mapped], dtype=np.int64)
    if not (labels >= 0).any():
        raise DataError(f"{where}: none of the labels in '{cfg.label_col}' is one of the classes {classes}; "
                        f"check classes / class_map (labels seen: {sorted(set(raw))[:8]})")
    return labels, classes, raw


def split_assignment(n: int, labels: np.ndarray, cfg: LabelSplitConfig, table: Table | None, *,
                     where: str) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per row, from ``split_col`` or seeded (stratified) fractions."""
    if cfg.split_col is not None:
        if table is None or cfg.split_col not in table.colnames:
            raise DataError(f"{where} has no split column '{cfg.split_col}'; set data.split_col to a column holding "
                            f"train/val/test or remove it to split by data.split_fractions")
        raw = label_text(table[cfg.split_col])
        out = np.array([SPLIT_ALIASES.get(str(v).lower(), "") for v in raw], dtype=object)
        bad = sorted({str(v) for v, o in zip(raw, out) if o == ""})
        if bad:
            raise DataError(f"{where}: split column '{cfg.split_col}' has values {bad[:5]}; use train, val or test")
        return out
    frac = np.asarray(cfg.split_fractions, dtype=float)
    frac = frac / frac.sum()
    rng = np.random.default_rng(cfg.split_seed)
    out = np.empty(n, dtype=object)
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)] if cfg.stratify else [np.arange(n)]
    names = np.array(["train", "val", "test"], dtype=object)
    for g in groups:
        g = g[rng.permutation(len(g))]
        # largest-remainder rounding of the per-group counts keeps every split's share exact
        raw_counts = frac * len(g)
        counts = np.floor(raw_counts).astype(int)
        rest = len(g) - counts.sum()
        order = np.argsort(-(raw_counts - counts), kind="stable")
        counts[order[:rest]] += 1
        out[g] = np.repeat(names, counts)
    return out


def select_split(split: str, assignment: np.ndarray, labels: np.ndarray, keep_unlabelled: bool,
                 labelled: bool) -> np.ndarray:
    """Row indices of ``split`` (``predict``: every row) in catalogue order."""
    if split == "predict":
        return np.arange(len(assignment))
    rows = assignment == split
    if labelled and not keep_unlabelled:
        rows &= labels >= 0
    return np.flatnonzero(rows)


def file_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and modification time: a cheap cache-key ingredient for an input file."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime": int(st.st_mtime_ns)}
    except OSError:
        return {"path": str(p)}


def cache_key(*parts: Any) -> str:
    """Short hex digest of a JSON-able structure."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def class_descriptions(cfg: LabelSplitConfig, classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if cfg.class_descriptions is not None:
        if len(cfg.class_descriptions) != len(classes):
            raise DataError(f"class_descriptions has {len(cfg.class_descriptions)} entries for {len(classes)} classes "
                            f"{list(classes)}; give one per class")
        return tuple(cfg.class_descriptions)
    return tuple(str(c) for c in classes)


FlagName = Literal["outside", "edge", "nan", "missing_band"]
