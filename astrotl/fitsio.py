"""FITS mosaics, one file per band: open memory-mapped, pick the HDU, read the WCS, cut stamps.

A :class:`BandMosaic` is one band's 2-D image (an HDU of a FITS file, chosen by name or index)
opened with ``memmap=True``: only the pixels a cutout touches are ever read, so memory does not grow
with the size of the mosaic. A :class:`MosaicStack` holds the bands of one field in channel order
and cuts ``[C, size, size]`` stamps with the rule of :class:`astropy.nddata.Cutout2D` (``mode="partial"``,
NaN fill), reporting for each stamp whether it touches the image edge, contains NaNs, or has a
band without data.

Cutting is vectorised over a batch of positions (:meth:`MosaicStack.cutouts`): the first pixel of
every stamp comes from one array expression (``ceil(position - size / 2)``, the rule of
:func:`astropy.nddata.utils.overlap_slices`), the stamps that lie wholly on the image are gathered
by plain slicing of the memory-mapped band (one strided gather per band and batch), and only the
stamps that run off the image are assembled piecewise, NaN-filled as ``Cutout2D(mode="partial")``
does. NaNs in the data (outside a drizzled footprint) are copied as they are. The stamps are
identical to ``Cutout2D``'s (``tests/core/test_fast_cutouts.py`` compares them); ``Cutout2D`` itself
is still used when a cutout WCS is asked for.

Everything that can be checked before work starts is checked when a file is opened (file
missing, not FITS, truncated, HDU missing or not a 2-D image, no celestial WCS when sky
positions are needed, bands on different pixel grids); each problem is a
:class:`~astrotl.errors.DataError` with a one-line message naming the file and the fix.

Pixel convention: 0-based, pixel centres at integers (astropy / numpy). Catalogues with 1-based
positions are converted once, when read (:mod:`astrotl.catalogs`).

Examples
--------
>>> stack = MosaicStack.open({"F555W": "f555w.fits", "F814W": "f814w.fits"}, hdu="SCI")  # doctest: +SKIP
>>> stamp, flags = stack.cutout(1200.0, 873.5, size=64)                                   # doctest: +SKIP
>>> stamp.shape, flags.edge, flags.nan_fraction                                           # doctest: +SKIP
((2, 64, 64), False, 0.0)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

HduSpec = str | int | None


def _hdu_label(hdu: HduSpec) -> str:
    return "auto" if hdu is None else repr(hdu)


def _check_complete(hdul, path: Path, band: str) -> None:
    """Raise DataError if any HDU's data extends beyond the end of the file (a truncated download)."""
    size = path.stat().st_size
    for i, h in enumerate(hdul):
        info = h.fileinfo()
        if info is None:
            continue
        end = int(info.get("datLoc", 0)) + int(info.get("datSpan", 0))
        if end > size:
            raise DataError(f"band {band}: FITS file '{path}' is truncated (HDU {i} needs {end} bytes, the file has "
                            f"{size}); download or copy it again")


def open_fits(path: str | os.PathLike, *, band: str = "image") -> Any:
    """Open a FITS file memory-mapped, turning every way it can be bad into a :class:`DataError`.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    band : str
        Name used in error messages.

    Returns
    -------
    astropy.io.fits.HDUList
        The open file (``memmap=True``, ``lazy_load_hdus=False`` so that all headers are checked).
    """
    from astropy.io import fits

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"band {band}: FITS file '{p}' does not exist; check the path in data.images")
    if p.is_dir():
        raise DataError(f"band {band}: '{p}' is a directory, not a FITS file; give the path of the .fits file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation and header warnings become errors below
            hdul = fits.open(p, memmap=True, lazy_load_hdus=False, mode="readonly")
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"band {band}: '{p}' is not a readable FITS file ({first}); replace it with a valid FITS "
                        f"image") from None
    if len(hdul) == 0:
        hdul.close()
        raise DataError(f"band {band}: FITS file '{p}' has no HDUs; replace it with a valid FITS image")
    try:
        _check_complete(hdul, p, band)
    except DataError:
        hdul.close()
        raise
    return hdul


