"""Source catalogues in: ECSV, FITS, CSV, the LEGUS ``.tab`` tables and PHANGS-HST cluster catalogues.

Every reader returns an :class:`astropy.table.Table`. Pixel positions leave this module
**0-based** (numpy / astropy convention): 1-based inputs (LEGUS, SExtractor, DS9, IRAF) are
converted exactly once, here, and the table's ``meta["pixel_origin"]`` records that it is 0.

Functions
---------
:func:`read_catalog`
    Any supported format, chosen by ``format`` or the file suffix.
:func:`read_legus`
    The LEGUS star-cluster ``.tab`` tables (35 or 39 columns; detected by column count) with named
    columns, magnitudes masked where they are sentinels (99.999 non-detection, 66.666 off the
    field of view) and ``x``, ``y`` converted to 0-based.
:func:`read_phangs`
    PHANGS-HST cluster catalogues (``PHANGS_X``, ``PHANGS_RA``, ``PHANGS_CLUSTER_CLASS_HUMAN``,
    ``PHANGS_<BAND>_VEGA``...) renamed to the same standard columns.
:func:`check_unique_ids`
    A :class:`~astrotl.errors.DataError` naming duplicated ids.

Examples
--------
>>> cat = read_legus("hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab")  # doctest: +SKIP
>>> cat["id", "x", "y", "mag_F555W", "class_mode"][:2]                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.table import MaskedColumn, Table

from .errors import DataError

log = logging.getLogger(__name__)

CatalogFormat = Literal["auto", "ecsv", "fits", "csv", "legus", "phangs"]

#: LEGUS magnitude sentinels (see the LEGUS HLSP readme).
LEGUS_NONDETECTION = 99.999
LEGUS_OFF_FOV = 66.666
LEGUS_NO_APCOR = 44.444

#: Default filters of the two LEGUS table variants (override with ``bands=`` for other galaxies).
LEGUS_BANDS = {
    39: ("F275W", "F336W", "F438W", "F555W", "F814W"),  # e.g. NGC 1566: WFC3 UVIS throughout
    35: ("F275W", "F336W", "F435W", "F555W", "F814W"),  # e.g. NGC 628: WFC3 UV + ACS optical
}


def _legus_names(n_cols: int, bands: Sequence[str]) -> list[str]:
    names = ["id", "x", "y", "ra", "dec"]
    for b in bands:
        names += [f"mag_{b}", f"magerr_{b}"]
    names += ["ci", "age", "age_max", "age_min", "mass", "mass_max", "mass_min", "ebv", "ebv_max", "ebv_min"]
    names += [f"chi2res_{b}" for b in bands]
    names += ["reduced_chi2", "q_prob", "n_filters"]
    if n_cols == 35:
        names += ["class_mode", "class_mean"]
    elif n_cols == 39:
        names += ["class_hybrid", "class_method", "class_mode", "class_ml", "class_human_verify", "class_reclass4"]
    return names


LEGUS_DESCRIPTIONS = {
    "id": "LEGUS source id", "x": "x pixel in the reference frame (0-based)",
    "y": "y pixel in the reference frame (0-based)", "ra": "right ascension (deg)", "dec": "declination (deg)",
    "ci": "concentration index mag(1px) - mag(3px) in F555W", "age": "best SED age (yr)",
    "mass": "best SED mass (Msun)", "ebv": "best E(B-V) (mag)", "n_filters": "number of filters with detection",
    "class_mode": "human class, mode of the classifiers (0: not inspected; 1-4 LEGUS classes)",
    "class_mean": "human class, mean of the classifiers", "class_hybrid": "final hybrid class (human and/or ML)",
    "class_method": "how class_hybrid was set (0 ML only, 1 ML+1 human, 3 3 humans+ML, ...)",
    "class_ml": "machine-learning class", "class_human_verify": "class by one human verifying ML",
    "class_reclass4": "re-classification of class-4 sources",
}


def _read_whitespace_table(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    n_cols = None
    with open(path, "rb") as fh:
        text = fh.read().decode("ascii", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if n_cols is None:
            n_cols = len(parts)
        elif len(parts) != n_cols:
            raise DataError(f"LEGUS table '{path}' line {lineno} has {len(parts)} columns, earlier lines have "
                            f"{n_cols}; the file is damaged or not a LEGUS .tab table")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise DataError(f"LEGUS table '{path}' line {lineno} has a non-numeric value; the file is damaged or "
                            f"not a LEGUS .tab table") from None
    if not rows:
        raise DataError(f"LEGUS table '{path}' has no data rows; give a LEGUS multiband .tab catalogue")
    return np.asarray(rows, dtype=np.float64)


def read_legus(path: str | os.PathLike, bands: Sequence[str] | None = None) -> Table:
    """Read a LEGUS star-cluster catalogue (``hlsp_legus_*_multiband_*.tab``).

    The two public variants differ by galaxy: 39 columns (e.g. NGC 1566: hybrid, ML and human
    classes) and 35 columns (e.g. NGC 628: class mode and mean); the variant is detected from
    the column count.

    Parameters
    ----------
    path : str or path-like
        The whitespace-separated ``.tab`` file (no header).
    bands : sequence of 5 str, optional
        Filter names of the five magnitude columns; default per variant, see :data:`LEGUS_BANDS`.

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``x``, ``y`` (0-based: the file's 1-based values minus 1), ``ra``, ``dec``,
        ``mag_<band>``, ``magerr_<band>`` (masked where the file has 99.999 or 66.666),
        ``nondet_<band>`` and ``offfov_<band>`` (bool), ``ci``, ``age``, ``mass``, ``ebv`` (with
        min/max), ``chi2res_<band>``, ``reduced_chi2``, ``q_prob``, ``n_filters`` and the class
        columns of the variant (``class_mode`` in both, integer; ``class_mean`` in the 35-column
        variant, float). ``meta`` holds ``pixel_origin=0``, ``legus_columns`` and ``bands``.

    Raises
    ------
    DataError
        File missing, not a table of numbers, or neither 35 nor 39 columns.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"LEGUS catalogue '{p}' does not exist; check data.catalog")
    arr = _read_whitespace_table(p)
    n_cols = arr.shape[1]
    if n_cols not in LEGUS_BANDS:
        raise DataError(f"'{p}' has {n_cols} columns; LEGUS multiband tables have 35 or 39 (use format: csv/ecsv "
                        f"with x_col/y_col for other tables)")
    bands = tuple(bands) if bands is not None else LEGUS_BANDS[n_cols]
    if len(bands) != 5:
        raise DataError(f"LEGUS tables have 5 magnitude columns; got {len(bands)} band names {list(bands)}")
    names = _legus_names(n_cols, bands)
    t = Table(meta={"pixel_origin": 0, "legus_columns": n_cols, "bands": list(bands), "source": str(p)})
    for i, name in enumerate(names):
        col = arr[:, i]
        if name in ("x", "y"):
            col = col - 1.0  # LEGUS pixels are 1-based (IRAF/DS9): convert once, here
        if name == "id" or name == "n_filters" or (name.startswith("class_") and name != "class_mean"):
            col = np.rint(col).astype(np.int64)
        if name.startswith(("mag_", "magerr_")):
            band = name.split("_", 1)[1]
            magcol = arr[:, names.index(f"mag_{band}")]
            nondet = np.isclose(magcol, LEGUS_NONDETECTION)
            off = np.isclose(magcol, LEGUS_OFF_FOV)
            noap = np.isclose(magcol, LEGUS_NO_APCOR)
            t[name] = MaskedColumn(col, mask=nondet | off | noap, fill_value=np.nan)
            if name.startswith("mag_"):
                t[name].description = f"Vega magnitude in {band} (masked: not detected or off the field)"
                t[name].unit = "mag"
                t[f"nondet_{band}"] = nondet
                t[f"offfov_{band}"] = off
            continue
        t[name] = col
        if name in LEGUS_DESCRIPTIONS:
            t[name].description = LEGUS_DESCRIPTIONS[name]
    for name in ("ra", "dec"):
        t[name].unit = "deg"
    log.debug("read LEGUS table %s: %d rows, %d columns", p, len(t), n_cols)
    return t


