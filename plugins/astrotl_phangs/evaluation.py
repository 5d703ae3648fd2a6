"""The PHANGS-HST evaluation of a cluster classification (Whitmore et al. 2021, MNRAS 506, 5294).

Whitmore et al. do not treat either of two classifications as the truth; they compare *pairs* of
classifiers (human vs human, human vs CNN, CNN vs CNN). This module implements their measures:

**Matching** (Sect. 4, Table 1 note). "The first step is to match the two catalogues being
compared, so that we are working with the intersection of the two studies rather than the union.
A matching radius of two pixels is used", with "one-to-one matches in position".
:func:`match_catalogues` matches by ``id`` when both catalogues hold the same ids, else by
position: pairs that are each other's nearest neighbour within the radius (mutual nearest
neighbours, which makes the matching one-to-one; the paper does not say how it resolves
conflicts). Only objects classified by both (codes in ``classes``; LEGUS class 0 = not inspected
is thus left out) enter the statistics.

**Agreement fraction** of a class (Sect. 4): the number of objects put in the class by both
studies divided by (a) the number the first study puts in the class and (b) the number the
second study puts in it; "we adopt the mean of these two ratios as the agreement fraction".
Table 1 also lists the mean over the four classes and Class 1+2 taken as one class (Sect. 4.1,
the "standard" sample): :func:`agreement_fractions`.

**Confusion matrix** (Sect. 6.3.2, footnote 3): "we do not define one study as ground truth but
instead average the results for the two studies ... for the off-diagonal values it requires a
reflection across the diagonal to identify the appropriate box to average". With ``C[i, j]`` the
number of objects that A puts in class i and B in class j, :func:`averaged_confusion_matrix`
returns ``M[i, j] = (C[i, j] / N_A(i) + C[i, j] / N_B(j)) / 2``: the mean of A-as-truth
(row-normalised) and B-as-truth (column-normalised, i.e. B's matrix reflected across the
diagonal). The diagonal is then exactly the agreement fraction, and the off-diagonal cells keep
the direction of a systematic difference (e.g. PHANGS 4 -> LEGUS 2 at 29 % against the converse
5 %, which the paper reads from its Fig. 21).

**Agreement versus magnitude, crowding and background** (Sects. 4.2-4.4): the agreement
fractions in bins of a catalogue column. For magnitude "the bins have been selected to contain
roughly equal numbers of sources (of all classes)"; four bins are used (the paper quotes four
bin medians and four crowding bins). The paper does not give the crowding or background bin
edges, so all columns default to four equal-count bins (``n_bins``); a column with no more
distinct values than ``n_bins`` (e.g. a neighbour count) gets one bin per value.

**Colour-colour boxes and the Quality Ratio** (Sect. 5, Table 2). U-B against V-I with
U = F336W, B = F438W (F435W on ACS), V = F555W, I = F814W (Vega magnitudes) and four age boxes
(:data:`PAPER_BOXES`, from the list in Sect. 5). Box 3 reads ``0.2 < V-I < 0.95`` in Sect. 5
but ``0.1 < V-I < 0.95`` in the notes of Table 2; the default follows Sect. 5 (it then shares
Box 2's V-I range, as its other edges do) and a different set of boxes can be passed. The
Quality Ratio of a class/box row is "the standard deviation of the [N] measurements divided by
the square root of the mean number of objects in the box"; the sample standard deviation
(``ddof=1``) reproduces Table 2 (e.g. NGC 1566 Class 2/Box 3: 73/85/34/45 -> 3.1). It is
computed only when every classifier has at least ``min_count`` = 12 objects in the box (the text
says "12 or more", the table note "more than 12") and not for Class 4 (note d of Table 2).
The per-classifier "figure of merit" of Fig. 18 (mean 1.01 +- 0.18 for PHANGS-HST, etc.) is read
here as the mean and standard deviation over the qualifying rows of count / (mean count of all
classifiers); the paper does not spell this out.

:func:`compare_classifications` runs all of the above for two tables and writes ECSV tables and
PNG plots (atomically); :func:`evaluate_run` does it for a finished ``astrotl run`` directory
(human ``true_class`` against model ``pred_class``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from astrotl.ensemble import class_codes
from astrotl.errors import ConfigError, DataError
from astrotl.io import save_figure, write_json, write_table

log = logging.getLogger(__name__)

__all__ = [
    "ColourBox", "PAPER_BOXES", "CLASSES", "COMBINED", "main_class_labels", "match_catalogues",
    "agreement_fractions", "averaged_confusion_matrix", "binned_agreement", "colours", "colour_box",
    "box_counts", "quality_ratio", "compare_classifications", "evaluate_run", "DEFAULT_MATCH_RADIUS_PX",
]

#: The four PHANGS-HST / LEGUS main classes.
CLASSES: tuple[str, ...] = ("1", "2", "3", "4")
#: Combined classes scored as one: Class 1+2 is the paper's "standard" cluster sample.
COMBINED: dict[str, tuple[str, ...]] = {"1+2": ("1", "2")}
#: "A matching radius of two pixels is used" (Sect. 4).
DEFAULT_MATCH_RADIUS_PX = 2.0
#: Magnitudes at or above this are sentinels (LEGUS: 99.999 not detected, 66.666 outside the field).
MAG_SENTINEL = 50.0


@dataclass(frozen=True)
class ColourBox:
    """A rectangle in the (V-I, U-B) plane; bounds are exclusive as in the paper (``lo < c < hi``)."""

    number: int
    label: str
    vi_min: float
    vi_max: float
    ub_min: float
    ub_max: float

    def contains(self, ub: np.ndarray, vi: np.ndarray) -> np.ndarray:
        ub = np.asarray(ub, dtype=float)
        vi = np.asarray(vi, dtype=float)
        with np.errstate(invalid="ignore"):
            return (vi > self.vi_min) & (vi < self.vi_max) & (ub > self.ub_min) & (ub < self.ub_max)


#: Whitmore et al. (2021) Sect. 5: the age boxes of the U-B vs V-I diagram (no reddening assumed).
PAPER_BOXES: tuple[ColourBox, ...] = (
    ColourBox(1, "old (>1 Gyr)", 0.95, 1.5, -0.4, 1.0),
    ColourBox(2, "intermediate (0.1-1 Gyr)", 0.2, 0.95, -0.4, 1.0),
    ColourBox(3, "young (10-100 Myr)", 0.2, 0.95, -1.1, -0.4),  # Table 2 note: 0.1 < V-I
    ColourBox(4, "very young (<10 Myr)", -0.6, 0.95, -1.8, -1.1),
)


# -- labels and matching ---------------------------------------------------------------------------


def main_class_labels(values, main_class: bool = True) -> np.ndarray:
    """Canonical class codes as strings; with ``main_class`` sub-classes map to their class.

    ``1``, ``1.0`` and ``"1"`` give ``"1"``; with ``main_class=True`` the PHANGS sub-classes
    ``4.1`` ... ``4.12`` (and 4.9, redundant) give ``"4"``. Missing values give ``""``.
    """
    codes, numeric = class_codes(values)
    if not main_class:
        return codes
    out = codes.astype(object)
    for i, c in enumerate(codes):
        if c and "." in c:
            head = c.split(".", 1)[0]
            if head.lstrip("-").isdigit():
                out[i] = str(int(head))
    return out.astype(str)


def _require(table: Table, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in table.colnames]
    if missing:
        raise DataError(f"{what} has no column {', '.join(repr(c) for c in missing)}; columns present: "
                        f"{', '.join(table.colnames)} (choose the column names with the options)")


def match_catalogues(
    a: Table,
    b: Table,
    *,
    by: str = "auto",
    radius: float = DEFAULT_MATCH_RADIUS_PX,
    id_col: str = "id",
    xy: tuple[str, str] = ("x", "y"),
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pairs of rows of ``a`` and ``b`` describing the same object (the intersection).

    Parameters
    ----------
    a, b : Table
        The two catalogues.
    by : {"auto", "id", "position"}
        ``"id"``: rows with equal ``id_col``. ``"position"``: one-to-one matches within
        ``radius`` pixels (mutual nearest neighbours). ``"auto"``: ``"id"`` when both tables have
        ``id_col`` with the same set of ids (e.g. two classifications of one catalogue), else
        ``"position"`` (Whitmore et al. 2021, Sect. 4: two catalogues from different studies).
    radius : float
        Matching radius in pixels (paper: 2).
    id_col : str
        Identifier column.
    xy : (str, str)
        Position columns (the same pixel frame in both tables).

    Returns
    -------
    ia, ib : ndarray of int
        Matched row indices into ``a`` and ``b``.
    info : dict
        ``method``, ``n_a``, ``n_b``, ``n_matched``.
    """
    if by not in ("auto", "id", "position"):
        raise ConfigError(f"match must be 'auto', 'id' or 'position', got {by!r}")
    if len(a) == 0 or len(b) == 0:
        raise DataError(f"cannot compare an empty catalogue ({len(a)} and {len(b)} rows); both need rows")
    method = by
    if by == "auto":
        same_ids = (id_col in a.colnames and id_col in b.colnames
                    and set(np.asarray(a[id_col]).tolist()) == set(np.asarray(b[id_col]).tolist()))
        has_xy = all(c in a.colnames for c in xy) and all(c in b.colnames for c in xy)
        method = "id" if same_ids or not has_xy else "position"
    if method == "id":
        _require(a, [id_col], "first catalogue")
        _require(b, [id_col], "second catalogue")
        for t, name in ((a, "first"), (b, "second")):
            ids = np.asarray(t[id_col])
            if len(np.unique(ids)) != len(ids):
                raise DataError(f"{name} catalogue has duplicate ids in '{id_col}' "
                                f"({len(ids) - len(np.unique(ids))} repeats); ids must be unique to match by id")
        ida = np.asarray(a[id_col])
        idb = np.asarray(b[id_col])
        _, ia, ib = np.intersect1d(ida, idb, assume_unique=True, return_indices=True)
    else:
        _require(a, list(xy), "first catalogue")
        _require(b, list(xy), "second catalogue")
        if not (np.isfinite(radius) and radius > 0):
            raise ConfigError(f"match radius must be a positive number of pixels, got {radius!r} (the paper uses 2)")
        pa = np.column_stack([np.asarray(a[c], dtype=float) for c in xy])
        pb = np.column_stack([np.asarray(b[c], dtype=float) for c in xy])
        oka = np.all(np.isfinite(pa), axis=1)
        okb = np.all(np.isfinite(pb), axis=1)
        ra, rb = np.flatnonzero(oka), np.flatnonzero(okb)
        if not len(ra) or not len(rb):
            ia = ib = np.array([], dtype=np.int64)
        else:
            da, ja = cKDTree(pb[rb]).query(pa[ra], distance_upper_bound=radius)
            db, jb = cKDTree(pa[ra]).query(pb[rb], distance_upper_bound=radius)
            has = np.isfinite(da)
            cand_a = np.flatnonzero(has)
            cand_b = ja[has]
            mutual = jb[cand_b] == cand_a
            ia, ib = ra[cand_a[mutual]], rb[cand_b[mutual]]
    info = {"method": method, "n_a": len(a), "n_b": len(b), "n_matched": int(len(ia))}
    if method == "position":
        info["radius_px"] = float(radius)
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64), info


