"""Pieces shared by the built-in table-driven data sets: labels -> classes, splits, cache keys."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from pydantic import Field, model_validator

from ..cache import cache_key  # noqa: F401 -- the one key rule, re-exported for the data sets
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
    class_subset: list[str] | None = Field(
        None, description="keep only the rows of these classes (a subset of classes) in every split, the split still "
                          "drawn over all classes: the same split as without class_subset, so a stage trained on some "
                          "classes never sees another stage's validation or test rows; the data set's classes become "
                          "this subset (in the order of classes)")
    class_descriptions: list[str] | None = Field(None, description="human-readable names, same order as classes")
    keep_unlabelled: bool = Field(False, description="keep rows without a valid label in train/val/test (label -1)")
    split_col: str | None = Field(None, description="column with train/val/test per row (else seeded fractions)")
    group_col: str | None = Field(None, description="column naming each row's object (e.g. a galaxy id): all rows "
                                                    "of one object fall in the same split")
    split_fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, val, test fractions")
    split_seed: int = Field(0, description="seed of the split (independent of the run seed)")
    stratify: bool = Field(True, description="keep class proportions in every split")
    # soft labels (probability regression, task soft_labels): K fractions per row
    target_cols: list[str] | None = Field(
        None, description="columns holding the K target fractions of each row (soft labels, e.g. vote fractions); "
                          "a row blank in all of them is unlabelled")
    target_names: list[str] | None = Field(
        None, description="names of the K targets, same order as target_cols/votes_cols (default: the column names)")
    count_col: str | None = Field(
        None, description="column with each row's number of voters: votes = round(target * n) (Dirichlet-multinomial loss)")
    votes_cols: list[str] | None = Field(
        None, description="columns with the raw vote counts, one per target; without target_cols the targets are "
                          "votes / total votes")
    normalize_targets: bool = Field(
        False, description="renormalise target rows that do not sum to 1 (else such a row is an error)")

    @model_validator(mode="after")
    def _check_split(self):
        f = self.split_fractions
        if any(v < 0 for v in f) or sum(f) <= 0:
            raise ValueError(f"split_fractions must be >= 0 and not all 0, got {list(f)}")
        if self.class_subset is not None:
            if not self.class_subset or len(set(self.class_subset)) != len(self.class_subset):
                raise ValueError(f"class_subset must list one or more distinct classes, got {self.class_subset}")
            if self.label_col is None:
                raise ValueError("class_subset selects rows by their class, but label_col is not set; set label_col or "
                                 "remove class_subset")
            unknown = [k for k in self.class_subset if self.classes is not None and k not in self.classes]
            if unknown:
                raise ValueError(f"class_subset lists {unknown}, which are not among classes {self.classes}; use class "
                                 f"codes from classes")
        if self.class_descriptions is not None and self.classes is not None and \
                len(self.class_descriptions) != len(self.classes):
            raise ValueError(f"class_descriptions has {len(self.class_descriptions)} entries, classes has "
                             f"{len(self.classes)}; give one description per class")
        return self

    @model_validator(mode="after")
    def _check_targets(self):
        cols = self.target_cols if self.target_cols is not None else self.votes_cols
        for key in ("target_cols", "votes_cols", "target_names"):
            value = getattr(self, key)
            if value is not None and len(value) == 0:
                raise ValueError(f"{key} is empty; list at least two columns, or remove it")
            if value is not None and len(set(value)) != len(value):
                raise ValueError(f"{key} lists a name twice ({value}); list each once")
        if self.target_names is not None and cols is None:
            raise ValueError("target_names is given without target_cols or votes_cols; set the columns too")
        if self.target_names is not None and len(self.target_names) != len(cols):
            raise ValueError(f"target_names has {len(self.target_names)} names for {len(cols)} target columns; "
                             f"give one name per column")
        if self.votes_cols is not None and self.target_cols is not None and \
                len(self.votes_cols) != len(self.target_cols):
            raise ValueError(f"votes_cols has {len(self.votes_cols)} columns, target_cols {len(self.target_cols)}; "
                             f"give one vote column per target")
        if self.count_col is not None and self.votes_cols is not None:
            raise ValueError("give count_col (number of voters) or votes_cols (raw counts), not both")
        if self.count_col is not None and self.target_cols is None:
            raise ValueError("count_col needs target_cols (votes = round(target * count)); set data.target_cols")
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


def group_ids(table: Table | None, cfg: LabelSplitConfig, *, where: str) -> np.ndarray | None:
    """The ``group_col`` value of each row as text (``None`` without ``group_col``)."""
    if cfg.group_col is None:
        return None
    if table is None or cfg.group_col not in table.colnames:
        from ..errors import did_you_mean

        cols = list(table.colnames) if table is not None else []
        raise DataError(f"{where} has no group column '{cfg.group_col}'{did_you_mean(cfg.group_col, cols)}; set "
                        f"data.group_col to the column naming each row's object, or remove it")
    groups = label_text(table[cfg.group_col])
    if (groups == "").any():
        row = int(np.flatnonzero(groups == "")[0])
        raise DataError(f"{where}: row {row} has no value in group column '{cfg.group_col}'; give every row a group")
    return groups


def split_assignment(n: int, labels: np.ndarray, cfg: LabelSplitConfig, table: Table | None, *,
                     where: str) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per row, from ``split_col`` or seeded (stratified) fractions.

    With ``group_col`` the fractions are of groups (objects), not rows: every row of one object
    falls in the same split; stratification then uses each group's most common label.
    """
    groups = group_ids(table, cfg, where=where)
    if groups is not None and cfg.split_col is None:
        uniq, inverse = np.unique(groups, return_inverse=True)
        glabels = np.full(len(uniq), -1, dtype=np.int64)
        for g in range(len(uniq)):
            lab = labels[inverse == g]
            lab = lab[lab >= 0]
            if len(lab):
                glabels[g] = np.bincount(lab).argmax()
        per_group = _fraction_split(len(uniq), glabels, cfg)
        return per_group[inverse]
    if groups is not None and cfg.split_col is not None:
        out = split_assignment(n, labels, cfg.model_copy(update={"group_col": None}), table, where=where)
        for g in np.unique(groups):
            seen = set(out[groups == g])
            if len(seen) > 1:
                raise DataError(f"{where}: group '{g}' (column {cfg.group_col}) has rows in splits {sorted(seen)}; "
                                f"put all rows of an object in one split, or remove split_col to split by group")
        return out
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
    return _fraction_split(n, labels, cfg)