#: PHANGS-HST cluster catalogue columns -> standard names (DR4 / DR5 naming; 0-based PHANGS_X/Y).
PHANGS_COLUMNS = {
    "ID_PHANGS_CLUSTER": "id", "PHANGS_X": "x", "PHANGS_Y": "y", "PHANGS_RA": "ra", "PHANGS_DEC": "dec",
    "PHANGS_CLUSTER_CLASS_HUMAN": "class_human", "PHANGS_CLUSTER_CLASS_ML_VGG": "class_ml",
    "PHANGS_CLUSTER_CLASS_ML_VGG_QUAL": "class_ml_qual",
}
PHANGS_SENTINEL = -9999.0


def read_phangs(path: str | os.PathLike) -> Table:
    """Read a PHANGS-HST cluster catalogue (FITS or ECSV) into standard column names.

    ``ID_PHANGS_CLUSTER`` (or ``ID_PHANGS_CANDIDATE`` / ``INDEX``) -> ``id``; ``PHANGS_X``,
    ``PHANGS_Y`` (already 0-based) -> ``x``, ``y``; ``PHANGS_RA``/``DEC`` -> ``ra``/``dec``;
    ``PHANGS_CLUSTER_CLASS_HUMAN`` -> ``class_human``; ``PHANGS_<BAND>_VEGA[_TOT]`` ->
    ``mag_<BAND>`` (and ``_ERR`` -> ``magerr_<BAND>``), masked where -9999 (not covered).
    Other columns are kept under their own names.
    """
    import re

    t = _read_astropy(Path(path).expanduser(), None)
    rename: dict[str, str] = {}
    upper = {c.upper(): c for c in t.colnames}
    for src, dst in PHANGS_COLUMNS.items():
        if src in upper:
            rename[upper[src]] = dst
    if "id" not in rename.values():
        for alt in ("ID_PHANGS_CANDIDATE", "ID_PHANGS_CLUSTERS_V1P2", "INDEX"):
            if alt in upper:
                rename[upper[alt]] = "id"
                break
    for c in t.colnames:
        m = re.fullmatch(r"PHANGS_(F\d{3,4}[A-Z]+)_VEGA(?:_TOT)?(_ERR)?", c.upper())
        if m:
            rename[c] = f"{'magerr' if m.group(2) else 'mag'}_{m.group(1)}"
    missing = [k for k in ("x", "y") if k not in rename.values()] and [k for k in ("ra", "dec") if k not in rename.values()]
    if missing:
        raise DataError(f"'{path}' has neither PHANGS_X/PHANGS_Y nor PHANGS_RA/PHANGS_DEC; is it a PHANGS-HST cluster "
                        f"catalogue? (use format: fits/ecsv with x_col/y_col otherwise)")
    clash = [dst for src, dst in rename.items() if dst in t.colnames and dst not in rename]
    if clash:
        t.remove_columns(clash)
    t.rename_columns(list(rename), list(rename.values()))
    for c in t.colnames:
        if c.startswith(("mag_", "magerr_")):
            data = np.asarray(t[c], dtype=float)
            t[c] = MaskedColumn(data, mask=np.isclose(data, PHANGS_SENTINEL) | ~np.isfinite(data), fill_value=np.nan)
    t.meta["pixel_origin"] = 0
    return t


