"""One multi-extension FITS file per candidate, one image HDU per band (as the PHANGS pipeline made them).

Layout of a file written by :func:`write_mef`::

    HDU 0  PRIMARY   no data; header: ID, X, Y (0-based pixels in the mosaic), RA, DEC, SIZE,
                     BANDS, NANFRAC, EDGE, OUTSIDE, MISSBAND, CLASS (if known), ORIGIN='astrotl'
    HDU 1  F275W     float32 [size, size], the stamp's WCS, FILTER = 'F275W'
    HDU 2  F336W     ...
    ...              (order = channel order)

:func:`read_mef` reads one back as ``[C, H, W]`` (bands by EXTNAME, in any order asked for);
:func:`export_cutouts` streams a :class:`~astrotl.datasets.CatalogCutoutDataset` to a folder of
such files plus an ``index.ecsv`` with the flags; :func:`import_cutouts` reads a folder back.
A folder of exported files is also an ``image_folder`` data set (``bands: [F275W, ...]``,
``file_col: file``, ``labels: index.ecsv``).

Every file is written atomically (temporary file + rename), so an interrupted export leaves only
whole files; run it again and the existing ones are skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from .errors import DataError, OutputError
from .io import atomic_path, clean_temp_files, make_dirs, output_error, write_table

log = logging.getLogger(__name__)


@dataclass
class MEFCutout:
    """A multi-band stamp read from a multi-extension FITS file.

    Attributes
    ----------
    image : numpy.ndarray
        ``float32 [C, H, W]`` in the order of ``bands``.
    bands : tuple of str
    meta : dict
        The primary header's keywords (``ID``, ``X``, ``Y``, ``RA``, ``DEC``, flags...).
    wcs : list
        Each band's :class:`astropy.wcs.WCS` (``None`` where the HDU has none).
    """

    image: np.ndarray
    bands: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    wcs: list = field(default_factory=list)


_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def safe_filename(value: Any) -> str:
    """A file-name-safe version of an id (other characters become ``_``)."""
    text = _SAFE.sub("_", str(value).strip()) or "_"
    return text.lstrip(".") or "_"


def _header_value(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        v = float(v)
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)  # FITS headers cannot hold NaN
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode()
    if isinstance(v, (int, float, str)):
        return v
    return str(v)


def write_mef(path: str | os.PathLike, image: np.ndarray, bands: Sequence[str], *, wcs: Sequence | None = None,
              meta: dict[str, Any] | None = None) -> Path:
    """Write one multi-band stamp as a multi-extension FITS file (atomically).

    Parameters
    ----------
    path : str or path-like
        Destination ``.fits`` file.
    image : numpy.ndarray
        ``[C, H, W]`` stamp.
    bands : sequence of str
        One name per channel; each becomes an HDU's ``EXTNAME``.
    wcs : sequence of astropy.wcs.WCS or astropy.io.fits.Header or None, optional
        Per-band WCS of the stamp (from ``Cutout2D``), or a ready WCS header.
    meta : dict, optional
        Keywords for the primary header (keys up to 8 characters; longer ones use HIERARCH).

    Returns
    -------
    pathlib.Path
    """
    import warnings

    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != len(bands):
        raise DataError(f"write_mef: image of shape {list(image.shape)} does not match {len(bands)} bands {list(bands)}")
    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["ORIGIN"] = ("astrotl", "multi-band cutout, one image HDU per band")
    hdr["BANDS"] = ",".join(bands)
    hdr["NBANDS"] = len(bands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # HIERARCH keys for long names are fine
        for k, v in (meta or {}).items():
            hdr[str(k).upper()] = _header_value(v)
    hdus = [primary]
    for c, band in enumerate(bands):
        w = wcs[c] if wcs is not None else None
        h = w.copy() if isinstance(w, fits.Header) else w.to_header() if w is not None else fits.Header()
        h["FILTER"] = band
        hdus.append(fits.ImageHDU(image[c], header=h, name=str(band).upper()))
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="ignore")  # headers are built here
    return dest


class _WCSHeaders:
    """Per-band WCS headers of cutouts: built once per band, then only CRPIX changes (what Cutout2D changes)."""

    def __init__(self):
        self._templates: dict[int, Any] = {}

    def __call__(self, wcs_list: Sequence) -> list:
        out = []
        for c, w in enumerate(wcs_list):
            if w is None:
                out.append(None)
                continue
            if c not in self._templates:
                self._templates[c] = (w.to_header(), w)
            header, first = self._templates[c]
            same = (first.wcs.ctype == w.wcs.ctype and np.array_equal(first.wcs.crval, w.wcs.crval)
                    and np.array_equal(first.wcs.get_pc(), w.wcs.get_pc()) and np.array_equal(first.wcs.cdelt, w.wcs.cdelt))
            if not same:
                out.append(w)
                continue
            h = header.copy()
            h["CRPIX1"], h["CRPIX2"] = float(w.wcs.crpix[0]), float(w.wcs.crpix[1])
            out.append(h)
        return out


def read_mef(path: str | os.PathLike, bands: Sequence[str] | None = None) -> MEFCutout:
    """Read a multi-extension cutout file.

    Parameters
    ----------
    path : str or path-like
    bands : sequence of str, optional
        Bands (EXTNAMEs) to read, in this order; default: every image HDU in file order.

    Raises
    ------
    DataError
        Missing, corrupt or truncated file; a requested band not in the file; bands of different shapes.
    """
    from .fitsio import _celestial_wcs, open_fits

    p = Path(path)
    hdul = open_fits(p, band="cutout")
    try:
        names = [h.name.upper() for h in hdul]
        have = [i for i, h in enumerate(hdul) if getattr(h, "is_image", False) and h.data is not None and h.data.ndim == 2]
        if bands is None:
            idx = have
        else:
            idx = []
            for b in bands:
                if str(b).upper() not in names:
                    raise DataError(f"cutout file '{p}' has no band '{b}' (it has {[names[i] for i in have]}); ask for "
                                    f"bands it has, or export it again with all bands")
                idx.append(names.index(str(b).upper()))
        if not idx:
            raise DataError(f"cutout file '{p}' has no 2-D image HDU; it is not a multi-band cutout")
        planes = [np.asarray(hdul[i].data, dtype=np.float32) for i in idx]
        if len({pl.shape for pl in planes}) != 1:
            raise DataError(f"cutout file '{p}': band images differ in shape {[list(pl.shape) for pl in planes]}")
        meta = {k: v for k, v in hdul[0].header.items() if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "")}
        wcs = [_celestial_wcs(hdul[i].header, p, names[i]) for i in idx]
        out_bands = tuple(names[i] for i in idx) if bands is None else tuple(bands)
        return MEFCutout(image=np.stack(planes), bands=out_bands, meta=meta, wcs=wcs)
    finally:
        hdul.close()


#: File suffixes an exported cutout may have (what :mod:`astrotl.datasets.image_folder` reads as FITS).
CUTOUT_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def check_pattern(pattern: str) -> None:
    """Raise :class:`~astrotl.errors.OutputError` unless ``pattern`` names one FITS file per row *inside*
    the output folder: ``{id}`` or ``{index}`` in it, no other field, no folder, no ``..``, not hidden."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        sample = pattern.format(id="ID", index=0)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise OutputError(f"--pattern '{pattern}' is not a valid name pattern ({type(exc).__name__}: {exc}); only "
                          f"{{id}} and {{index}} can be used, e.g. {{id}}.fits or cut_{{index:05d}}.fits") from None
    if not {"id", "index"} & set(fields):
        raise OutputError(f"--pattern '{pattern}' has neither {{id}} nor {{index}}: every row would go to the same "
                          f"file; use e.g. {{id}}.fits")
    if "/" in sample or "\\" in sample or os.sep in sample or sample.startswith(".") or Path(sample).is_absolute():
        raise OutputError(f"--pattern '{pattern}' must give a plain file name inside --out (no '/', '..', leading '.' "
                          f"or absolute path), e.g. {{id}}.fits")
    if not sample.lower().endswith(CUTOUT_SUFFIXES):
        raise OutputError(f"--pattern '{pattern}' must end in .fits (the files are FITS), e.g. {{id}}.fits")
    if sample == "index.ecsv":
        raise OutputError(f"--pattern '{pattern}' would overwrite the index; use e.g. {{id}}.fits")


