"""Combine the predictions of K models into one per-candidate ensemble classification.

Whitmore et al. (2021, MNRAS 506, 5294; Appendix 10.1) classify every PHANGS-HST cluster
candidate with twenty models (ten ResNet18 and ten VGG19-BN, Wei et al. 2020) and consolidate
"the resulting classifications ... into a single file in which we tabulate the per-candidate
classification mean, median, mode, standard deviation, and a quality factor defined as the
fraction of outcomes matching the mode, alongside the individual classifications". This module
does exactly that for any K prediction tables (typically the ``predictions.ecsv`` of K finished
``astrotl run`` directories), matched by their ``id`` column. Nothing in it is specific to PHANGS:
any class codes work for the mode and the quality factor, and any *numeric* codes for the mean,
median and standard deviation.

Choices the paper does not state, made here and configurable:

* **mode ties** -- with an even number of models two classes can be equally frequent. By default
  (``tie_break="smallest"``) the smallest class code wins (numerically smallest for numeric
  codes, lexicographically for others); ``tie_break="first"`` takes, among the tied classes, the
  one voted for by the earliest model in the input order. Ties are flagged in ``mode_tie``.
* **standard deviation** -- population standard deviation (``ddof=0``) across the K models.
* **different candidate sets** -- by default an error (the runs were not made on the same
  candidates); ``on_mismatch="intersection"`` keeps only the ids present in every table and
  logs how many were dropped.

Examples
--------
>>> from astropy.table import Table
>>> a = Table({"id": [1, 2, 3], "pred_class": ["1", "2", "4"]})
>>> b = Table({"id": [3, 1, 2], "pred_class": ["4", "1", "3"]})
>>> c = Table({"id": [1, 2, 3], "pred_class": ["2", "3", "4"]})
>>> t = combine_predictions([a, b, c], names=["a", "b", "c"])
>>> t["class_mode"].tolist(), t["quality_factor"].round(2).tolist()
(['1', '3', '4'], [0.67, 0.67, 1.0])
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["combine_predictions", "ensemble_runs", "read_predictions", "class_codes", "TIE_BREAKS"]

TIE_BREAKS = ("smallest", "first")

#: Table formats the ensemble can be written as (by suffix).
OUT_SUFFIXES = (".ecsv", ".fits", ".csv")

#: Columns of a predictions table that describe one model's output; not carried into the ensemble.
_MODEL_COLUMNS = re.compile(r"^(pred_class|pred_prob|p_.+|index)$")


def read_predictions(path: str | os.PathLike) -> Table:
    """Read a run directory's ``predictions.ecsv`` (or any table file astropy can read).

    Parameters
    ----------
    path : str or path-like
        A finished run directory (containing ``predictions.ecsv``) or a table file.

    Raises
    ------
    DataError
        If the path does not exist, the run has no predictions, or the file cannot be parsed.
    """
    p = Path(path)
    if p.is_dir():
        f = p / "predictions.ecsv"
        if not f.is_file():
            raise DataError(f"run directory {p} has no predictions.ecsv; pass a finished run directory "
                            f"(astrotl run writes predictions.ecsv at the end) or a table file")
        p = f
    elif not p.is_file():
        raise DataError(f"{p} does not exist; pass a run directory or a predictions .ecsv file")
    try:
        return Table.read(p, format="ascii.ecsv" if p.suffix == ".ecsv" else None)
    except Exception as exc:  # astropy raises many different types for malformed files
        raise DataError(f"cannot read {p} as a table ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                        f"pass an ECSV/FITS table with one row per candidate") from exc


def class_codes(values) -> tuple[np.ndarray, np.ndarray | None]:
    """Canonical string codes of class labels, and their numeric values if all are numbers.

    ``1``, ``1.0``, ``"1"`` and ``"1.0"`` all become ``"1"``; ``4.9`` and ``"4.9"`` become ``"4.9"``.
    Non-integral codes given as strings are kept as written, so the PHANGS sub-classes ``"4.1"``
    (star) and ``"4.10"`` (too faint to tell) stay distinct.

    Parameters
    ----------
    values : array-like
        Class labels (numbers or strings). Masked, ``None``, NaN or empty entries are returned
        as ``""``.

    Returns
    -------
    codes : ndarray of str
        Canonical codes.
    numeric : ndarray of float or None
        The codes as floats (NaN for missing entries), or ``None`` if any non-missing code is
        not a number.
    """
    arr = np.ma.asarray(values)
    mask = np.ma.getmaskarray(arr)
    raw = np.asarray(arr.data)
    codes = np.empty(len(raw), dtype=object)
    numeric = np.full(len(raw), np.nan)
    is_numeric = True
    for i, v in enumerate(raw):
        if mask[i] or v is None:
            codes[i] = ""
            continue
        s = str(v).strip()
        if s == "" or s.lower() in ("nan", "--"):
            codes[i] = ""
            continue
        try:
            f = float(s)
        except ValueError:
            is_numeric = False
            codes[i] = s
            continue
        if not np.isfinite(f):
            codes[i] = ""
            continue
        numeric[i] = f
        if f == int(f):
            codes[i] = str(int(f))
        elif isinstance(v, str | np.str_):
            codes[i] = s  # keep "4.10" (PHANGS sub-class 10 of class 4) distinct from "4.1"
        else:
            codes[i] = repr(float(f))
    return codes.astype(str), (numeric if is_numeric else None)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    def clean(s: str) -> str:
        return re.sub(r"[^0-9A-Za-z_]+", "_", s).strip("_") or "model"

    base = [clean(p.stem if p.is_file() else p.name) for p in paths]
    if len(set(base)) == len(base):
        return base
    withparent = [clean(f"{p.resolve().parent.name}_{b}") for p, b in zip(paths, base)]
    if len(set(withparent)) == len(withparent):
        return withparent
    return [f"m{i:02d}" for i in range(len(paths))]


def _check_table(t: Table, name: str, id_col: str, class_col: str) -> None:
    if len(t) == 0:
        raise DataError(f"predictions of '{name}' are empty (0 rows); every ensemble member needs "
                        f"one row per candidate")
    for col in (id_col, class_col):
        if col not in t.colnames:
            raise DataError(f"predictions of '{name}' have no column '{col}'; columns present: "
                            f"{', '.join(t.colnames)} (choose the id/class columns with id_col/class_col)")
    ids = np.asarray(t[id_col])
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise DataError(f"predictions of '{name}' have {len(ids) - len(uniq)} duplicate ids in '{id_col}' "
                        f"(e.g. {', '.join(map(str, dup[:5]))}); each candidate must appear once")


#: Catalogue columns compared between ensemble members to make sure equal ids mean equal objects.
_IDENTITY_COLUMNS = ("true_class", "x", "y", "ra", "dec", "mag_F555W", "subclass")


def _check_same_objects(tables, names, rows_of, id_col: str, class_col: str) -> None:
    """Equal ids must be the same objects: compare the catalogue columns the members share."""
    first, rows0 = tables[0], rows_of[0]
    for col in _IDENTITY_COLUMNS:
        if col in (id_col, class_col) or col not in first.colnames:
            continue
        ref = np.ma.filled(np.ma.asarray(first[col][rows0]), np.nan if first[col].dtype.kind == "f" else "")
        for t, name, rows in zip(tables[1:], names[1:], rows_of[1:]):
            if col not in t.colnames:
                continue
            val = np.ma.filled(np.ma.asarray(t[col][rows]), np.nan if t[col].dtype.kind == "f" else "")
            if ref.dtype.kind == "f" and val.dtype.kind == "f":
                same = np.isclose(ref, val, rtol=1e-6, atol=1e-6, equal_nan=True)
            else:
                same = ref.astype(str) == val.astype(str)
            if not same.all():
                raise DataError(f"'{names[0]}' and '{name}' give different '{col}' for {int((~same).sum())} of "
                                f"{len(same)} ids: the runs were made on different candidates; ensemble only runs "
                                f"predicting the same data (same data config and seed)")


def combine_predictions(
    tables: Sequence[Table],
    names: Sequence[str] | None = None,
    *,
    class_col: str = "pred_class",
    id_col: str = "id",
    on_mismatch: str = "error",
    tie_break: str = "smallest",
    numeric_stats: bool = True,
    ddof: int = 0,
) -> Table:
    """Ensemble statistics of K classifications of the same candidates.

    Implements the consolidation of Whitmore et al. (2021, Appendix 10.1): per candidate the
    mean, median, mode and standard deviation of the K class codes, the quality factor
    ("the fraction of outcomes matching the mode") and each model's class.

    Parameters
    ----------
    tables : sequence of Table
        K >= 1 prediction tables, each with ``id_col`` and ``class_col``; ids must be unique
        within a table. Row order does not matter (tables are matched by id).
    names : sequence of str, optional
        One short name per table, used for the per-model columns ``class_<name>``
        (default ``m00``, ``m01``, ...).
    class_col, id_col : str
        Column holding each model's class, and the candidate identifier.
    on_mismatch : {"error", "intersection"}
        What to do when the tables do not hold the same set of ids: raise :class:`DataError`
        (default, the counts are in the message) or keep the ids common to all tables.
    tie_break : {"smallest", "first"}
        How a tie for the mode is broken (the paper does not say): the smallest class code, or
        the tied class chosen by the earliest model in ``tables``. Tied rows get ``mode_tie``.
    numeric_stats : bool
        Compute ``class_mean``, ``class_median`` and ``class_std`` (needs numeric class codes,
        e.g. the PHANGS 1-4 or 4.9). With ``False`` only the mode and quality factor are given.
    ddof : int
        Delta degrees of freedom of the standard deviation (0: population std).

    Returns
    -------
    Table
        One row per candidate, sorted by id: ``id``; the non-model columns of the first table
        (catalogue columns such as ``x``, ``y``, magnitudes, ``true_class``); ``class_<name>``
        for each model; ``class_mean``, ``class_median``, ``class_std`` (if ``numeric_stats``);
        ``class_mode`` (same type as the input codes: strings stay strings), ``quality_factor``,
        ``n_mode`` (models agreeing with the mode), ``mode_tie``, ``n_models``; and
        ``p_<c>_mean`` (mean probability over models) when every table has a ``p_<c>`` column.

    Raises
    ------
    DataError
        Empty table, missing column, duplicate ids, mismatched id sets (with ``"error"``),
        equal ids with different catalogue values (``true_class``, ``x``, ``y``, ``ra``,
        ``dec``, ``mag_F555W``, ``subclass``: the runs predicted different objects),
        missing class values, or non-numeric codes when ``numeric_stats`` is true.
    ConfigError
        Bad ``on_mismatch``, ``tie_break`` or ``names``.
    """
    if on_mismatch not in ("error", "intersection"):
        raise ConfigError(f"on_mismatch must be 'error' or 'intersection', got {on_mismatch!r}")
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    tables = list(tables)
    if not tables:
        raise DataError("no prediction tables given; pass at least one run directory or table")
    k = len(tables)
    names = [f"m{i:02d}" for i in range(k)] if names is None else [str(n) for n in names]
    if len(names) != k or len(set(names)) != k:
        raise ConfigError(f"names must be {k} distinct strings, one per table; got {names}")
    for t, n in zip(tables, names):
        _check_table(t, n, id_col, class_col)

    id_sets = [set(np.asarray(t[id_col]).tolist()) for t in tables]
    common = set.intersection(*id_sets)
    union = set.union(*id_sets)
    if len(common) != len(union):
        sizes = ", ".join(f"{n}: {len(s)}" for n, s in zip(names, id_sets))
        if on_mismatch == "error":
            raise DataError(f"ensemble members hold different candidates ({sizes}; {len(common)} ids in all, "
                            f"{len(union)} in any); run every model on the same candidates or use the "
                            f"intersection (--intersection / on_mismatch='intersection')")
        log.warning("ensemble: keeping the %d ids common to all %d tables (%d ids dropped; %s)",
                    len(common), k, len(union) - len(common), sizes)
        if not common:
            raise DataError(f"ensemble members have no candidate id in common ({sizes}); "
                            f"check that the runs used the same catalogue")

    ids = np.array(sorted(common))
    n = len(ids)
    codes = np.empty((n, k), dtype=object)
    numeric = np.full((n, k), np.nan)
    all_numeric = True
    input_is_str = []
    rows_of = []
    for t in tables:
        order = np.argsort(np.asarray(t[id_col]), kind="stable")
        rows_of.append(order[np.searchsorted(np.asarray(t[id_col])[order], ids)])
    _check_same_objects(tables, names, rows_of, id_col, class_col)
    for j, (t, name) in enumerate(zip(tables, names)):
        rows = rows_of[j]
        c, num = class_codes(t[class_col][rows])
        missing = c == ""
        if missing.any():
            raise DataError(f"predictions of '{name}' have {int(missing.sum())} missing values in '{class_col}' "
                            f"(e.g. id {ids[missing][0]}); every candidate needs a class from every model")
        codes[:, j] = c
        input_is_str.append(t[class_col].dtype.kind in "US")
        if num is None:
            all_numeric = False
            if numeric_stats:
                bad = sorted(set(c.tolist()))[:5]
                raise DataError(f"class column '{class_col}' of '{name}' has non-numeric codes ({', '.join(bad)}); "
                                f"mean/median/std need numbers: map the classes to numeric codes or use "
                                f"mode only (--mode-only / numeric_stats=False)")
        else:
            numeric[:, j] = num
    codes = codes.astype(str)

    # mode via a (candidate x distinct-class) count matrix
    uniq, inverse = np.unique(codes, return_inverse=True)  # lexicographic order
    inverse = inverse.reshape(n, k)
    if all_numeric:  # re-order the distinct codes numerically (ties of value, e.g. 4.1/4.10, by string)
        uniq_num = np.full(len(uniq), np.nan)
        uniq_num[inverse.ravel()] = numeric.ravel()
        perm = np.lexsort((uniq, uniq_num))
        remap = np.empty(len(uniq), dtype=np.int64)
        remap[perm] = np.arange(len(uniq))
        uniq, uniq_num, inverse = uniq[perm], uniq_num[perm], remap[inverse]
    counts = np.zeros((n, len(uniq)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), inverse.ravel()), 1)
    n_mode = counts.max(axis=1)
    tied = counts == n_mode[:, None]
    n_tied = tied.sum(axis=1)
    if tie_break == "smallest":
        mode_idx = np.argmax(tied, axis=1)  # first True = smallest code
    else:
        voted_tied = tied[np.arange(n)[:, None], inverse]  # (n, k): model j voted for a tied class
        first = np.argmax(voted_tied, axis=1)
        mode_idx = inverse[np.arange(n), first]

    out = Table()
    out[id_col] = ids
    first_t = tables[0]
    rows0 = rows_of[0]
    for col in first_t.colnames:
        if col in (id_col, class_col) or _MODEL_COLUMNS.match(col):
            continue
        out[col] = first_t[col][rows0]
    for j, name in enumerate(names):
        if all_numeric and not input_is_str[j]:
            out[f"class_{name}"] = numeric[:, j]
        else:
            out[f"class_{name}"] = codes[:, j]
    if numeric_stats:
        out["class_mean"] = numeric.mean(axis=1)
        out["class_median"] = np.median(numeric, axis=1)
        out["class_std"] = numeric.std(axis=1, ddof=ddof) if k > ddof else np.full(n, np.nan)
    if all_numeric and not any(input_is_str):
        out["class_mode"] = uniq_num[mode_idx]
    else:
        out["class_mode"] = uniq[mode_idx]
    out["quality_factor"] = n_mode / k
    out["n_mode"] = n_mode
    out["mode_tie"] = n_tied > 1
    out["n_models"] = np.full(n, k)
    prob_cols = [c for c in tables[0].colnames if c.startswith("p_")]
    prob_cols = [c for c in prob_cols if all(c in t.colnames for t in tables)]
    for c in prob_cols:
        stack = np.zeros(n)
        for t, rows in zip(tables, rows_of):
            stack += np.asarray(t[c][rows], dtype=float)
        out[f"{c}_mean"] = stack / k

    desc = {
        "class_mean": "mean of the model classes (Whitmore et al. 2021, App. 10.1)",
        "class_median": "median of the model classes",
        "class_std": f"standard deviation of the model classes (ddof={ddof})",
        "class_mode": f"most frequent class; ties broken by '{tie_break}'",
        "quality_factor": "fraction of models whose class equals the mode (Whitmore et al. 2021)",
        "n_mode": "number of models agreeing with the mode",
        "mode_tie": "two or more classes were equally frequent",
        "n_models": "number of models in the ensemble",
    }
    for col, d in desc.items():
        if col in out.colnames:
            out[col].description = d
    out.meta["ensemble"] = {"members": list(names), "class_col": class_col, "id_col": id_col,
                            "tie_break": tie_break, "ddof": ddof, "on_mismatch": on_mismatch,
                            "n_dropped": len(union) - len(common)}
    out.meta["references"] = ["Whitmore et al. 2021, MNRAS 506, 5294 (Appendix 10.1)"]
    return out


def ensemble_runs(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
    **kwargs,
) -> Table:
    """Combine the ``predictions.ecsv`` of several runs (see :func:`combine_predictions`).

    Parameters
    ----------
    paths : sequence of path-like
        Run directories or prediction table files.
    out : path-like, optional
        Where to write the ensemble table (atomically; format from the suffix).
    names : sequence of str, optional
        Member names (default: the run directory names, made unique).
    overwrite : bool
        Replace an existing ``out`` file (otherwise an existing file is an
        :class:`~astrotl.errors.OutputError`, checked before any run is read).
    **kwargs
        Passed to :func:`combine_predictions`.
    """
    from .io import check_output_file, write_table

    if out is not None:
        check_output_file(out, overwrite=overwrite, suffixes=OUT_SUFFIXES)
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no run directories given; pass two or more finished run directories")
    tables = [read_predictions(p) for p in paths]
    names = list(names) if names is not None else _unique_names(paths)
    result = combine_predictions(tables, names, **kwargs)
    result.meta["ensemble"]["paths"] = [str(p) for p in paths]
    if out is not None:
        write_table(out, result)
    return result