_SUFFIX_FORMATS = {".ecsv": "ecsv", ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits",
                   ".csv": "csv", ".tab": "legus"}


def guess_format(path: str | os.PathLike) -> str:
    """Catalogue format from the file suffix (``.ecsv``, ``.fits``, ``.csv``, ``.tab`` = LEGUS)."""
    name = Path(path).name.lower()
    for suffix, fmt in sorted(_SUFFIX_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"cannot tell the format of catalogue '{path}' from its suffix; set data.format to one of "
                    f"ecsv, fits, csv, legus, phangs")


def _read_astropy(path: Path, fmt: str | None) -> Table:
    if not path.is_file():
        raise DataError(f"catalogue '{path}' does not exist; check data.catalog")
    astropy_fmt = {"ecsv": "ascii.ecsv", "fits": "fits", "csv": "ascii.csv", None: None}[fmt]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(path, format=astropy_fmt) if astropy_fmt else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for a bad table
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read catalogue '{path}' as {fmt or 'a table'} ({first}); check the file and "
                        f"data.format") from None
    return t


def read_catalog(path: str | os.PathLike, format: CatalogFormat = "auto", *,
                 legus_bands: Sequence[str] | None = None) -> Table:
    """Read a source catalogue.

    Parameters
    ----------
    path : str or path-like
        The catalogue file.
    format : {"auto", "ecsv", "fits", "csv", "legus", "phangs"}
        ``auto`` picks by suffix (``.tab`` is LEGUS; a FITS table with ``PHANGS_X`` columns is
        read as PHANGS).
    legus_bands : sequence of str, optional
        Band names of a LEGUS table's five magnitude columns.

    Returns
    -------
    astropy.table.Table
        For ``legus`` and ``phangs`` the standard columns (``id``, ``x``, ``y`` 0-based, ``ra``,
        ``dec``, ``mag_<band>``...); otherwise the file's own columns. ``meta["pixel_origin"]`` is 0
        when this reader already converted (or knows) the pixel convention.
    """
    p = Path(path).expanduser()
    fmt = guess_format(p) if format == "auto" else format
    if fmt == "legus":
        return read_legus(p, bands=legus_bands)
    if fmt == "phangs":
        return read_phangs(p)
    t = _read_astropy(p, fmt)
    if format == "auto" and "PHANGS_X" in {c.upper() for c in t.colnames}:
        return read_phangs(p)
    return t