def _image_hdus(hdul) -> list[tuple[int, str, tuple[int, ...]]]:
    out = []
    for i, h in enumerate(hdul):
        shape = tuple(h.shape) if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) else ()
        out.append((i, h.name, shape))
    return out


def select_hdu(hdul, hdu: HduSpec, *, path: Path, band: str) -> int:
    """Index of the HDU to use: ``hdu`` by name (EXTNAME) or index, or the first 2-D image if ``None``."""
    images = _image_hdus(hdul)
    listing = ", ".join(f"{i}:{n or '-'}{list(s) if s else '(no data)'}" for i, n, s in images)
    if hdu is None:
        for i, _, shape in images:
            if len([d for d in shape if d > 1]) == 2:
                return i
        raise DataError(f"band {band}: '{path}' has no 2-D image HDU (HDUs: {listing}); give a FITS image")
    if isinstance(hdu, int) or (isinstance(hdu, str) and hdu.lstrip("-").isdigit()):
        idx = int(hdu)
        if not -len(hdul) <= idx < len(hdul):
            raise DataError(f"band {band}: '{path}' has no HDU {idx} (HDUs: {listing}); set data.hdu to one of them")
        return idx % len(hdul)
    names = [n.upper() for _, n, _ in images]
    if str(hdu).upper() not in names:
        from .errors import did_you_mean

        raise DataError(f"band {band}: '{path}' has no HDU named '{hdu}'{did_you_mean(str(hdu).upper(), names)} "
                        f"(HDUs: {listing}); set data.hdu to one of them")
    return names.index(str(hdu).upper())


@dataclass
class BandMosaic:
    """One band's 2-D image in a FITS file, opened memory-mapped on first use.

    Parameters
    ----------
    band : str
        Filter name (e.g. ``"F555W"``).
    path : pathlib.Path
        The FITS file.
    hdu : int
        Index of the HDU holding the image (resolved by :meth:`open`).
    shape : tuple of int
        ``(ny, nx)`` of the image.
    wcs : astropy.wcs.WCS or None
        The celestial WCS, or ``None`` if the header has none.

    Notes
    -----
    The open file handle is dropped when the object is pickled (DataLoader workers) and reopened
    lazily in the new process, so every worker has its own memory map.
    """

    band: str
    path: Path
    hdu: int
    shape: tuple[int, int]
    wcs: Any = None
    _hdul: Any = field(default=None, repr=False, compare=False)
    _data: Any = field(default=None, repr=False, compare=False)
    _pixels: Any = field(default=None, repr=False, compare=False)
    _windows: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike, *, band: str, hdu: HduSpec = None) -> BandMosaic:
        """Open and check a band image; keep the file open memory-mapped.

        Raises
        ------
        DataError
            File missing, not FITS, truncated, the HDU missing or not a 2-D image.
        """
        p = Path(path).expanduser()
        hdul = open_fits(p, band=band)
        try:
            idx = select_hdu(hdul, hdu, path=p, band=band)
            h = hdul[idx]
            shape = tuple(int(s) for s in (h.shape if getattr(h, "is_image", False) else ()))
            squeezed = tuple(s for s in shape if s != 1) if len(shape) > 2 else shape
            if len(squeezed) != 2:
                raise DataError(f"band {band}: HDU {_hdu_label(hdu)} of '{p}' holds "
                                f"{'no image' if not shape else f'a {len(shape)}-D array {list(shape)}'}, not a 2-D "
                                f"image; choose the image HDU with data.hdu (e.g. SCI or 1)")
            wcs = _celestial_wcs(h.header, p, band)
        except DataError:
            hdul.close()
            raise
        obj = cls(band=band, path=p, hdu=idx, shape=(squeezed[0], squeezed[1]), wcs=wcs)
        obj._hdul = hdul
        return obj

    @property
    def data(self) -> np.ndarray:
        """The 2-D image as a read-only memory map (opened lazily)."""
        if self._data is None:
            if self._hdul is None:
                self._hdul = open_fits(self.path, band=self.band)
            arr = self._hdul[self.hdu].data
            if arr.ndim > 2:
                arr = arr.reshape(self.shape)
            self._data = arr
        return self._data

    @property
    def pixels(self) -> np.ndarray:
        """:attr:`data` as a plain ``numpy.ndarray`` view of the memory map (slicing it is cheaper)."""
        if self._pixels is None:
            self._pixels = np.asarray(self.data)
        return self._pixels

    def windows(self, size: int) -> np.ndarray:
        """All ``size x size`` windows of the image as a strided view ``[ny - size + 1, nx - size + 1, size, size]``
        (no copy): ``windows(s)[y0, x0]`` is the stamp whose first pixel is ``(x0, y0)``."""
        view = self._windows.get(size)
        if view is None:
            view = np.lib.stride_tricks.sliding_window_view(self.pixels, (size, size))
            self._windows[size] = view
        return view

    def close(self) -> None:
        """Close the file (it is reopened on the next access to :attr:`data`)."""
        self._data = None
        self._pixels = None
        self._windows = {}
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_hdul"] = None
        state["_data"] = None
        state["_pixels"] = None
        state["_windows"] = {}
        return state

    def header(self):
        """The FITS header of the image HDU."""
        from astropy.io import fits

        return fits.getheader(self.path, self.hdu)