# -- agreement and confusion -------------------------------------------------------------------------


def _classified(a_lab, b_lab, classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a_lab = main_class_labels(a_lab)
    b_lab = main_class_labels(b_lab)
    if len(a_lab) != len(b_lab):
        raise DataError(f"the two classifications have different lengths ({len(a_lab)} and {len(b_lab)}); "
                        f"match the catalogues first")
    keep = np.isin(a_lab, classes) & np.isin(b_lab, classes)
    return a_lab[keep], b_lab[keep], keep


def _fractions(in_a: np.ndarray, in_b: np.ndarray) -> tuple[int, int, int, float, float, float]:
    n_a, n_b, n_both = int(in_a.sum()), int(in_b.sum()), int((in_a & in_b).sum())
    fa = n_both / n_a if n_a else np.nan
    fb = n_both / n_b if n_b else np.nan
    agree = np.nanmean([fa, fb]) if (n_a or n_b) else np.nan
    return n_a, n_b, n_both, fa, fb, float(agree)


def agreement_fractions(
    a_classes,
    b_classes,
    *,
    classes: Sequence[str] = CLASSES,
    combined: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """Per-class agreement fractions of two matched classifications (Whitmore et al. 2021, Sect. 4).

    Parameters
    ----------
    a_classes, b_classes : array-like
        Classes of the *matched* objects (same length, same order); numbers or strings, sub-classes
        such as 4.9 count as their main class. Objects not classified into ``classes`` by both
        (e.g. LEGUS class 0) are left out.
    classes : sequence of str
        The classes to score (default 1-4).
    combined : mapping, optional
        Combined classes scored as one (default ``{"1+2": ("1", "2")}``).

    Returns
    -------
    Table
        Rows: each class, ``mean`` (mean agreement of the classes, Table 1 column 5) and each
        combined class. Columns ``class``, ``n_a``, ``n_b`` (objects put in the class by each),
        ``n_both``, ``frac_a`` = n_both / n_a, ``frac_b`` = n_both / n_b and ``agreement`` (their
        mean; a ratio with a zero denominator is left out of the mean). ``meta["n"]`` is the
        number of objects compared.
    """
    classes = [str(c) for c in classes]
    combined = dict(COMBINED if combined is None else combined)
    a, b, _ = _classified(a_classes, b_classes, classes)
    rows = []
    for c in classes:
        rows.append((c, *_fractions(a == c, b == c)))
    per = [r[-1] for r in rows]
    rows.append(("mean", -1, -1, -1, np.nan, np.nan, float(np.nanmean(per)) if np.isfinite(per).any() else np.nan))
    for key, members in combined.items():
        members = [str(m) for m in members]
        rows.append((key, *_fractions(np.isin(a, members), np.isin(b, members))))
    t = Table(rows=rows, names=("class", "n_a", "n_b", "n_both", "frac_a", "frac_b", "agreement"),
              dtype=(str, int, int, int, float, float, float))
    t.meta["n"] = int(len(a))
    t.meta["description"] = ("agreement fraction = mean of n_both/n_a and n_both/n_b over the matched objects "
                             "(Whitmore et al. 2021, Sect. 4); n_* = -1 on the 'mean' row")
    return t


def averaged_confusion_matrix(a_classes, b_classes, *, classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Counts and the paper's averaged confusion matrix (Whitmore et al. 2021, Sect. 6.3.2).

    Returns
    -------
    counts : ndarray of int, shape (K, K)
        ``counts[i, j]``: objects A puts in class i and B in class j.
    averaged : ndarray of float, shape (K, K)
        ``(counts[i, j] / N_A(i) + counts[i, j] / N_B(j)) / 2``; a term whose denominator is zero
        is left out of the mean (NaN if both are). The diagonal equals the agreement fractions.
    """
    classes = [str(c) for c in classes]
    a, b, _ = _classified(a_classes, b_classes, classes)
    k = len(classes)
    idx = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((k, k), dtype=np.int64)
    if len(a):
        np.add.at(counts, (np.array([idx[v] for v in a]), np.array([idx[v] for v in b])), 1)
    na = counts.sum(axis=1, keepdims=True).astype(float)
    nb = counts.sum(axis=0, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ra = np.where(na > 0, counts / na, np.nan)
        rb = np.where(nb > 0, counts / nb, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        averaged = np.nanmean(np.stack([ra, rb]), axis=0)
    return counts, averaged


def _bin_edges(values: np.ndarray, bins: int | Sequence[float]) -> tuple[np.ndarray, bool]:
    ok = np.isfinite(values)
    if not ok.any():
        raise DataError("the binning column has no finite values; choose another column")
    if not isinstance(bins, int):
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ConfigError(f"bin edges must be an increasing list of at least two numbers, got {list(bins)}")
        return edges, False
    if bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {bins}")
    distinct = np.unique(values[ok])
    if len(distinct) <= bins:  # discrete column: one bin per value
        mids = (distinct[1:] + distinct[:-1]) / 2
        if len(distinct) == 1:
            return np.r_[distinct[0] - 0.5, distinct[0] + 0.5], True
        return np.r_[distinct[0] - 0.5, mids, distinct[-1] + 0.5], True
    edges = np.unique(np.quantile(values[ok], np.linspace(0, 1, bins + 1)))
    return edges, False


def binned_agreement(
    a_classes,
    b_classes,
    values,
    *,
    bins: int | Sequence[float] = 4,
    classes: Sequence[str] = CLASSES,
    combined: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """Agreement fractions in bins of a catalogue column (Whitmore et al. 2021, Sects. 4.2-4.4).

    Parameters
    ----------
    a_classes, b_classes : array-like
        Matched classifications.
    values : array-like of float
        The column to bin by (magnitude, crowding, background), aligned with the classes;
        objects with non-finite values are left out.
    bins : int or sequence of float
        Number of equal-count bins (default 4; bins hold "roughly equal numbers of sources (of all
        classes)", Sect. 4.2), or explicit edges. A column with at most ``bins`` distinct values
        gets one bin per value.

    Returns
    -------
    Table
        One row per bin: ``bin``, ``bin_low``, ``bin_high``, ``median`` (of the column),
        ``n``, then ``agreement_<class>`` for each class, ``agreement_mean`` and each combined
        class, and ``n_<class>`` (objects put in the class by either classifier).
    """
    classes = [str(c) for c in classes]
    combined = dict(COMBINED if combined is None else combined)
    a_lab = main_class_labels(a_classes)
    b_lab = main_class_labels(b_classes)
    v = np.asarray(np.ma.filled(np.ma.asarray(values, dtype=float), np.nan), dtype=float)
    if not (len(a_lab) == len(b_lab) == len(v)):
        raise DataError(f"classes and binning values have different lengths ({len(a_lab)}, {len(b_lab)}, {len(v)})")
    keep = np.isin(a_lab, classes) & np.isin(b_lab, classes)
    edges, discrete = _bin_edges(v[keep], bins)
    which = np.digitize(v, edges[1:-1])
    inside = np.isfinite(v) & (v >= edges[0]) & (v <= edges[-1])
    rows = []
    keys = classes + ["mean"] + list(combined)
    for i in range(len(edges) - 1):
        m = inside & (which == i)
        t = agreement_fractions(a_lab[m], b_lab[m], classes=classes, combined=combined)
        vm = v[m & keep]
        row = {"bin": i + 1, "bin_low": float(edges[i]), "bin_high": float(edges[i + 1]),
               "median": float(np.median(vm)) if len(vm) else np.nan, "n": int(t.meta["n"])}
        for r in t:
            row[f"agreement_{r['class']}"] = float(r["agreement"])
        for r in t:
            if r["class"] != "mean":
                row[f"n_{r['class']}"] = int(max(r["n_a"], r["n_b"]))
        rows.append(row)
    out = Table(rows=rows)
    out.meta["binning"] = "one bin per value" if discrete else ("equal-count" if isinstance(bins, int) else "explicit edges")
    out.meta["columns"] = [f"agreement_{k}" for k in keys]
    return out


# -- colour-colour diagram ---------------------------------------------------------------------------


def _mag(table: Table, col: str) -> np.ndarray:
    m = np.asarray(np.ma.filled(np.ma.asarray(table[col], dtype=float), np.nan), dtype=float)
    return np.where(np.isfinite(m) & (m < MAG_SENTINEL), m, np.nan)


def colours(
    table: Table,
    *,
    u: str = "F336W",
    b: Sequence[str] = ("F438W", "F435W"),
    v: str = "F555W",
    i: str = "F814W",
    prefix: str = "mag_",
) -> tuple[np.ndarray, np.ndarray]:
    """U-B and V-I colours (Vega) from magnitude columns ``<prefix><band>``.

    U = F336W, B = F438W (WFC3) or F435W (ACS; the first of ``b`` present is used), V = F555W,
    I = F814W. Non-finite magnitudes and LEGUS sentinels (99.999, 66.666) give NaN colours.

    Returns
    -------
    ub, vi : ndarray of float
    """
    b_bands = [b] if isinstance(b, str) else list(b)
    b_col = next((f"{prefix}{band}" for band in b_bands if f"{prefix}{band}" in table.colnames), None)
    needed = [f"{prefix}{u}", b_col or f"{prefix}{b_bands[0]}", f"{prefix}{v}", f"{prefix}{i}"]
    _require(table, needed, "catalogue (for U-B and V-I colours)")
    return _mag(table, needed[0]) - _mag(table, needed[1]), _mag(table, needed[2]) - _mag(table, needed[3])


def colour_box(ub, vi, boxes: Sequence[ColourBox] = PAPER_BOXES) -> np.ndarray:
    """Number of the box each object falls in (0: none, or NaN colours); first box wins on overlap."""
    ub = np.asarray(ub, dtype=float)
    out = np.zeros(len(ub), dtype=np.int64)
    for box in reversed(list(boxes)):
        out[box.contains(ub, vi)] = box.number
    return out


def quality_ratio(counts: Sequence[float]) -> float:
    """Quality Ratio: sample std of the counts / sqrt(mean count) (Whitmore et al. 2021, Sect. 5.5).

    >>> round(quality_ratio([73, 85, 34, 45]), 1)  # NGC 1566, Class 2 / Box 3 (Table 2)
    3.1
    """
    c = np.asarray(counts, dtype=float)
    if len(c) < 2 or c.mean() <= 0:
        return float("nan")
    return float(c.std(ddof=1) / np.sqrt(c.mean()))


def box_counts(
    samples: Mapping[str, tuple[Any, Any, Any]],
    *,
    classes: Sequence[str] = CLASSES,
    combined: Mapping[str, Sequence[str]] | None = None,
    boxes: Sequence[ColourBox] = PAPER_BOXES,
    min_count: int = 12,
    qr_exclude: Sequence[str] = ("4",),
) -> tuple[Table, Table]:
    """Objects per class and colour box for each classifier, with the Quality Ratio (Table 2).

    Parameters
    ----------
    samples : mapping name -> (classes, ub, vi)
        Each classifier's classes and the objects' U-B and V-I colours (each classifier may have
        its own catalogue).
    classes, combined : see :func:`agreement_fractions`.
    boxes : sequence of ColourBox
        Default: :data:`PAPER_BOXES`.
    min_count : int
        QR is computed only if every classifier has at least this many objects in the box
        (paper: 12).
    qr_exclude : sequence of str
        Classes without QR (paper: Class 4, whose numbers depend on the candidate selection).

    Returns
    -------
    rows : Table
        ``class``, ``box``, ``box_label``, ``n_<name>`` per classifier, ``mean``, ``std``
        (ddof=1), ``qr`` (NaN unless it qualifies), ``qr_good`` (QR <= 1) and ``ratio_<name>``
        (count / mean count).
    merit : Table
        Per classifier the mean and std of ``ratio_<name>`` over the rows with a QR (the
        Fig. 18 figure of merit as read here), and the number of such rows.
    """
    if not samples:
        raise DataError("no classifications given for the colour-colour statistics")
    classes = [str(c) for c in classes]
    combined = dict(COMBINED if combined is None else combined)
    groups = [(c, (c,)) for c in classes] + [(k, tuple(str(m) for m in v)) for k, v in combined.items()]
    names = list(samples)
    labelled = {}
    for name, (lab, ub, vi) in samples.items():
        lab = main_class_labels(lab)
        if not (len(lab) == len(ub) == len(vi)):
            raise DataError(f"classifier '{name}': classes and colours have different lengths")
        labelled[name] = (lab, colour_box(ub, vi, boxes))
    rows = []
    for gname, members in groups:
        for box in boxes:
            row: dict[str, Any] = {"class": gname, "box": box.number, "box_label": box.label}
            counts = []
            for name in names:
                lab, bx = labelled[name]
                n = int((np.isin(lab, members) & (bx == box.number)).sum())
                row[f"n_{name}"] = n
                counts.append(n)
            c = np.asarray(counts, dtype=float)
            row["mean"] = float(c.mean())
            row["std"] = float(c.std(ddof=1)) if len(c) > 1 else np.nan
            excluded = any(m in qr_exclude for m in members)
            ok = len(c) > 1 and c.min() >= min_count and not excluded
            row["qr"] = quality_ratio(c) if ok else np.nan
            row["qr_good"] = bool(ok and row["qr"] <= 1.0)
            for name, n in zip(names, counts):
                row[f"ratio_{name}"] = n / row["mean"] if row["mean"] > 0 else np.nan
            rows.append(row)
    table = Table(rows=rows)
    table.meta["boxes"] = {b.number: {"label": b.label, "vi": [b.vi_min, b.vi_max], "ub": [b.ub_min, b.ub_max]} for b in boxes}
    table.meta["description"] = (f"objects per class and U-B/V-I box; QR = std(ddof=1)/sqrt(mean) when every "
                                 f"classifier has >= {min_count} (Whitmore et al. 2021, Table 2)")
    q = np.isfinite(np.asarray(table["qr"], dtype=float))
    merit = Table({
        "classifier": names,
        "ratio_mean": [float(np.mean(table[f"ratio_{n}"][q])) if q.any() else np.nan for n in names],
        "ratio_std": [float(np.std(table[f"ratio_{n}"][q], ddof=1)) if q.sum() > 1 else np.nan for n in names],
        "n_rows": [int(q.sum())] * len(names),
    })
    merit.meta["description"] = "count / mean count over the class-box rows that have a QR (cf. Fig. 18)"
    return table, merit


# -- plots ------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agreement_plot(table: Table, path: Path, title: str) -> Path:
    """Bar chart of agreement fractions (classes, mean, combined) as in Fig. 5."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = [str(c) for c in table["class"]]
    vals = np.asarray(table["agreement"], dtype=float)
    colours_ = ["#4c72b0" if lab not in ("mean",) and "+" not in lab else "#dd8452" for lab in labels]
    ax.bar(range(len(vals)), np.nan_to_num(vals), color=colours_)
    for k, v in enumerate(vals):
        ax.text(k, (0 if not np.isfinite(v) else v) + 0.02, "n/a" if not np.isfinite(v) else f"{v:.2f}",
                ha="center", fontsize=8)
    ax.set_xticks(range(len(vals)), [f"C{lab}" if lab != "mean" else "mean" for lab in labels])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("agreement fraction")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def averaged_confusion_plot(counts: np.ndarray, averaged: np.ndarray, classes: Sequence[str], path: Path,
                            a_name: str, b_name: str) -> Path:
    """Heat map of the averaged confusion matrix (Fig. 21), counts in brackets."""
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.1 * k + 1.5))
    im = ax.imshow(np.nan_to_num(averaged), vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            v = averaged[i, j]
            ax.text(j, i, ("--" if not np.isfinite(v) else f"{v:.2f}") + f"\n({int(counts[i, j])})", ha="center",
                    va="center", fontsize=9, color="white" if np.isfinite(v) and v > 0.55 else "black")
    ax.set_xticks(range(k), [str(c) for c in classes])
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel(f"{b_name} class")
    ax.set_ylabel(f"{a_name} class")
    ax.set_title(f"{a_name} vs {b_name}: averaged confusion\n(mean of both as reference; N={int(counts.sum())})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def binned_agreement_plot(table: Table, column: str, path: Path, title: str) -> Path:
    """Agreement per class against the bins of ``column`` (Figs. 6-8)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = np.asarray(table["median"], dtype=float)
    for key in table.meta.get("columns", []):
        if key not in table.colnames:
            continue
        style = "k--" if key.endswith("mean") else "-o"
        label = key.replace("agreement_", "C").replace("Cmean", "mean")
        ax.plot(x, np.asarray(table[key], dtype=float), style, ms=4, label=label)
    ax.set_xlabel(f"{column} (bin median)")
    ax.set_ylabel("agreement fraction")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def colour_colour_plot(samples: Mapping[str, tuple[Any, Any, Any]], path: Path, *,
                       classes: Sequence[str] = CLASSES, combined: Mapping[str, Sequence[str]] | None = None,
                       boxes: Sequence[ColourBox] = PAPER_BOXES) -> Path:
    """U-B vs V-I per class (rows) and classifier (columns) with the age boxes (Figs. 9-14)."""
    plt = _plt()
    combined = dict(COMBINED if combined is None else combined)
    groups = [(c, (c,)) for c in classes] + [(k, tuple(str(m) for m in v)) for k, v in combined.items()]
    names = list(samples)
    fig, axes = plt.subplots(len(groups), len(names), figsize=(3.2 * len(names), 2.8 * len(groups)),
                             squeeze=False, sharex=True, sharey=True)
    for col, name in enumerate(names):
        lab, ub, vi = samples[name]
        lab = main_class_labels(lab)
        ub = np.asarray(ub, dtype=float)
        vi = np.asarray(vi, dtype=float)
        bx = colour_box(ub, vi, boxes)
        for row, (gname, members) in enumerate(groups):
            ax = axes[row, col]
            m = np.isin(lab, members)
            ax.scatter(vi[m], ub[m], s=4, alpha=0.6, color="C0", rasterized=True)
            for box in boxes:
                ax.add_patch(plt.Rectangle((box.vi_min, box.ub_min), box.vi_max - box.vi_min, box.ub_max - box.ub_min,
                                           fill=False, lw=0.8, color="C3"))
                n = int((m & (bx == box.number)).sum())
                ax.text(box.vi_max - 0.03, box.ub_min + 0.05, str(n), ha="right", va="bottom", fontsize=7, color="C3")
            ax.set_title(f"{name}: class {gname} (N={int(m.sum())})", fontsize=8)
            if row == len(groups) - 1:
                ax.set_xlabel("V-I (F555W-F814W)")
            if col == 0:
                ax.set_ylabel("U-B (F336W-F438W)")
    axes[0, 0].set_xlim(-1.0, 2.0)
    axes[0, 0].set_ylim(1.5, -2.2)  # blue (young) at the top, as in the paper's figures
    fig.suptitle("U-B vs V-I with the Whitmore et al. (2021) age boxes", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return save_figure(fig, path)


# -- the whole evaluation -------------------------------------------------------------------------------


_BIN_COLUMNS = ("mag_F555W", "n_neighbours", "crowd", "crowding", "background")


def _has_colours(t: Table, prefix: str = "mag_") -> bool:
    return all(f"{prefix}{b}" in t.colnames for b in ("F336W", "F555W", "F814W")) and (
        f"{prefix}F438W" in t.colnames or f"{prefix}F435W" in t.colnames)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def compare_classifications(
    a: Table,
    b: Table,
    out_dir: str | os.PathLike | None,
    *,
    a_col: str = "class",
    b_col: str = "class",
    a_name: str = "A",
    b_name: str = "B",
    match: str = "auto",
    radius: float = DEFAULT_MATCH_RADIUS_PX,
    id_col: str = "id",
    xy: tuple[str, str] = ("x", "y"),
    classes: Sequence[str] = CLASSES,
    combined: Mapping[str, Sequence[str]] | None = None,
    bin_columns: Sequence[str] | None = None,
    n_bins: int = 4,
    boxes: Sequence[ColourBox] = PAPER_BOXES,
    min_count: int = 12,
    mag_limit: tuple[str, float] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run the Whitmore et al. (2021) comparison of two classifications and write the results.

    Parameters
    ----------
    a, b : Table
        The two catalogues (may be the same table with two class columns).
    out_dir : path-like or None
        Directory for the tables (``.ecsv``), plots (``.png``) and ``summary.json``; ``None``
        computes only.
    a_col, b_col : str
        Class columns of ``a`` and ``b``.
    a_name, b_name : str
        Labels of the classifiers in tables and plots.
    match, radius, id_col, xy : see :func:`match_catalogues`.
    classes, combined : see :func:`agreement_fractions`.
    bin_columns : sequence of str, optional
        Columns of ``a`` to bin the agreement by (default: those of ``mag_F555W``,
        ``n_neighbours``, ``crowd``, ``crowding``, ``background`` present).
    n_bins : int
        Equal-count bins per column (default 4).
    boxes, min_count : see :func:`box_counts`.
    mag_limit : (str, float), optional
        Only objects with ``column < value`` enter the colour-colour statistics (Table 2 uses
        M_V < -7.8 mag, i.e. an apparent F555W limit per galaxy).

    Notes
    -----
    Agreement fractions, confusion matrices and binned agreement use the matched objects
    classified by both. The colour-colour box counts, as in Table 2, use *each classifier's own
    catalogue* (all its objects with a class, within ``mag_limit``), so a classifier that
    classifies more candidates (e.g. a CNN run on every candidate) can have larger counts; a
    catalogue without photometry borrows the colours of its matched objects.
    plots : bool
        Write PNG plots.

    Returns
    -------
    dict
        Flat metrics: ``n_matched``, ``agreement_<class>``, ``agreement_mean``,
        ``agreement_1+2`` ..., and the files written (``files``).
    """
    classes = [str(c) for c in classes]
    combined = dict(COMBINED if combined is None else combined)
    _require(a, [a_col], f"catalogue '{a_name}'")
    _require(b, [b_col], f"catalogue '{b_name}'")
    if len(a) == 0 or len(b) == 0:
        raise DataError(f"cannot compare an empty catalogue ('{a_name}': {len(a)} rows, '{b_name}': {len(b)} rows)")
    if a is b:
        ia = ib = np.arange(len(a))
        info = {"method": "same table", "n_a": len(a), "n_b": len(b), "n_matched": len(a)}
    else:
        ia, ib, info = match_catalogues(a, b, by=match, radius=radius, id_col=id_col, xy=xy)
    a_lab = main_class_labels(a[a_col])[ia]
    b_lab = main_class_labels(b[b_col])[ib]
    if not np.isin(a_lab, classes).any() or not np.isin(b_lab, classes).any():
        seen_a = sorted(set(a_lab.tolist()))[:8]
        seen_b = sorted(set(b_lab.tolist()))[:8]
        raise DataError(f"no matched object has a class in {classes} in both '{a_col}' ({seen_a}) and '{b_col}' "
                        f"({seen_b}); check the class columns (--a-col/--b-col) and the classes")
    agree = agreement_fractions(a_lab, b_lab, classes=classes, combined=combined)
    counts, averaged = averaged_confusion_matrix(a_lab, b_lab, classes=classes)
    metrics: dict[str, Any] = {"a": a_name, "b": b_name, "a_col": a_col, "b_col": b_col, **info,
                               "n_compared": int(agree.meta["n"])}
    for r in agree:
        metrics[f"agreement_{r['class']}"] = float(r["agreement"])
    tables: dict[str, Table] = {"agreement": agree}
    cm_counts = Table({f"{a_name}_class": classes})
    cm_avg = Table({f"{a_name}_class": classes})
    for j, c in enumerate(classes):
        cm_counts[f"{b_name}_{c}"] = counts[:, j]
        cm_avg[f"{b_name}_{c}"] = averaged[:, j]
    cm_counts.meta["description"] = f"rows: {a_name} class, columns: {b_name} class (matched objects)"
    cm_avg.meta["description"] = ("(C[i,j]/N_A(i) + C[i,j]/N_B(j))/2: mean of both classifications as reference "
                                  "(Whitmore et al. 2021, Sect. 6.3.2)")
    tables["confusion_counts"] = cm_counts
    tables["confusion_averaged"] = cm_avg

    a_m = a[ia]
    cols = list(bin_columns) if bin_columns is not None else [c for c in _BIN_COLUMNS if c in a.colnames]
    for col in cols:
        if col not in a.colnames:
            raise DataError(f"catalogue '{a_name}' has no column '{col}' to bin by; columns present: "
                            f"{', '.join(a.colnames)}")
        try:
            tables[f"agreement_vs_{col}"] = binned_agreement(a_lab, b_lab, np.asarray(a_m[col], dtype=float),
                                                             bins=n_bins, classes=classes, combined=combined)
        except (TypeError, ValueError) as exc:
            raise DataError(f"column '{col}' is not numeric ({exc}); bin by a numeric column") from exc

    samples: dict[str, tuple] = {}
    for t, col, name, idx, lab in ((a, a_col, a_name, ia, a_lab), (b, b_col, b_name, ib, b_lab)):
        # each classifier's own catalogue if it has photometry; else the matched objects' colours
        if _has_colours(t):
            sel = np.ones(len(t), dtype=bool)
            if mag_limit is not None:
                _require(t, [mag_limit[0]], f"catalogue '{name}'")
                sel = _mag(t, mag_limit[0]) < float(mag_limit[1])
            ub, vi = colours(t)
            samples[name] = (main_class_labels(t[col])[sel], ub[sel], vi[sel])
        elif _has_colours(a if t is b else b):
            other, oidx = (a, ia) if t is b else (b, ib)
            sel = np.ones(len(oidx), dtype=bool)
            if mag_limit is not None:
                sel = _mag(other, mag_limit[0])[oidx] < float(mag_limit[1])
            ub, vi = colours(other)
            samples[name] = (lab[sel], ub[oidx][sel], vi[oidx][sel])
    if samples and a_name == b_name:
        samples = {f"{a_name}_a": samples.get(a_name), f"{b_name}_b": samples.get(b_name)}
    if len(samples) == 2:
        boxes_t, merit = box_counts(samples, classes=classes, combined=combined, boxes=boxes, min_count=min_count)
        tables["colour_boxes"] = boxes_t
        tables["colour_merit"] = merit
        for r in boxes_t:
            metrics[f"box_{r['class']}_{r['box']}_qr"] = float(r["qr"])
    else:
        log.info("no U-B/V-I photometry (mag_F336W, mag_F438W|F435W, mag_F555W, mag_F814W): colour-colour statistics skipped")

    files: list[str] = []
    if out_dir is not None:
        out = Path(out_dir)
        for name, t in tables.items():
            files.append(str(write_table(out / f"{name}.ecsv", t)))
        if plots:
            title = f"{a_name} vs {b_name} (N={agree.meta['n']})"
            files.append(str(agreement_plot(agree, out / "agreement.png", f"Agreement fractions: {title}")))
            files.append(str(averaged_confusion_plot(counts, averaged, classes, out / "confusion_averaged.png",
                                                     a_name, b_name)))
            for col in cols:
                files.append(str(binned_agreement_plot(tables[f"agreement_vs_{col}"], col,
                                                       out / f"agreement_vs_{_safe(col)}.png", f"Agreement vs {col}: {title}")))
            if "colour_boxes" in tables:
                files.append(str(colour_colour_plot(samples, out / "colour_colour.png", classes=classes,
                                                    combined=combined, boxes=boxes)))
        metrics["files"] = [Path(f).name for f in files]
        files.append(str(write_json(out / "summary.json", metrics)))
    metrics["tables"] = tables
    return metrics


def evaluate_run(run_dir: str | os.PathLike, human_col: str = "true_class", model_col: str = "pred_class",
                 *, out_subdir: str = "phangs_eval", plots: bool = True, **kwargs) -> dict[str, Any]:
    """The Whitmore et al. (2021) evaluation of a finished ``astrotl run`` on labelled data.

    Compares the human (or simulated true) classes with the model's on the run's
    ``predictions.ecsv`` (one table, so no matching is needed): agreement fractions, the
    averaged confusion matrix, Class 1+2, agreement versus ``mag_F555W``, ``n_neighbours``
    (crowding) and ``background``, and the U-B vs V-I box counts with QR. Writes tables, plots
    and ``summary.json`` to ``<run_dir>/phangs_eval/``.

    Parameters
    ----------
    run_dir : path-like
        A finished run directory (with ``predictions.ecsv``).
    human_col, model_col : str
        The two class columns.
    out_subdir : str
        Output sub-directory of the run directory.
    plots : bool
        Write the PNG plots.
    **kwargs
        Passed to :func:`compare_classifications` (e.g. ``n_bins``, ``mag_limit``).

    Returns
    -------
    dict
        The metrics (see :func:`compare_classifications`) without the tables.
    """
    from astrotl.ensemble import read_predictions

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist; pass a finished astrotl run directory")
    pred = read_predictions(run_dir)
    if len(pred) == 0:
        raise DataError(f"{run_dir}/predictions.ecsv is empty; the run has no test predictions to evaluate")
    _require(pred, [human_col, model_col], f"{run_dir}/predictions.ecsv")
    result = compare_classifications(pred, pred, run_dir / out_subdir, a_col=human_col, b_col=model_col,
                                     a_name="human", b_name="model", plots=plots, **kwargs)
    result.pop("tables", None)
    return result