def check_unique_ids(table: Table, id_col: str = "id", *, where: str = "catalogue") -> None:
    """Raise :class:`DataError` if ``table[id_col]`` has duplicates, naming up to three of them."""
    if id_col not in table.colnames:
        return
    ids = np.asarray(table[id_col]).astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1]
    if dup.size:
        shown = ", ".join(repr(str(d)) for d in dup[:3]) + (" ..." if dup.size > 3 else "")
        raise DataError(f"{where} has {dup.size} duplicated id(s) in column '{id_col}' ({shown}); ids must be unique "
                        f"(deduplicate the catalogue or choose another data.id_col)")


def require_columns(table: Table, columns: Sequence[str], *, where: str = "catalogue", key: str = "") -> None:
    """Raise :class:`DataError` if a column is missing, with a "did you mean" and the available columns."""
    import difflib

    for c in columns:
        if c not in table.colnames:
            shown = ", ".join(table.colnames[:12]) + (" ..." if len(table.colnames) > 12 else "")
            setting = f" (data.{key})" if key else ""
            lower = {n.lower(): n for n in table.colnames}
            close = difflib.get_close_matches(c.lower(), list(lower), n=1, cutoff=0.6)
            hint = f" (did you mean '{lower[close[0]]}'?)" if close else ""
            raise DataError(f"{where} has no column '{c}'{setting}{hint}; columns are: {shown}")


