"""Redundant (multiply detected) cluster candidates: PHANGS-HST class 4.9.

Whitmore et al. (2021, MNRAS 506, 5294, Sect. 6.3.1 "Double Counting"): DOLPHOT sometimes
detects extra, false peaks after subtracting a slightly resolved cluster. "These false peaks are
removed during the human classifications and designated Class 4.9 (= redundant). Operationally
this is performed by classifying the brighter object and then giving any candidate within a
radius of five pixels a value of Class 4.9." The same algorithm is applied to the RESNET and VGG
classifications in a post-processing step of the PHANGS-HST pipeline.

:func:`mark_redundant` implements it as greedy suppression in order of brightness: going from the
brightest candidate to the faintest, a candidate that is not yet redundant is *kept* and every
candidate within ``radius`` of it becomes redundant. A redundant candidate does not itself make
others redundant, so in a chain A-B-C (A brightest, A-B and B-C closer than the radius, A-C not)
A and C are kept and B is redundant. The loop over brightness order is replaced by rounds of
array operations on the neighbour pairs from :class:`scipy.spatial.cKDTree`, so ~10^5 candidates
take well under a second; the number of rounds is the length of the longest chain.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from astrotl.errors import ConfigError, DataError

__all__ = ["mark_redundant", "redundant_mask", "REDUNDANT_CODE", "DEFAULT_RADIUS_PX"]

#: PHANGS-HST sub-class code of a redundant candidate (Whitmore et al. 2021, Table 3).
REDUNDANT_CODE = 4.9
#: "any candidate within a radius of five pixels" (Whitmore et al. 2021, Sect. 6.3.1).
DEFAULT_RADIUS_PX = 5.0
#: Magnitudes at or above this are sentinels (LEGUS: 99.999 not detected, 66.666 off the field).
MAG_SENTINEL = 50.0


def redundant_mask(x, y, mag, radius: float = DEFAULT_RADIUS_PX, active=None) -> tuple[np.ndarray, np.ndarray]:
    """Which candidates are redundant, and which brighter candidate made each one so.

    Parameters
    ----------
    x, y : array-like of float
        Positions in pixels (any consistent frame; 0- or 1-based does not matter).
    mag : array-like of float
        Magnitudes (smaller = brighter). Non-finite values and sentinels >= 50 (LEGUS 99.999 and
        66.666) count as fainter than every measured magnitude. Equal magnitudes are ordered by
        input position (earlier row = brighter), so the result is deterministic.
    radius : float
        Suppression radius in pixels (default 5, the paper's value). Pairs at exactly ``radius``
        count as within it.
    active : array-like of bool, optional
        Candidates taking part; the others are never redundant and never suppress (e.g. only
        candidates that were classified).

    Returns
    -------
    redundant : ndarray of bool
    suppressed_by : ndarray of int
        Row index of the kept candidate that made each redundant one redundant (its brightest
        kept neighbour), -1 for candidates that are not redundant.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    mag = np.asarray(mag, dtype=float)
    n = len(x)
    if not (len(y) == n and len(mag) == n):
        raise DataError(f"x, y and mag must have the same length, got {len(x)}, {len(y)}, {len(mag)}")
    if not np.isfinite(radius) or radius <= 0:
        raise ConfigError(f"radius must be a positive number of pixels, got {radius!r} (the paper uses 5)")
    active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    pos_ok = np.isfinite(x) & np.isfinite(y)
    if (~pos_ok & active).any():
        raise DataError(f"{int((~pos_ok & active).sum())} candidates have non-finite x/y; "
                        f"drop them or exclude them with `active`")
    redundant = np.zeros(n, dtype=bool)
    by = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(active)
    if len(idx) < 2:
        return redundant, by
    m = np.where(np.isfinite(mag) & (mag < MAG_SENTINEL), mag, np.inf)[idx]
    # rank 0 = brightest; ties by row order
    order = np.lexsort((np.arange(len(idx)), m))
    rank = np.empty(len(idx), dtype=np.int64)
    rank[order] = np.arange(len(idx))
    tree = cKDTree(np.column_stack([x[idx], y[idx]]))
    pairs = tree.query_pairs(radius * (1 + 1e-12), output_type="ndarray")
    if len(pairs) == 0:
        return redundant, by
    i, j = pairs[:, 0], pairs[:, 1]
    swap = rank[i] > rank[j]
    bright = np.where(swap, j, i)  # brighter member of each pair
    faint = np.where(swap, i, j)
    # state: 0 undecided, 1 kept, 2 redundant. Candidates without a brighter neighbour are kept.
    state = np.zeros(len(idx), dtype=np.int8)
    has_brighter = np.zeros(len(idx), dtype=bool)
    has_brighter[faint] = True
    state[~has_brighter] = 1
    while True:
        # a kept bright member makes its fainter neighbour redundant
        newly_red = np.unique(faint[(state[bright] == 1) & (state[faint] == 0)])
        state[newly_red] = 2
        # an undecided candidate whose brighter neighbours are all redundant is kept
        blocking = (state[bright] != 2)
        undecided = state == 0
        blocked = np.zeros(len(idx), dtype=bool)
        blocked[faint[blocking]] = True
        newly_kept = undecided & ~blocked
        if not newly_red.size and not newly_kept.any():
            break
        state[newly_kept] = 1
    if (state == 0).any():  # cannot happen: the brightest undecided candidate is always resolvable
        raise RuntimeError("redundancy resolution did not converge")
    red_local = state == 2
    # suppressor: brightest kept neighbour of each redundant candidate
    sel = (state[bright] == 1) & red_local[faint]
    f, b = faint[sel], bright[sel]
    o = np.lexsort((rank[b], f))
    f, b = f[o], b[o]
    first = np.r_[True, f[1:] != f[:-1]]
    sup = np.full(len(idx), -1, dtype=np.int64)
    sup[f[first]] = idx[b[first]]
    redundant[idx] = red_local
    by[idx] = sup
    return redundant, by


def mark_redundant(
    table: Table,
    *,
    radius: float = DEFAULT_RADIUS_PX,
    mag_col: str = "mag_F555W",
    x_col: str = "x",
    y_col: str = "y",
    class_col: str | None = "class",
    subclass_col: str | None = None,
    id_col: str | None = "id",
    code: float | str = REDUNDANT_CODE,
    active=None,
) -> Table:
    """Copy of ``table`` with redundant candidates marked as class/sub-class 4.9.

    Within ``radius`` pixels the brightest candidate (smallest ``mag_col``) is kept and the others
    become redundant (Whitmore et al. 2021, Sect. 6.3.1; see the module docstring for the exact
    greedy rule). The paper selects the brightest by eye in the F555W (V) image, so the default
    magnitude column is ``mag_F555W``.

    Parameters
    ----------
    table : Table
        Candidates with positions and magnitudes (one row each).
    radius : float
        Suppression radius in pixels (paper: 5).
    mag_col, x_col, y_col : str
        Magnitude and position columns.
    class_col, subclass_col : str or None
        Columns to overwrite with ``code`` for redundant rows (either may be ``None``). A string
        column gets ``"4.9"``; an integer column is converted to float so that it can hold 4.9.
    id_col : str or None
        If given and present, ``redundant_of`` holds the id of the suppressing candidate;
        otherwise its row index.
    code : float or str
        The redundant class code (default 4.9).
    active : array-like of bool, optional
        Rows that take part (see :func:`redundant_mask`).

    Returns
    -------
    Table
        A copy with boolean ``redundant``, ``redundant_of`` and the updated class columns.

    Raises
    ------
    DataError
        A named column is missing (the message lists the columns present) or the table is empty.
    """
    if len(table) == 0:
        raise DataError("candidate table is empty (0 rows); nothing to check for redundancy")
    needed = [c for c in (x_col, y_col, mag_col, class_col, subclass_col) if c]
    missing = [c for c in needed if c not in table.colnames]
    if missing:
        raise DataError(f"candidate table has no column {', '.join(repr(c) for c in missing)}; columns present: "
                        f"{', '.join(table.colnames)} (set x_col/y_col/mag_col/class_col to match)")
    red, by = redundant_mask(table[x_col], table[y_col], table[mag_col], radius=radius, active=active)
    out = table.copy()
    out["redundant"] = red
    out["redundant"].description = (f"within {radius:g} px of a brighter kept candidate (class {code}; "
                                    f"Whitmore et al. 2021 Sect. 6.3.1)")
    if id_col and id_col in table.colnames:
        ids = np.asarray(table[id_col])
        of = np.where(by >= 0, ids[np.maximum(by, 0)], ids[0])
        out["redundant_of"] = np.ma.MaskedArray(of, mask=by < 0)
    else:
        out["redundant_of"] = by
    for col in (class_col, subclass_col):
        if not col:
            continue
        c = out[col]
        if c.dtype.kind in "US":
            code_s = str(code)
            vals = np.asarray(c).astype(object)
            vals[red] = code_s
            out[col] = np.asarray(vals.astype(str))
        else:
            vals = np.array(c, dtype=float)
            vals[red] = float(code)
            out[col] = vals
        out[col].description = (table[col].description or "") + f" (redundant candidates set to {code})"
    out.meta["redundancy"] = {"radius_px": float(radius), "mag_col": mag_col, "n_redundant": int(red.sum()),
                              "reference": "Whitmore et al. 2021, MNRAS 506, 5294, Sect. 6.3.1"}
    return out