def export_cutouts(dataset, out_dir: str | os.PathLike, *, pattern: str = "{id}.fits", overwrite: bool = False,
                   limit: int | None = None) -> Table:
    """Write every sample of a :class:`~astrotl.datasets.CatalogCutoutDataset` as one MEF file.

    Streams one stamp at a time (memory stays flat), writes each file atomically, skips files
    that already exist unless ``overwrite`` (so an interrupted export continues), and finally
    writes ``index.ecsv``: the dataset's catalogue plus a ``file`` column.

    Parameters
    ----------
    dataset : CatalogCutoutDataset
    out_dir : str or path-like
    pattern : str
        File name from the row, ``{id}`` (made file-name safe) and ``{index}`` available.
    overwrite : bool
    limit : int, optional
        Only the first ``limit`` samples.

    Returns
    -------
    astropy.table.Table
        The index (also written to ``out_dir/index.ecsv``) with ``written`` (bool) per row.
    """
    check_pattern(pattern)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file; give a folder for the cutouts")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cat = dataset.catalog()[:n]
    bands = list(dataset.bands)
    files = [pattern.format(id=safe_filename(cat["id"][i]), index=i) for i in range(n)]
    first_of: dict[str, int] = {}
    for i, name in enumerate(files):
        if name in first_of:
            raise DataError(f"rows {first_of[name]} and {i} (ids {cat['id'][first_of[name]]!s} and {cat['id'][i]!s}) would "
                            f"both be written to '{name}'; put {{index}} in --pattern (e.g. {{id}}_{{index}}.fits)")
        first_of[name] = i
    try:
        make_dirs(out)
    except OSError as exc:
        raise output_error(out, exc, what="create the output folder") from None
    clean_temp_files(out)  # left by an interrupted export
    written = []
    labels = cat["class"] if "class" in cat.colnames else None
    step = max(1, n // 10)
    headers = _WCSHeaders()
    for i in range(n):
        name = files[i]
        dest = out / name
        if dest.is_dir():
            raise OutputError(f"'{dest}' is a directory; remove it or change --pattern")
        if dest.exists() and not overwrite:
            written.append(False)
            continue
        stamp, flags, wcs = dataset.raw_cutout(i, with_wcs=True)
        meta = {"ID": cat["id"][i], "X": float(cat["x"][i]), "Y": float(cat["y"][i]),
                "PIXORIG": (0), "SIZE": stamp.shape[-1], "NANFRAC": round(flags.nan_fraction, 6),
                "EDGE": flags.edge, "OUTSIDE": flags.outside, "MISSBAND": ",".join(flags.missing_bands)}
        if "ra" in cat.colnames:
            meta["RA"], meta["DEC"] = float(cat["ra"][i]), float(cat["dec"][i])
        if labels is not None and str(labels[i]):
            meta["CLASS"] = str(labels[i])
        write_mef(dest, stamp, bands, wcs=headers(wcs), meta=meta)
        written.append(True)
        if (i + 1) % step == 0:
            log.log(logging.INFO if n >= 1000 else logging.DEBUG, "exported %d / %d cutouts", i + 1, n)
    cat["file"] = files
    cat["written"] = written
    cat.meta["bands"] = bands
    cat.meta["description"] = "one multi-extension FITS cutout per row (HDU per band); x, y 0-based"
    write_table(out / "index.ecsv", cat)
    return cat


def import_cutouts(paths: str | os.PathLike | Sequence[str | os.PathLike], bands: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, Table]:
    """Read MEF cutouts (a folder's ``*.fits`` or a list of files) into ``[N, C, H, W]`` and a table of
    their primary-header keywords (one row per file, plus ``file``)."""
    if isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir():
        files = sorted(Path(paths).glob("*.fits"))
        if not files:
            raise DataError(f"no .fits files in '{paths}'; export cutouts there first (astrotl cutouts ...)")
    elif isinstance(paths, (str, os.PathLike)):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    cuts = [read_mef(f, bands) for f in files]
    shapes = {c.image.shape for c in cuts}
    if len(shapes) != 1:
        raise DataError(f"cutouts differ in shape {sorted(shapes)}; import files of one size and band list")
    table = Table()
    table["file"] = [str(f) for f in files]
    for k in sorted({k for c in cuts for k in c.meta}):
        values = [_header_value(c.meta[k]) if k in c.meta else None for c in cuts]
        types = {type(v) for v in values}
        if len(types) == 1 and None not in values:
            table[k.lower()] = values
        else:  # missing in some files or mixed types: keep as text
            table[k.lower()] = ["" if v is None else str(v) for v in values]
    return np.stack([c.image for c in cuts]), table