def pixel_positions(table: Table, x_col: str, y_col: str, pixel_origin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0-based float ``(x, y)`` from two columns whose values use ``pixel_origin`` (0 or 1).

    Masked or non-finite entries become NaN (flagged as outside by the cutout code).
    """
    require_columns(table, [x_col, y_col], key="x_col/y_col")
    out = []
    for c in (x_col, y_col):
        col = table[c]
        try:
            v = np.ma.asarray(col).astype(float).filled(np.nan) if hasattr(col, "mask") else np.asarray(col, float)
        except (TypeError, ValueError):
            raise DataError(f"catalogue column '{c}' is not numeric (dtype {col.dtype}); point data.x_col/y_col at "
                            f"pixel columns") from None
        out.append(np.asarray(v, dtype=float) - float(pixel_origin))
    return out[0], out[1]


def sky_positions(table: Table, ra_col: str, dec_col: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ra, dec)`` in degrees from two columns (sexagesimal strings are parsed with SkyCoord)."""
    require_columns(table, [ra_col, dec_col], key="ra_col/dec_col")
    ra, dec = table[ra_col], table[dec_col]
    if ra.dtype.kind in "US" or dec.dtype.kind in "US":
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        try:
            c = SkyCoord(np.asarray(ra).astype(str), np.asarray(dec).astype(str), unit=(u.hourangle, u.deg))
        except Exception as exc:
            raise DataError(f"cannot parse sky positions in columns '{ra_col}', '{dec_col}' ({exc}); give degrees or "
                            f"'hh:mm:ss' / 'dd:mm:ss' strings") from None
        return c.ra.deg, c.dec.deg

    def deg(col):
        unit = getattr(col, "unit", None)
        v = np.ma.asarray(col).astype(float).filled(np.nan) if hasattr(col, "mask") else np.asarray(col, float)
        if unit is not None and str(unit) not in ("deg", ""):
            from astropy import units as u

            try:
                v = (v * unit).to_value(u.deg)
            except (u.UnitsError, TypeError, ValueError):
                raise DataError(f"catalogue column '{col.name}' has unit {unit}, not an angle; give degrees") from None
        return np.asarray(v, dtype=float)

    return deg(ra), deg(dec)


def check_bands_once(bands: Sequence[str], key: str = "bands") -> None:
    """Raise ``ValueError`` if a band appears twice in ``bands`` (compared without case, as FITS
    compares HDU names): a band given twice would silently collapse to one."""
    first: dict[str, str] = {}
    for b in bands:
        k = str(b).strip().upper()
        if k in first:
            same = "twice" if first[k] == b else f"twice ({first[k]} and {b} are the same FITS band name)"
            raise ValueError(f"{key} lists band {b} {same}; give each band once")
        first[k] = b


_REPORTED: set[tuple] = set()


def unlisted_label_report(raw: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None, *, label_col: str | None,
                          class_map: dict | None, keep_unlabelled: bool, where: str) -> dict:
    """Count the rows whose label is neither empty nor one of ``classes`` (after ``class_map``), log
    it, and return the counts for the data set's catalogue meta (``label_report``).

    Such rows are unlabelled: left out of train/val/test (kept with label -1 when
    ``keep_unlabelled``). Labels missing from ``data.classes`` (no ``class_map``) are a warning --
    most often a typo or a forgotten class; labels a ``class_map`` does not list are unlabelled by
    its documented rule and only logged at INFO. Each message is logged once per process (the data
    set is built once per split).
    """
    if classes is None or label_col is None:
        return {}
    raw = np.asarray(raw, dtype=object)
    empty = np.array([str(r) == "" for r in raw], dtype=bool)
    unlisted = (np.asarray(labels) < 0) & ~empty
    values, counts = np.unique(np.asarray(raw[unlisted], dtype=str), return_counts=True) if unlisted.any() else ([], [])
    by_value = {str(v): int(c) for v, c in sorted(zip(values, counts), key=lambda vc: -vc[1])}
    report = {"n_rows": int(len(raw)), "n_no_label": int(empty.sum()), "n_label_not_a_class": int(unlisted.sum()),
              "labels_not_a_class": by_value, "rule": "class_map" if class_map is not None else "classes",
              "kept_unlabelled": bool(keep_unlabelled)}
    if unlisted.any():
        shown = ", ".join(f"'{v}': {c}" for v, c in list(by_value.items())[:6]) + (", ..." if len(by_value) > 6 else "")
        fate = "kept as unlabelled (keep_unlabelled)" if keep_unlabelled else "left out of train/val/test"
        key = (where, tuple(classes), tuple(by_value.items()), class_map is not None)
        if key not in _REPORTED:
            _REPORTED.add(key)
            if class_map is None:
                log.warning("%s: %d of %d rows have a '%s' label that is not in data.classes %s (%s); they are %s; "
                            "add the labels to data.classes or map them with data.class_map",
                            where, int(unlisted.sum()), len(raw), label_col, list(classes), shown, fate)
            else:
                log.info("%s: %d of %d rows have a '%s' label that data.class_map does not list (%s); they are %s",
                         where, int(unlisted.sum()), len(raw), label_col, shown, fate)
    return report