def _fraction_split(n: int, labels: np.ndarray, cfg: LabelSplitConfig) -> np.ndarray:
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




def restrict_classes(labels: np.ndarray, classes: list[str] | None, cfg: LabelSplitConfig, *,
                     where: str) -> tuple[np.ndarray, list[str] | None]:
    """``class_subset``: the labels re-indexed to the subset (other rows -1, i.e. unlabelled) and the subset's classes.

    Call it *after* :func:`split_assignment` on all classes, so that the split does not depend on the subset.

    Examples
    --------
    >>> cfg = LabelSplitConfig(label_col="c", classes=["a", "b", "c"], class_subset=["c", "a"])
    >>> lab, cls = restrict_classes(np.array([0, 1, 2, -1]), ["a", "b", "c"], cfg, where="t")
    >>> lab.tolist(), cls
    ([0, -1, 1, -1], ['a', 'c'])
    """
    if cfg.class_subset is None:
        return labels, classes
    if classes is None:
        raise DataError(f"{where}: class_subset needs class labels, but this data set has none (label_col "
                        f"'{cfg.label_col}'); remove class_subset")
    unknown = [k for k in cfg.class_subset if k not in classes]
    if unknown:
        raise DataError(f"{where}: class_subset lists {unknown}, which are not among the classes {list(classes)}; use "
                        f"class codes from that list")
    kept = [i for i, k in enumerate(classes) if k in cfg.class_subset]
    index = np.full(len(classes), -1, dtype=np.int64)
    index[kept] = np.arange(len(kept))
    labels = np.asarray(labels)
    return np.where(labels >= 0, index[np.clip(labels, 0, None)], -1), [classes[i] for i in kept]