def _celestial_wcs(header, path: Path, band: str):
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
    except Exception as exc:  # astropy raises many kinds for broken WCS keywords
        log.warning("band %s: ignoring the unreadable WCS of '%s': %s", band, path, str(exc).splitlines()[0])
        return None
    if not wcs.has_celestial:
        return None
    return wcs.celestial


@dataclass
class CutoutFlags:
    """Quality flags of one multi-band cutout.

    Attributes
    ----------
    outside : bool
        The position lies outside the image (in at least one band): nothing to cut there.
    edge : bool
        The stamp extends beyond the image array (PHANGS class 4.11, "edge") in at least one band.
    nan_fraction : float
        Fraction of NaN (or non-finite) pixels over all bands, counting the pixels that fall off the
        image (filled with NaN) as well as NaNs in the data (outside a drizzled footprint).
    missing_bands : tuple of str
        Bands whose stamp is entirely NaN (off the footprint, or no data).
    """

    outside: bool = False
    edge: bool = False
    nan_fraction: float = 0.0
    missing_bands: tuple[str, ...] = ()

    @property
    def nan(self) -> bool:
        """Any non-finite pixel in the stamp."""
        return self.nan_fraction > 0

    @property
    def missing_band(self) -> bool:
        return bool(self.missing_bands)

    @property
    def all_nan(self) -> bool:
        return self.nan_fraction >= 1.0