def class_descriptions(cfg: LabelSplitConfig, classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if cfg.class_descriptions is not None and cfg.classes is not None and \
            len(cfg.class_descriptions) == len(cfg.classes) and list(classes) != list(cfg.classes):
        named = dict(zip(cfg.classes, cfg.class_descriptions))  # a class_subset: the descriptions of its classes
        return tuple(named.get(str(k), str(k)) for k in classes)
    if cfg.class_descriptions is not None:
        if len(cfg.class_descriptions) != len(classes):
            raise DataError(f"class_descriptions has {len(cfg.class_descriptions)} entries for {len(classes)} classes "
                            f"{list(classes)}; give one per class")
        return tuple(cfg.class_descriptions)
    return tuple(str(c) for c in classes)


FlagName = Literal["outside", "edge", "nan", "missing_band"]


# -- soft labels (target fractions) ------------------------------------------------------------------

#: Largest allowed ``|sum of a target row - 1|`` before the row is an error (or renormalised).
TARGET_SUM_TOLERANCE = 1e-3


class TargetSet:
    """The soft labels of a table: ``K`` fractions per row, and vote counts where known.

    Attributes
    ----------
    names : tuple of str
        Target names, in output order.
    values : ndarray of float32, shape (n, K)
        Fractions per row; each labelled row sums to 1 and is >= 0; unlabelled rows are all NaN.
    votes : ndarray of float32, shape (n, K), or None
        Vote counts per row (NaN for unlabelled rows), from ``votes_cols`` or ``round(target * count_col)``.
    """

    def __init__(self, names: Sequence[str], values: np.ndarray, votes: np.ndarray | None = None):
        self.names = tuple(str(n) for n in names)
        self.values = np.asarray(values, dtype=np.float32)
        self.votes = None if votes is None else np.asarray(votes, dtype=np.float32)

    @property
    def labelled(self) -> np.ndarray:
        """Boolean per row: the row has targets."""
        return np.isfinite(self.values).all(axis=1)

    @property
    def labels(self) -> np.ndarray:
        """The argmax of each row's targets (first of tied maxima), -1 for unlabelled rows (for stratification)."""
        out = np.full(len(self.values), -1, dtype=np.int64)
        ok = self.labelled
        if ok.any():
            out[ok] = np.argmax(self.values[ok], axis=1)
        return out


def describe_row(i: int, ids: Sequence[Any] | np.ndarray | None = None, *, what: str = "row") -> str:
    """``"row 3"`` or ``"row 3 (id 'NGC 628 #12')"`` for error messages (``i`` is 0-based)."""
    if ids is not None and 0 <= i < len(ids):
        return f"{what} {i} (id '{ids[i]}')"
    return f"{what} {i}"


def _float_columns(table: Table, cols: Sequence[str], *, where: str, key: str) -> np.ndarray:
    from ..catalogs import require_columns

    require_columns(table, list(cols), where=where, key=key)
    out = np.empty((len(table), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        try:
            col = np.ma.asarray(table[c], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: column '{c}' (data.{key}) is not numeric (e.g. {table[c][0]!r}); "
                            f"give numbers (fractions or counts)") from None
        out[:, j] = np.ma.filled(col, np.nan)
    return out


def check_target_rows(values: np.ndarray, *, where: str, names: Sequence[str] | None = None,
                      ids: Sequence[Any] | np.ndarray | None = None, tol: float = TARGET_SUM_TOLERANCE,
                      allow_unlabelled: bool = False, what: str = "row",
                      fix_sum: str = "fix the row, or set data.normalize_targets: true to renormalise rows") -> None:
    """Raise :class:`~astrotl.errors.DataError` for the first target row that is not a probability vector.

    Parameters
    ----------
    values : array_like, shape (n, K)
        Target fractions per row.
    where : str
        What holds the rows (for the message), e.g. ``"labels table 'x.csv'"``.
    names : sequence of str, optional
        Target names (the message names the offending column).
    ids : sequence, optional
        Per-row ids (the message names the row's id too).
    tol : float
        Largest allowed ``|sum - 1|``.
    allow_unlabelled : bool
        Rows that are NaN in every column are unlabelled and pass; a row NaN in some columns only
        is an error either way.
    what : str
        Word for a row in the message ("row", "sample").
    fix_sum : str
        The fix the message suggests for a row that does not sum to 1.

    Raises
    ------
    DataError
        For a NaN (unless the whole row is NaN and ``allow_unlabelled``), a negative value, or a row
        whose sum differs from 1 by more than ``tol``.

    Examples
    --------
    >>> check_target_rows([[0.2, 0.8], [0.5, 0.5]], where="catalogue 'c.ecsv'")
    >>> check_target_rows([[0.2, 0.7]], where="catalogue 'c.ecsv'")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    astrotl.errors.DataError: catalogue 'c.ecsv': row 0 has targets summing to 0.9000, not 1 ...
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise DataError(f"{where}: targets must be one row of K fractions per sample, got shape {list(v.shape)}")
    k = v.shape[1]
    names = list(names) if names is not None else [f"target {j}" for j in range(k)]
    nan = ~np.isfinite(v)
    blank = nan.all(axis=1) if allow_unlabelled else np.zeros(len(v), dtype=bool)
    bad = nan.any(axis=1) & ~blank
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cols = [names[j] for j in np.flatnonzero(nan[i])]
        hint = "; fill them, or blank the whole row to leave it unlabelled" if allow_unlabelled else \
            "; give every sample a value in every target, or drop the sample"
        raise DataError(f"{where}: {describe_row(i, ids, what=what)} has no value (NaN or blank) in target(s) {cols}{hint}")
    rows = ~blank
    neg = rows[:, None] & (v < 0)
    if neg.any():
        i, j = (int(a[0]) for a in np.nonzero(neg))
        raise DataError(f"{where}: {describe_row(i, ids, what=what)} has a negative target {v[i, j]:g} in "
                        f"'{names[j]}'; target fractions must be >= 0, fix the row")
    sums = v.sum(axis=1)
    off = rows & (np.abs(sums - 1.0) > tol)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise DataError(f"{where}: {describe_row(i, ids, what=what)} has targets summing to {sums[i]:.4f}, not 1 "
                        f"(tolerance {tol:g}; {int(off.sum())} such row(s)); {fix_sum}")


def _check_blanks(values: np.ndarray, *, where: str, names: Sequence[str],
                  ids: Sequence[Any] | np.ndarray | None) -> None:
    """A row blank in some columns but not all is an error (all blank: unlabelled)."""
    nan = ~np.isfinite(values)
    bad = nan.any(axis=1) & ~nan.all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cols = [names[j] for j in np.flatnonzero(nan[i])]
        raise DataError(f"{where}: {describe_row(i, ids)} has no value (NaN or blank) in {cols}; fill them, or blank "
                        f"the whole row to leave it unlabelled")


def assign_targets(table: Table, cfg: LabelSplitConfig, *, where: str,
                   ids: Sequence[Any] | np.ndarray | None = None) -> TargetSet | None:
    """Read the soft labels (``target_cols`` / ``votes_cols`` / ``count_col``) of every row of ``table``.

    A row blank (NaN / masked) in every target column is unlabelled; ``normalize_targets``
    renormalises rows that do not sum to 1, else such a row is a :class:`~astrotl.errors.DataError`
    naming it (as are negative values and partly blank rows).

    Returns
    -------
    TargetSet or None
        ``None`` when the config names no target columns.
    """
    if cfg.target_cols is None and cfg.votes_cols is None:
        return None
    cols = cfg.target_cols if cfg.target_cols is not None else cfg.votes_cols
    names = list(cfg.target_names) if cfg.target_names is not None else list(cols)
    votes = None
    if cfg.votes_cols is not None:
        votes = _float_columns(table, cfg.votes_cols, where=where, key="votes_cols")
        _check_blanks(votes, where=where, names=cfg.votes_cols, ids=ids)
        neg = np.isfinite(votes) & (votes < 0)
        if neg.any():
            i, j = (int(a[0]) for a in np.nonzero(neg))
            raise DataError(f"{where}: {describe_row(i, ids)} has a negative vote count {votes[i, j]:g} in "
                            f"'{cfg.votes_cols[j]}'; counts must be >= 0, fix the row")
    if cfg.target_cols is not None:
        values = _float_columns(table, cfg.target_cols, where=where, key="target_cols")
    else:
        total = votes.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(total > 0, votes / np.where(total > 0, total, 1.0), np.nan)
    if cfg.normalize_targets:
        _check_blanks(values, where=where, names=names, ids=ids)
        neg = np.isfinite(values) & (values < 0)
        if neg.any():
            i, j = (int(a[0]) for a in np.nonzero(neg))
            raise DataError(f"{where}: {describe_row(i, ids)} has a negative target {values[i, j]:g} in "
                            f"'{names[j]}'; target fractions must be >= 0, fix the row")
        sums = values.sum(axis=1, keepdims=True)
        zero = np.isfinite(sums[:, 0]) & (sums[:, 0] <= 0)
        if zero.any():
            i = int(np.flatnonzero(zero)[0])
            raise DataError(f"{where}: {describe_row(i, ids)} has all targets 0 and cannot be normalised; give at least "
                            f"one non-zero fraction, or blank the row to leave it unlabelled")
        values = values / sums
    check_target_rows(values, where=where, names=names, ids=ids, allow_unlabelled=True)
    if cfg.count_col is not None:
        n = _float_columns(table, [cfg.count_col], where=where, key="count_col")[:, 0]
        labelled = np.isfinite(values).all(axis=1)
        bad = labelled & ~(np.isfinite(n) & (n >= 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: {describe_row(i, ids)} has {n[i]:g} voters in '{cfg.count_col}' (data.count_col); "
                            f"give a count >= 0 for every labelled row")
        votes = np.where(labelled[:, None], np.round(values * n[:, None]), np.nan)
    elif votes is not None:
        votes = np.where(np.isfinite(values).all(axis=1)[:, None], votes, np.nan)
    return TargetSet(names, values, votes)