def geometry_flags(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``(outside, edge)`` flags for stamps of side ``size`` at 0-based ``(x, y)``.

    ``outside``: the centre is not on the image, or the position is not finite; ``edge``: part of
    the stamp falls off the image array (always true when ``outside``). Uses ``Cutout2D``'s rule for
    the first pixel of the stamp (``ceil(position - size / 2)``, see
    :func:`astropy.nddata.utils.overlap_slices`).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ny, nx = shape
    finite = np.isfinite(x) & np.isfinite(y)
    xs = np.where(finite, x, 0.0)
    ys = np.where(finite, y, 0.0)
    outside = ~finite | (xs < -0.5) | (xs >= nx - 0.5) | (ys < -0.5) | (ys >= ny - 0.5)
    x_lo = np.ceil(xs - size / 2.0)
    y_lo = np.ceil(ys - size / 2.0)
    outside |= (x_lo + size <= 0) | (y_lo + size <= 0)  # no overlap at all (a 1-pixel stamp at -0.5): Cutout2D refuses
    edge = outside | (x_lo < 0) | (y_lo < 0) | (x_lo + size > nx) | (y_lo + size > ny)
    return outside, edge


class MosaicStack:
    """The bands of one field, in channel order, cut into multi-band stamps.

    Parameters
    ----------
    bands : list of BandMosaic
        One per band, in channel order.
    """

    def __init__(self, bands: list[BandMosaic]):
        if not bands:
            raise DataError("no band images given; list them under data.images as {band: path}")
        self.bands = list(bands)

    @classmethod
    def open(cls, images: Mapping[str, str | os.PathLike], hdu: HduSpec | Mapping[str, HduSpec] = None,
             *, need_wcs: bool = False, same_grid: bool = True) -> MosaicStack:
        """Open every band (all files are checked before anything else happens).

        Parameters
        ----------
        images : mapping of str to path
            ``{band: FITS file}``; the order is the channel order.
        hdu : str, int, None, or mapping of band to those
            The HDU holding each image (by EXTNAME or index; ``None``: first 2-D image).
        need_wcs : bool
            Require a celestial WCS in every band (sky positions).
        same_grid : bool
            Require every band to have the same pixel shape (pixel positions are shared).

        Raises
        ------
        DataError
            Any band file missing, unreadable, without the HDU, without WCS when needed, or on
            a different pixel grid.
        """
        if not images:
            raise DataError("no band images given; list them under data.images as {band: path}")
        per_band = dict(hdu) if isinstance(hdu, Mapping) else {b: hdu for b in images}
        unknown = sorted(set(per_band) - set(images))
        if unknown:
            raise DataError(f"data.hdu names band(s) {unknown} that are not in data.images ({list(images)}); "
                            f"use the same band names in both")
        opened: list[BandMosaic] = []
        try:
            for band, path in images.items():
                opened.append(BandMosaic.open(path, band=band, hdu=per_band.get(band)))
            if need_wcs:
                for b in opened:
                    if b.wcs is None:
                        raise DataError(f"band {b.band}: '{b.path}' (HDU {b.hdu}) has no celestial WCS, needed for "
                                        f"coords: sky; use pixel positions (coords: pixel) or a file with a WCS")
            if same_grid:
                shapes = {b.band: b.shape for b in opened}
                if len(set(shapes.values())) > 1:
                    raise DataError(f"band images have different pixel grids {shapes}; with coords: pixel every band "
                                    f"must be registered to the same grid (or use coords: sky with a WCS per band)")
        except DataError:
            for b in opened:
                b.close()
            raise
        return cls(opened)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.band for b in self.bands)

    @property
    def shape(self) -> tuple[int, int]:
        """Pixel shape of the first band."""
        return self.bands[0].shape

    def close(self) -> None:
        for b in self.bands:
            b.close()

    def world_to_pixel(self, ra: np.ndarray, dec: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per band, 0-based ``(x, y)`` of sky positions (degrees, ICRS) through that band's WCS."""
        out = []
        for b in self.bands:
            if b.wcs is None:
                raise DataError(f"band {b.band}: '{b.path}' has no celestial WCS; sky positions need one")
            px, py = b.wcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
            out.append((np.asarray(px, float), np.asarray(py, float)))
        return out

    def cutouts(self, x: np.ndarray, y: np.ndarray, size: int, *, out: np.ndarray | None = None) -> StampBatch:
        """Cut ``N`` stamps ``[N, C, size, size]`` (float32, NaN off the image) in one vectorised pass.

        Parameters
        ----------
        x, y : array-like
            0-based positions, shape ``[N]`` (shared by all bands) or ``[C, N]`` (one row per band,
            e.g. sky positions projected through each band's WCS).
        size : int
            Side of the stamps in pixels.
        out : numpy.ndarray, optional
            A float32 ``[N, C, size, size]`` array to fill (e.g. a memory-mapped cache).

        Returns
        -------
        StampBatch
            The stamps and, per stamp, the flags of :class:`CutoutFlags` as arrays.

        Notes
        -----
        The same pixels as ``Cutout2D(data, (x, y), size, mode="partial", fill_value=nan)`` per band;
        a band whose position is off the image (or not finite) is all NaN (``outside``), as in
        :meth:`cutout`. Non-finite values (inf) become NaN.
        """
        nb = len(self.bands)
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.ndim == 1:
            x = np.broadcast_to(x, (nb, len(x)))
            y = np.broadcast_to(y, (nb, len(y)))
        if x.shape != y.shape or x.shape[0] != nb:
            raise ValueError(f"positions must have shape [N] or [{nb}, N]; got x {x.shape}, y {y.shape}")
        n = x.shape[1]
        size = int(size)
        if out is None:
            out = np.empty((n, nb, size, size), dtype=np.float32)
        outside_any = np.zeros(n, dtype=bool)
        edge_any = np.zeros(n, dtype=bool)
        for c, band in enumerate(self.bands):
            outside, edge = geometry_flags(x[c], y[c], band.shape, size)
            outside_any |= outside
            edge_any |= edge
            interior = np.flatnonzero(~edge)
            partial = np.flatnonzero(edge & ~outside)
            if len(interior) < n:
                out[np.flatnonzero(edge), c] = np.nan
            if not len(interior) and not len(partial):
                continue
            # first pixel of each stamp: Cutout2D's rule (overlap_slices: ceil(position - size / 2))
            finite = ~outside
            x0 = np.zeros(n, dtype=np.int64)
            y0 = np.zeros(n, dtype=np.int64)
            x0[finite] = np.ceil(x[c][finite] - size / 2.0)
            y0[finite] = np.ceil(y[c][finite] - size / 2.0)
            if len(interior):
                out[interior, c] = band.windows(size)[y0[interior], x0[interior]]
            if len(partial):
                pix = band.pixels
                ny, nx = band.shape
                for i in partial:  # off the edge: the overlap, NaN around it (Cutout2D mode="partial")
                    ya, xa = int(y0[i]), int(x0[i])
                    yl, yh, xl, xh = max(0, ya), min(ny, ya + size), max(0, xa), min(nx, xa + size)
                    out[i, c, yl - ya:yh - ya, xl - xa:xh - xa] = pix[yl:yh, xl:xh]
        finite = np.isfinite(out)
        if not finite.all():
            out[~finite] = np.nan
            band_has_data = finite.any(axis=(2, 3))
            nan_fraction = 1.0 - finite.mean(axis=(1, 2, 3))
        else:
            band_has_data = np.ones((n, nb), dtype=bool)
            nan_fraction = np.zeros(n)
        return StampBatch(stamps=out, outside=outside_any, edge=edge_any,
                          nan_fraction=np.asarray(nan_fraction, dtype=float), missing=~band_has_data,
                          bands=self.names)

    def cutout(self, x: float | list[float], y: float | list[float], size: int, *,
               with_wcs: bool = False) -> tuple[np.ndarray, CutoutFlags] | tuple[np.ndarray, CutoutFlags, list]:
        """Cut a ``[C, size, size]`` float32 stamp centred on 0-based ``(x, y)``.

        Parameters
        ----------
        x, y : float or list of float
            Position, shared by all bands, or one per band (sky positions projected per band).
        size : int
            Side of the stamp in pixels.
        with_wcs : bool
            Also return each band's cutout WCS (``None`` where the band has none); this uses
            :class:`astropy.nddata.Cutout2D` itself.

        Returns
        -------
        stamp : numpy.ndarray
            ``float32 [C, size, size]``; pixels off the image are NaN.
        flags : CutoutFlags
        wcs : list
            Only with ``with_wcs=True``.
        """
        if with_wcs:
            return self._cutout2d(x, y, size)
        n = len(self.bands)
        xs = np.asarray(list(x) if isinstance(x, (list, tuple, np.ndarray)) else [x] * n, dtype=float)
        ys = np.asarray(list(y) if isinstance(y, (list, tuple, np.ndarray)) else [y] * n, dtype=float)
        batch = self.cutouts(xs[:, None], ys[:, None], size)
        return batch.stamps[0], batch.flags(0)

    def _cutout2d(self, x, y, size: int):
        """One stamp through :class:`astropy.nddata.Cutout2D`, with each band's cutout WCS."""
        from astropy.nddata import Cutout2D, NoOverlapError, PartialOverlapError

        n = len(self.bands)
        xs = list(x) if isinstance(x, (list, tuple, np.ndarray)) else [x] * n
        ys = list(y) if isinstance(y, (list, tuple, np.ndarray)) else [y] * n
        out = np.full((n, size, size), np.nan, dtype=np.float32)
        wcs_out: list = []
        outside = edge = False
        missing: list[str] = []
        for c, b in enumerate(self.bands):
            xi, yi = float(xs[c]), float(ys[c])
            ny, nx = b.shape
            if not (np.isfinite(xi) and np.isfinite(yi)) or not (-0.5 <= xi < nx - 0.5 and -0.5 <= yi < ny - 0.5):
                outside = edge = True
                missing.append(b.band)
                wcs_out.append(None)
                continue
            try:
                cut = Cutout2D(b.data, (xi, yi), (size, size), wcs=b.wcs, mode="partial",
                               fill_value=np.nan, copy=True)
            except (NoOverlapError, PartialOverlapError):  # pragma: no cover - caught by the bounds test above
                outside = edge = True
                missing.append(b.band)
                wcs_out.append(None)
                continue
            stamp = np.asarray(cut.data, dtype=np.float32)
            out[c] = stamp
            sl = cut.slices_original
            if (sl[0].stop - sl[0].start) != size or (sl[1].stop - sl[1].start) != size:
                edge = True
            if not np.isfinite(stamp).any():
                missing.append(b.band)
            wcs_out.append(cut.wcs)
        finite = np.isfinite(out)
        out[~finite] = np.nan
        flags = CutoutFlags(outside=outside, edge=edge, nan_fraction=float(1.0 - finite.mean()),
                            missing_bands=tuple(missing))
        return out, flags, wcs_out


@dataclass
class StampBatch:
    """Stamps cut by :meth:`MosaicStack.cutouts` and their per-stamp flags (arrays of :class:`CutoutFlags`).

    Attributes
    ----------
    stamps : numpy.ndarray
        ``float32 [N, C, size, size]``, NaN off the image.
    outside, edge : numpy.ndarray of bool
        ``[N]``: position off the image in some band; stamp running off the image array.
    nan_fraction : numpy.ndarray of float
        ``[N]``: fraction of non-finite pixels over all bands.
    missing : numpy.ndarray of bool
        ``[N, C]``: the band has no finite pixel in the stamp.
    bands : tuple of str
        Band names, for :meth:`missing_bands`.
    """

    stamps: np.ndarray
    outside: np.ndarray
    edge: np.ndarray
    nan_fraction: np.ndarray
    missing: np.ndarray
    bands: tuple[str, ...]

    def missing_bands(self, i: int) -> tuple[str, ...]:
        """Names of the bands without data in stamp ``i``."""
        return tuple(b for b, m in zip(self.bands, self.missing[i]) if m)

    def flags(self, i: int) -> CutoutFlags:
        """The :class:`CutoutFlags` of stamp ``i``."""
        return CutoutFlags(outside=bool(self.outside[i]), edge=bool(self.edge[i]),
                           nan_fraction=float(self.nan_fraction[i]), missing_bands=self.missing_bands(i))
