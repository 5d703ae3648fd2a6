"""Paint a whole PHANGS-HST-like five-band mosaic with a celestial WCS and write its candidate catalogue.

:func:`paint_mosaic` renders the objects of :mod:`astrotl_phangs.simulate` (same morphologies,
SSP/supergiant colours, PSFs, photometric constants and sub-classes; each object is drawn once
for all five bands with the simulator's Fourier renderer) into a spiral galaxy seen by HST
WFC3/UVIS, and writes

* one FITS file per band, ``<prefix>_f275w.fits`` ... ``<prefix>_f814w.fits``: an empty primary
  HDU (``TELESCOP``, ``INSTRUME``, ``FILTER``, ``EXPTIME``) and the image HDU ``SCI``,
  float32 in **electrons per second** (``BUNIT = 'ELECTRONS/S'``, as drizzled HST products),
  with a TAN WCS (north up, 0.04 arcsec/px, centred on NGC 628 by default), ``PHOTFLAM``,
  ``PHOTPLAM``, ``PHOTZPT`` (ST system, approximate) and ``ZP_VEGA`` (the simulator's Vega zero
  point: ``mag = ZP_VEGA - 2.5 log10(counts per second)``); pixels outside the drizzle footprint
  (a rotated rectangle per camera pointing) are NaN;
* ``candidates.ecsv``: one row per cluster candidate with ``id`` (1..N), ``x``, ``y`` (0-based
  pixels), ``ra``, ``dec`` (deg, ICRS, through the WCS), ``cls`` (1-4), ``subclass`` (PHANGS
  code, ``4.11`` edge, ``4.9`` redundant ...), ``subclass_drawn`` (the morphology that was
  painted), ``mag_F275W`` ... ``mag_F814W`` (true input Vega magnitudes), ``log_age``, ``ebv``,
  ``fwhm_px``, ``background`` (local F555W sky + galaxy, e-/s/px), ``r_gal`` (deprojected
  galactocentric radius, px), ``edge_dist`` (px to the nearest no-data pixel or image border,
  any band), ``spurious`` (a false peak, see below), ``redundant`` and ``redundant_of``;
* ``manifest.json`` (written last): the cache key, the files and their sizes.

The scene
---------
* **Galaxy light**: an inclined exponential disk, a Sersic (n = 2) bulge and a two-armed
  logarithmic spiral (pitch 18-25 deg) that brightens the disk; the bulge is old and red, the
  disk intermediate, the arms young and blue (SSP colours of the simulator).
* **Candidates** (``n_sources`` rows in all): the class and sub-class mix of ``config``
  (:class:`~astrotl_phangs.simulate.SimConfig`); young objects (associations, asymmetric
  clusters, the supergiants of pairs and triplets) sit mostly in star-forming complexes along the
  arms (Gaussian groups of 10-40 px), old symmetric clusters mostly follow the smooth disk,
  saturated foreground stars, background galaxies and bad pixels are uniform. Painted candidates
  are at least ``min_separation`` (6) px apart.
* **Edges (4.11)**: candidates drawn as sub-class 4.11 are placed 1 to ``edge_radius`` px inside
  the footprint boundary (of the UV or the optical pointing, or of the image), so part of the
  object falls on NaN pixels; every candidate that ends up within ``edge_radius`` px of no-data
  is labelled 4.11 (class 4). Candidates further in may still have NaN in a larger stamp, which
  :class:`~astrotl.datasets.CatalogCutoutDataset` flags (``flag_nan``, ``flag_edge``).
* **Redundant detections (4.9)**: a fraction ``spurious_fraction`` of the rows are false peaks
  1.5-4 px from a cluster or association, 1-2.5 mag fainter (nothing extra is painted, as for
  DOLPHOT's residual peaks). :func:`astrotl_phangs.redundancy.mark_redundant` (5 px, brightest
  in F555W kept; Whitmore et al. 2021, Sect. 6.3.1) then marks them: ``redundant = True``,
  ``cls = 4``, ``subclass = '4.9'``.
* **Crowding**: uncatalogued faint stars and small clusters (magnitudes beyond
  ``mag_range[1]``), ``config.crowding`` per 32 x 32 px on average including the candidates, in
  the same arm/disk mixture.
* **Noise**: sky per band (:data:`~astrotl_phangs.simulate.SKY_E_PER_PIX` x ``config.sky``),
  Poisson noise on everything, Gaussian read noise, residual cosmic rays at
  ``config.cosmic_ray_rate`` per 32 x 32 px and band, saturation with bleeding along columns.
  ``config.noise = False`` gives the noiseless model.

Everything is seeded: the same arguments give bit-identical files. A second call with the same
arguments and ``out_dir`` returns the existing files (checked against ``manifest.json``) in
milliseconds; files are written atomically, the manifest last, so an interrupted call is simply
repainted.

Examples
--------
>>> from astrotl_phangs.mosaic import paint_mosaic
>>> res = paint_mosaic("/tmp/m", n_sources=30, shape=(256, 256), seed=1)   # doctest: +SKIP
>>> res.images["F555W"], len(res.catalog)                                  # doctest: +SKIP
(PosixPath('/tmp/m/mosaic_f555w.fits'), 30)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Column, Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astrotl.cache import jsonable
from astrotl.errors import ConfigError, DataError
from astrotl.io import atomic_path, write_json

from . import simulate as sim
from .redundancy import DEFAULT_RADIUS_PX, mark_redundant
from .simulate import BANDS, EXPTIME_S, PIXEL_SCALE_ARCSEC, SIM_VERSION, ZEROPOINTS_VEGA, SimConfig

__all__ = ["MOSAIC_VERSION", "MosaicResult", "MosaicConfigError", "paint_mosaic", "NGC628_CENTRE"]

log = logging.getLogger(__name__)

#: Version of the mosaic painter; part of the cache key, bump when the output changes.
MOSAIC_VERSION = "1.1.0"
#: NGC 628 (M74) centre, ICRS degrees.
NGC628_CENTRE = (24.174, 15.784)
#: Smallest mosaic side (pixels).
MIN_SIDE = 64
#: Pivot wavelengths (Angstrom) and approximate Vega f_lambda there (erg/s/cm2/A) for PHOTFLAM.
_PIVOT_A = np.array([2710.0, 3355.0, 4326.0, 5308.0, 8040.0])
_VEGA_FLAM = np.array([3.9e-9, 4.3e-9, 6.3e-9, 3.7e-9, 1.15e-9])
#: Bands of each camera pointing (each has its own drizzle footprint).
_POINTINGS = {"uv": (0, 1, 2), "optical": (3, 4)}
#: Share of each sub-class that lives in star-forming complexes (the rest follows the smooth disk);
#: ``None``: uniform over the field (foreground stars, background galaxies, detector artefacts).
_P_COMPLEX = {"1": 0.25, "2": 0.5, "3": 0.85, "4.1": 0.7, "4.2": 0.75, "4.3": 0.75, "4.4": None, "4.7": None,
              "4.11": 0.5, "4.12": None}
_EXTENDED = {"3", "4.4", "4.7"}  # rendered on a 2x larger stamp
_V = 3


class MosaicConfigError(ConfigError, ValueError):
    """A :func:`paint_mosaic` argument is invalid (also a ``ValueError``)."""


@dataclass
class MosaicResult:
    """What :func:`paint_mosaic` wrote.

    Attributes
    ----------
    out_dir : Path
    images : dict of str to Path
        Band -> FITS file (image HDU ``SCI``, e-/s, NaN off the footprint), in :data:`BANDS` order.
    catalog_path : Path
        ``candidates.ecsv``.
    catalog : astropy.table.Table
        The candidate catalogue (see the module docstring for the columns).
    wcs : astropy.wcs.WCS
        The celestial WCS shared by all bands.
    shape : (int, int)
        ``(ny, nx)``.
    key : str
        sha256 of the arguments (the cache key).
    seconds : float
        Painting time (0 when the files were already there).
    cached : bool
        True if the files were reused.
    """

    out_dir: Path
    images: dict[str, Path]
    catalog_path: Path
    catalog: Table = field(repr=False)
    wcs: WCS = field(repr=False)
    shape: tuple[int, int]
    key: str
    seconds: float = 0.0
    cached: bool = False

    def cutout_config(self, **overrides) -> dict:
        """Options of a ``catalog_cutouts`` data section reading these files (sky positions, labels ``cls``)."""
        cfg = {"images": {b: str(p) for b, p in self.images.items()}, "hdu": "SCI", "catalog": str(self.catalog_path),
               "coords": "sky", "label_col": "cls", "class_map": {c: c for c in ("1", "2", "3", "4")},
               "classes": ["1", "2", "3", "4"], "class_descriptions": list(sim.CLASS_NAMES.values()),
               "mag_cols": "mag_{band}", "extra_columns": ["subclass", "log_age", "ebv", "redundant"]}
        cfg.update(overrides)
        return cfg


# --------------------------------------------------------------------------------------------
# validation and cache


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise MosaicConfigError(f"{name}={value!r} is invalid: must be an integer >= {lo}")
    return int(value)


def _check_args(n_sources, shape, config, seed, ra, dec, spurious_fraction, edge_radius, min_separation):
    n = _check_int("n_sources", n_sources, 1)
    try:
        ny, nx = (int(v) for v in shape)
        if any(float(v) != int(v) for v in shape):
            raise ValueError
    except (TypeError, ValueError):
        raise MosaicConfigError(f"shape={shape!r} is invalid: must be two integers (ny, nx)") from None
    if min(ny, nx) < max(MIN_SIDE, 2 * config.size):
        raise MosaicConfigError(f"shape=({ny}, {nx}) is too small: each side must be >= "
                                f"{max(MIN_SIDE, 2 * config.size)} px (at least {MIN_SIDE} and twice the render "
                                f"stamp config.size={config.size})")
    if ny * nx > 20000 * 20000:
        raise MosaicConfigError(f"shape=({ny}, {nx}) is too large: at most 4e8 pixels per band")
    max_n = ny * nx // 400
    if n > max_n:
        raise MosaicConfigError(f"n_sources={n} is too many for a {ny} x {nx} mosaic: at most {max_n} "
                                f"(one per 20 x 20 px); make the mosaic larger or use fewer sources")
    if not isinstance(config, SimConfig):
        raise MosaicConfigError(f"config={config!r} is invalid: must be a SimConfig")
    s = _check_int("seed", seed, 0)
    if not (math.isfinite(float(ra)) and 0 <= float(ra) < 360 and math.isfinite(float(dec)) and -90 < float(dec) < 90):
        raise MosaicConfigError(f"centre (ra, dec)=({ra!r}, {dec!r}) is invalid: need 0 <= ra < 360, -90 < dec < 90")
    if not (math.isfinite(float(spurious_fraction)) and 0 <= float(spurious_fraction) <= 0.3):
        raise MosaicConfigError(f"spurious_fraction={spurious_fraction!r} is invalid: must be in [0, 0.3]")
    if not (math.isfinite(float(edge_radius)) and 1.5 <= float(edge_radius) <= 20):
        raise MosaicConfigError(f"edge_radius={edge_radius!r} is invalid: must be in [1.5, 20] px")
    if not (math.isfinite(float(min_separation)) and 0 <= float(min_separation) <= 15):
        raise MosaicConfigError(f"min_separation={min_separation!r} is invalid: must be in [0, 15] px")
    return n, (ny, nx), s


def _key(**parts) -> str:
    from astrotl.cache import cache_key

    return cache_key(parts, length=None)


def _prepare_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"cannot write the mosaic to out_dir '{out_dir}': {exc.strerror or exc}; "
                        f"choose a writable directory") from None


def _load_cached(out_dir: Path, key: str, prefix: str) -> MosaicResult | None:
    man_path = out_dir / "manifest.json"
    if not man_path.is_file():
        return None
    try:
        man = json.loads(man_path.read_text())
        if man.get("key") != key:
            return None
        for name, size in man["files"].items():
            p = out_dir / name
            if not p.is_file() or p.stat().st_size != size:
                return None
        images = {b: out_dir / f"{prefix}_{b.lower()}.fits" for b in BANDS}
        cat_path = out_dir / "candidates.ecsv"
        cat = Table.read(cat_path, format="ascii.ecsv")
        with fits.open(images["F555W"], memmap=True) as hdul:
            wcs = WCS(hdul["SCI"].header)
            shape = tuple(int(v) for v in hdul["SCI"].shape)
        return MosaicResult(out_dir, images, cat_path, cat, wcs, shape, key, 0.0, True)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is repainted
        log.warning("repainting mosaic in %s: cached files unusable (%s)", out_dir, exc)
        return None


# --------------------------------------------------------------------------------------------
# geometry: WCS, footprints, galaxy


def make_wcs(shape: tuple[int, int], ra: float, dec: float) -> WCS:
    """North-up TAN WCS at 0.04 arcsec/px with (ra, dec) at the mosaic centre."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cdelt = [-PIXEL_SCALE_ARCSEC / 3600.0, PIXEL_SCALE_ARCSEC / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


@dataclass(frozen=True)
class _Footprint:
    """A rotated rectangle (drizzle footprint of one camera pointing), clipped by the image."""

    cx: float
    cy: float
    a: float  # half sizes along the rotated axes
    b: float
    angle: float  # rad
    nx: int
    ny: int

    def distance(self, x, y):
        """Distance (px) to the footprint boundary or image border; negative outside."""
        dx, dy = x - self.cx, y - self.cy
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        d = np.minimum(self.a - np.abs(u), self.b - np.abs(v))
        border = np.minimum(np.minimum(x + 0.5, self.nx - 0.5 - x), np.minimum(y + 0.5, self.ny - 0.5 - y))
        return np.minimum(d, border)

    def inside_rows(self, y0: int, y1: int) -> np.ndarray:
        yy, xx = np.mgrid[y0:y1, 0 : self.nx].astype(np.float32)
        return self.distance(xx, yy) >= 0


def _footprints(rng, shape) -> dict[str, _Footprint]:
    ny, nx = shape
    alpha = math.radians(float(rng.uniform(4.0, 10.0)) * (1 if rng.random() < 0.5 else -1))
    out = {}
    for name in ("optical", "uv"):
        ang = alpha if name == "optical" else alpha + math.radians(float(rng.uniform(1.5, 3.0)))
        # the rotated rectangle overfills the image a little: its corners are clipped by the image
        # border and NaN wedges run along every side (as a rotated pointing drizzled north-up)
        s = 0.97
        shrink = 1.0 if name == "optical" else 0.985
        off = (0.0, 0.0) if name == "optical" else tuple(rng.uniform(-0.01, 0.01, size=2))
        out[name] = _Footprint((nx - 1) / 2 + off[0] * nx, (ny - 1) / 2 + off[1] * ny,
                               0.5 * nx * s * shrink, 0.5 * ny * s * shrink, ang, nx, ny)
    return out


def _edge_distance(fps: dict[str, _Footprint], x, y):
    return np.minimum(fps["optical"].distance(x, y), fps["uv"].distance(x, y))


@dataclass(frozen=True)
class _Galaxy:
    cx: float
    cy: float
    q: float  # axis ratio of the inclined disk
    pa: float  # rad
    h: float  # disk scale length, px
    re: float  # bulge effective radius, px
    pitch: float  # rad
    phase: float

    def coords(self, x, y):
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.pa), math.sin(self.pa)
        u = dx * c + dy * s
        v = (-dx * s + dy * c) / self.q
        return np.hypot(u, v), np.arctan2(v, u)

    def components(self, x, y):
        """(disk, bulge, arm) surface brightness shapes (disk and bulge 1 at the centre)."""
        r, th = self.coords(x, y)
        disk = np.exp(-r / self.h)
        bulge = np.exp(-3.67 * np.sqrt(r / self.re))
        psi = th - np.log(r / self.h + 0.05) / math.tan(self.pitch) - self.phase
        arm = ((1.0 + np.cos(2.0 * psi)) * 0.5) ** 4
        arm = arm * disk * (1.0 - np.exp(-((r / (0.25 * self.h)) ** 2)))
        return disk, bulge, arm


def _galaxy(rng, shape) -> _Galaxy:
    ny, nx = shape
    m = min(ny, nx)
    return _Galaxy(cx=(nx - 1) / 2 + float(rng.uniform(-0.08, 0.08)) * nx,
                   cy=(ny - 1) / 2 + float(rng.uniform(-0.08, 0.08)) * ny,
                   q=float(rng.uniform(0.75, 0.95)), pa=float(rng.uniform(0, np.pi)), h=0.4 * m, re=0.06 * m,
                   pitch=math.radians(float(rng.uniform(18.0, 25.0))), phase=float(rng.uniform(0, np.pi)))


def _band_levels(background: float) -> np.ndarray:
    """Electrons per pixel over the exposure, ``[3 components, 5 bands]`` at unit shape (disk, bulge, arm)."""
    out = []
    for level_v, age, ebv in ((300.0, 8.8, 0.15), (1500.0, 9.9, 0.1), (250.0, 7.0, 0.3)):
        f = sim._fluxes(0.0, sim.ssp_colour_offsets(age), ebv)
        out.append(background * level_v * f / f[_V])
    return np.array(out)


# --------------------------------------------------------------------------------------------
# positions


def _sample_points(rng, n, shape, accept, batch=4096):
    """``n`` points uniform over the image, kept with probability ``accept(x, y)``."""
    ny, nx = shape
    xs, ys = [], []
    got = 0
    for _ in range(100000):
        if got >= n:
            break
        x = rng.uniform(-0.5, nx - 0.5, size=batch)
        y = rng.uniform(-0.5, ny - 0.5, size=batch)
        keep = rng.random(batch) < accept(x, y)
        xs.append(x[keep])
        ys.append(y[keep])
        got += int(keep.sum())
    else:  # pragma: no cover - acceptance is never that small
        raise RuntimeError("position sampling did not converge")
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


class _Placer:
    """Draws positions of the populations: star-forming complexes, the smooth disk, uniform, edges."""

    def __init__(self, rng, shape, gal: _Galaxy, fps, n_complex: int, edge_radius: float):
        self.rng, self.shape, self.gal, self.fps, self.edge_radius = rng, shape, gal, fps, edge_radius

        def arm_density(x, y):
            _, _, arm = gal.components(x, y)
            return arm + 0.03 * np.exp(-gal.coords(x, y)[0] / gal.h)

        self.cx, self.cy = _sample_points(rng, n_complex, shape, arm_density)
        self.csig = rng.uniform(10.0, 40.0, size=n_complex)

    def draw(self, kind: str, n: int, inside: bool):
        """``n`` positions of ``kind`` ('complex', 'disk', 'uniform', 'edge')."""
        rng, er = self.rng, self.edge_radius
        if n == 0:
            return np.zeros(0), np.zeros(0)
        ok = (lambda x, y: _edge_distance(self.fps, x, y) > er + 0.5) if inside else \
            (lambda x, y: np.ones(np.shape(x), dtype=bool))
        if kind == "edge":
            return _sample_points(rng, n, self.shape, lambda x, y: ((d := _edge_distance(self.fps, x, y)) >= 1.0)
                                  & (d <= er), batch=65536)
        if kind == "uniform":
            return _sample_points(rng, n, self.shape, ok)
        if kind == "disk":
            return _sample_points(rng, n, self.shape,
                                  lambda x, y: ok(x, y) * np.exp(-self.gal.coords(x, y)[0] / self.gal.h))
        xs, ys = [], []
        got = 0
        while got < n:
            m = 2 * (n - got) + 16
            k = rng.integers(len(self.cx), size=m)
            x = self.cx[k] + rng.normal(0, 1, m) * self.csig[k]
            y = self.cy[k] + rng.normal(0, 1, m) * self.csig[k]
            keep = ok(x, y) & (x > -0.5) & (x < self.shape[1] - 0.5) & (y > -0.5) & (y < self.shape[0] - 0.5)
            xs.append(x[keep])
            ys.append(y[keep])
            got += int(keep.sum())
        return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _place_candidates(placer: _Placer, subs: np.ndarray, min_sep: float):
    rng = placer.rng
    n = len(subs)
    x, y = np.zeros(n), np.zeros(n)
    kinds = np.empty(n, dtype=object)
    for i, s in enumerate(subs):
        p = _P_COMPLEX[s]
        kinds[i] = "edge" if s == "4.11" else "uniform" if p is None else ("complex" if rng.random() < p else "disk")

    def fill(idx):
        for kind in ("complex", "disk", "uniform", "edge"):
            sel = idx[kinds[idx] == kind]
            x[sel], y[sel] = placer.draw(kind, len(sel), inside=True)

    fill(np.arange(n))
    for _ in range(200):  # re-draw the later member of pairs closer than min_sep
        if min_sep <= 0:
            break
        pairs = cKDTree(np.column_stack([x, y])).query_pairs(min_sep, output_type="ndarray")
        if not len(pairs):
            break
        fill(np.unique(pairs.max(axis=1)))
    else:
        log.warning("could not separate all candidates by %.1f px", min_sep)
    return x, y


# --------------------------------------------------------------------------------------------
# objects


def _draw_object(rng, sub: str, x0: float, y0: float, mag: float, cfg: SimConfig, ctx):
    """Components of one candidate of sub-class ``sub`` centred at stamp position (x0, y0), as in
    :func:`astrotl_phangs.simulate.simulate`. Returns comps, log_age, ebv, fwhm, cosmic-ray image, spike angle."""
    log_age, cr_img, spikes = math.nan, None, None
    if sub == "1" or (sub == "4.11" and rng.random() < 0.6):
        comps, log_age, ebv, fwhm = sim._make_class1(rng, ctx, cfg, x0, y0, mag)
    elif sub == "2":
        comps, log_age, ebv, fwhm = sim._make_class2(rng, ctx, cfg, x0, y0, mag)
    elif sub == "3":
        comps, log_age, ebv, fwhm = sim._make_class3(rng, ctx, cfg, x0, y0, mag)
    elif sub in ("4.1", "4.4", "4.11"):
        comps, ebv, fwhm = sim._make_stars(rng, ctx, x0, y0, mag, 1)
        if sub == "4.4":
            spikes = float(rng.uniform(0, 0.5 * np.pi))
    elif sub == "4.2":
        comps, ebv, fwhm = sim._make_stars(rng, ctx, x0, y0, mag, 2)
    elif sub == "4.3":
        comps, ebv, fwhm = sim._make_stars(rng, ctx, x0, y0, mag, 3)
    elif sub == "4.7":
        comps, log_age, ebv, fwhm = sim._make_galaxy(rng, ctx, x0, y0, mag)
    elif sub == "4.12":
        comps, ebv, fwhm = [], 0.0, 1.0
        total = 10.0 ** (-0.4 * (mag - sim._ZP[_V])) * sim._TEXP[_V]
        cr_img = sim._cosmic_ray(rng, ctx.size, x0, y0, total)
    else:  # pragma: no cover - guarded by SimConfig validation
        raise AssertionError(sub)
    return comps, log_age, ebv, fwhm, cr_img, spikes


def _add_stamp(canvas: np.ndarray, stamp: np.ndarray, ix0: int, iy0: int) -> None:
    """Add ``stamp`` ``[..., s, s]`` into ``canvas`` ``[..., ny, nx]`` at (ix0, iy0), clipped."""
    ny, nx = canvas.shape[-2:]
    s = stamp.shape[-1]
    x0, y0 = max(ix0, 0), max(iy0, 0)
    x1, y1 = min(ix0 + s, nx), min(iy0 + s, ny)
    if x1 <= x0 or y1 <= y0:
        return
    canvas[..., y0:y1, x0:x1] += stamp[..., y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0]


class _PointSources:
    """Point sources from pre-rendered PSF stamps at (K+1)^2 sub-pixel phases, bilinear between phases.

    Each template is drawn by the simulator's Fourier renderer, so a point source here is the same
    PSF x pixel response as in :func:`astrotl_phangs.simulate.simulate` (to ~0.5 % of the peak),
    at ~1/100 of the cost of a Fourier render per source.
    """

    K = 8

    def __init__(self, size: int, psf_fwhm_px: float):
        self.ctx = sim._context(size, psf_fwhm_px)
        self.size, self.c = size, size // 2
        K = self.K
        t = np.empty((K + 1, K + 1, 5, size, size), dtype=np.float32)
        for j in range(K + 1):
            for i in range(K + 1):
                img = sim._render(self.ctx, [sim._Comp(self.c + i / K, self.c + j / K, np.ones(5))])
                t[j, i] = np.maximum(img, 0.0)
        self.templates = t

    def stamp(self, x: float, y: float, flux: np.ndarray) -> tuple[np.ndarray, int, int]:
        """``[5, size, size]`` image of a point source at mosaic (x, y) and its origin (ix0, iy0)."""
        ix, iy = math.floor(x), math.floor(y)
        fx, fy = (x - ix) * self.K, (y - iy) * self.K
        i0, j0 = min(int(fx), self.K - 1), min(int(fy), self.K - 1)
        wx, wy = np.float32(fx - i0), np.float32(fy - j0)
        t = self.templates
        img = ((1 - wy) * ((1 - wx) * t[j0, i0] + wx * t[j0, i0 + 1])
               + wy * ((1 - wx) * t[j0 + 1, i0] + wx * t[j0 + 1, i0 + 1]))
        return img * np.asarray(flux, dtype=np.float32)[:, None, None], ix - self.c, iy - self.c


def _stamp_origin(x: float, y: float, size: int) -> tuple[int, int, float, float]:
    ix0 = int(math.floor(x)) - size // 2
    iy0 = int(math.floor(y)) - size // 2
    return ix0, iy0, x - ix0, y - iy0


# --------------------------------------------------------------------------------------------
# catalogue

_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("id", None, "candidate id 1..N"),
    ("x", "pix", "0-based x (column) in the mosaic"),
    ("y", "pix", "0-based y (row) in the mosaic"),
    ("ra", "deg", "right ascension (ICRS) through the mosaic WCS"),
    ("dec", "deg", "declination (ICRS) through the mosaic WCS"),
    ("cls", None, "main class: 1 symmetric cluster, 2 asymmetric cluster, 3 compact association, 4 artifact"),
    ("subclass", None, "PHANGS-HST sub-class code ('1', '2', '3', '4.1' star, ..., '4.9' redundant, '4.11' edge)"),
    ("subclass_drawn", None, "sub-class of the painted morphology ('spurious' for false peaks)"),
    *((f"mag_{b}", "mag", f"true input {b} Vega magnitude of the candidate (NaN: no flux)") for b in BANDS),
    ("log_age", None, "log10(age/yr) of the SSP used for the colours (NaN for stars and bad pixels)"),
    ("ebv", "mag", "E(B-V) reddening applied"),
    ("fwhm_px", "pix", "approximate observed F555W FWHM put in"),
    ("background", "electron / (pix s)", "F555W sky + galaxy light at the candidate (noiseless model)"),
    ("r_gal", "pix", "deprojected galactocentric radius"),
    ("edge_dist", "pix", "distance to the nearest no-data pixel or image border (any band)"),
    ("spurious", None, "a false peak next to a real object (nothing painted for it)"),
)


def _catalog_table(rows: dict[str, np.ndarray], meta: dict) -> Table:
    t = Table(meta=meta)
    for name, unit, desc in _COLUMNS:
        t[name] = Column(rows[name], unit=unit, description=desc)
    return t


# --------------------------------------------------------------------------------------------
# main entry


def paint_mosaic(out_dir: str | os.PathLike, n_sources: int = 3000, shape: tuple[int, int] = (3000, 3000),
                 config: SimConfig = SimConfig(), seed: int = 0, *, ra: float = NGC628_CENTRE[0],
                 dec: float = NGC628_CENTRE[1], spurious_fraction: float = 0.03,
                 edge_radius: float = 5.0, min_separation: float = 6.0, prefix: str = "mosaic") -> MosaicResult:
    """Paint a five-band PHANGS-HST-like mosaic and its candidate catalogue into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Directory for ``<prefix>_<band>.fits``, ``candidates.ecsv`` and ``manifest.json`` (created).
    n_sources : int
        Catalogue rows (>= 1), including the ``spurious_fraction`` false peaks; at most one per
        20 x 20 px.
    shape : (int, int)
        ``(ny, nx)`` pixels; each side >= 64 and >= 2 x ``config.size``.
    config : SimConfig
        Simulator physics: class and sub-class mix, magnitudes, PSF, background, sky, crowding,
        noise. ``config.size`` is the side of the stamp each compact object is rendered on
        (associations, saturated stars and galaxies use twice that); ``jitter_px`` is unused.
    seed : int
        Non-negative seed; identical arguments give identical files.
    ra, dec : float
        Sky position of the mosaic centre (deg; default NGC 628).
    spurious_fraction : float
        Share of the rows that are false peaks next to clusters (become 4.9 redundant), 0-0.3.
    edge_radius : float
        Candidates within this many px of no-data are edge objects (4.11).
    min_separation : float
        Minimum distance between painted candidates, px.
    prefix : str
        File-name prefix of the FITS files.

    Returns
    -------
    MosaicResult

    Raises
    ------
    MosaicConfigError
        An invalid argument (also a ``ValueError`` and an :class:`astrotl.errors.ConfigError`).
    astrotl.errors.DataError
        ``out_dir`` cannot be written.
    """
    if not isinstance(config, SimConfig):
        raise MosaicConfigError(f"config={config!r} is invalid: must be a SimConfig")
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "/\\"):
        raise MosaicConfigError(f"prefix={prefix!r} is invalid: must be a non-empty file-name prefix")
    n, shape, seed = _check_args(n_sources, shape, config, seed, ra, dec, spurious_fraction, edge_radius,
                                 min_separation)
    out = Path(out_dir).expanduser()
    key = _key(version=MOSAIC_VERSION, sim_version=SIM_VERSION, n=n, shape=shape, config=asdict(config), seed=seed,
               ra=float(ra), dec=float(dec), spurious_fraction=float(spurious_fraction),
               edge_radius=float(edge_radius), min_separation=float(min_separation), prefix=prefix)
    if out.is_dir():
        hit = _load_cached(out, key, prefix)
        if hit is not None:
            log.debug("mosaic %s already painted in %s", key[:12], out)
            return hit
    _prepare_dir(out)
    t0 = time.perf_counter()
    res = _paint(out, n, shape, config, seed, float(ra), float(dec), float(spurious_fraction), float(edge_radius),
                 float(min_separation), prefix, key)
    res.seconds = time.perf_counter() - t0
    log.info("painted a %d x %d x 5 mosaic with %d candidates in %.1f s (%s)", shape[0], shape[1], n,
             res.seconds, out)
    return res


def _paint(out: Path, n: int, shape, cfg: SimConfig, seed: int, ra: float, dec: float, spurious_fraction: float,
           edge_radius: float, min_sep: float, prefix: str, key: str) -> MosaicResult:
    ny, nx = shape
    timings: dict[str, list[float]] = {}  # stage -> [wall, cpu] seconds
    t_wall, t_cpu = time.perf_counter(), time.process_time()

    def lap(name):
        nonlocal t_wall, t_cpu
        now, cnow = time.perf_counter(), time.process_time()
        timings[name] = [round(now - t_wall, 3), round(cnow - t_cpu, 3)]
        t_wall, t_cpu = now, cnow

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    wcs = make_wcs(shape, ra, dec)
    fps = _footprints(rng, shape)
    gal = _galaxy(rng, shape)

    # -- who is what ------------------------------------------------------------------------
    n_spur = int(round(spurious_fraction * n)) if n > 1 else 0
    n_real = n - n_spur
    cf = np.asarray(cfg.class_fractions, dtype=float)
    cls = rng.choice(4, size=n_real, p=cf / cf.sum()) + 1
    codes = [k for k, w in cfg.artifact_fractions if w > 0]
    ws = np.array([w for _, w in cfg.artifact_fractions if w > 0], dtype=float)
    subs = cls.astype(str).astype(object)
    art = np.flatnonzero(cls == 4)
    if len(art):
        subs[art] = np.asarray(codes, dtype=object)[rng.choice(len(codes), size=len(art), p=ws / ws.sum())]
    placer = _Placer(rng, shape, gal, fps, max(3, n_real // 10), edge_radius)
    x, y = _place_candidates(placer, subs, min_sep)
    lo, hi = cfg.mag_range
    mags_v = np.array([sim._draw_mag(rng, lo, hi, cfg.lf_slope) for _ in range(n_real)])
    is_sat = subs == "4.4"
    mags_v[is_sat] = lo - rng.uniform(2.0, 4.5, size=int(is_sat.sum()))
    lap("placement")

    # -- render candidates and field objects ---------------------------------------------------
    S = int(cfg.size)
    ctx_s = sim._context(S, float(cfg.psf_fwhm_px))
    ctx_l = sim._context(2 * S, float(cfg.psf_fwhm_px))
    points = _PointSources(max(24, 2 * int(math.ceil(4 * cfg.psf_fwhm_px))), float(cfg.psf_fwhm_px))
    canvas = np.zeros((5, ny, nx), dtype=np.float32)
    post_noise: list[tuple[int, int, np.ndarray]] = []  # (ix0, iy0, V-band cosmic ray)
    spike_list = []
    cand_mags = np.full((n_real, 5), np.nan)
    log_age = np.full(n_real, np.nan)
    ebv = np.zeros(n_real)
    fwhm = np.zeros(n_real)
    for i in range(n_real):
        orng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
        ctx = ctx_l if subs[i] in _EXTENDED else ctx_s
        ix0, iy0, x0, y0 = _stamp_origin(x[i], y[i], ctx.size)
        comps, log_age[i], ebv[i], fwhm[i], cr, spikes = _draw_object(orng, subs[i], x0, y0, mags_v[i], cfg, ctx)
        flux = np.sum([c.flux for c in comps], axis=0) if comps else np.zeros(5)
        extended = [c for c in comps if c.kind is not None]
        if extended or spikes is not None:
            img = sim._render(ctx, extended) if extended else np.zeros((5, ctx.size, ctx.size))
            np.maximum(img, 0.0, out=img)
            if spikes is not None:
                img += flux[:, None, None] * sim._spikes(ctx, x0, y0, spikes)
            _add_stamp(canvas, img.astype(np.float32), ix0, iy0)
        for c in comps:
            if c.kind is None:
                pimg, px0, py0 = points.stamp(c.x + ix0, c.y + iy0, c.flux)
                _add_stamp(canvas, pimg, px0, py0)
        if cr is not None:
            post_noise.append((ix0, iy0, cr))
            flux = np.full(5, np.nan)
            flux[_V] = cr.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            cand_mags[i] = sim._ZP - 2.5 * np.log10(flux / sim._TEXP)
        if spikes is not None:
            spike_list.append(i)
    lap("candidates")

    # uncatalogued faint stars and small clusters: config.crowding objects per 32 x 32 px in all
    n_field = int(round(max(0.0, cfg.crowding * ny * nx / 1024.0 - n_real)))
    frng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    placer.rng = frng
    n_cx = int(frng.binomial(n_field, 0.5))
    fx1, fy1 = placer.draw("complex", n_cx, inside=False)
    fx2, fy2 = placer.draw("disk", n_field - n_cx, inside=False)
    fx, fy = np.concatenate([fx1, fx2]), np.concatenate([fy1, fy2])
    fpsf = float(ctx_s.psf_fwhm[_V])
    for j in range(n_field):
        mag = sim._draw_mag(frng, hi - 0.5, hi + 2.0, cfg.lf_slope)
        if frng.random() < 0.65:
            f, _ = sim._star_fluxes(frng, mag)
            pimg, px0, py0 = points.stamp(fx[j], fy[j], f)
            _add_stamp(canvas, pimg, px0, py0)
            continue
        ix0, iy0, x0, y0 = _stamp_origin(fx[j], fy[j], ctx_s.size)
        age = float(frng.uniform(6.0, 10.0))
        f = sim._fluxes(mag, sim.ssp_colour_offsets(age), sim._draw_ebv(frng, age))
        fint = sim._intrinsic_fwhm(float(frng.uniform(2.4, 4.0)), fpsf)
        comps = [sim._Comp(x0, y0, f, ("moffat", 2.0), fint, float(frng.uniform(0.6, 1.0)),
                           float(frng.uniform(0, np.pi)))]
        img = sim._render(ctx_s, comps)
        np.maximum(img, 0.0, out=img)
        _add_stamp(canvas, img.astype(np.float32), ix0, iy0)
    lap("field")

    # -- galaxy light, sky, noise, footprint, per band ---------------------------------------------
    levels = _band_levels(cfg.background)  # [3, 5]
    sky = cfg.sky * sim._SKY
    sat = float(cfg.saturation_level)
    rows_per_chunk = max(1, 4_000_000 // nx)
    inside = {name: np.zeros((ny, nx), dtype=bool) for name in fps}
    comps_bg = np.zeros((3, ny, nx), dtype=np.float32)
    for r0 in range(0, ny, rows_per_chunk):
        r1 = min(ny, r0 + rows_per_chunk)
        yy, xx = np.mgrid[r0:r1, 0:nx].astype(np.float32)
        comps_bg[:, r0:r1] = np.stack(gal.components(xx, yy))
        for name, fp in fps.items():
            inside[name][r0:r1] = fp.distance(xx, yy) >= 0
        del yy, xx
    lap("background_shapes")
    # local background at the candidates (F555W, e-/s)
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    local_bg = (levels[:, _V] @ comps_bg[:, iy, ix] + sky[_V]) / EXPTIME_S["F555W"]

    images: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    n_cr = 0
    for b, band in enumerate(BANDS):
        brng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, b)))
        model = canvas[b]
        for k in range(3):
            model += np.float32(levels[k, b]) * comps_bg[k]
        model += np.float32(sky[b])
        if model.max() > sat:
            sim._bleed(model, sat)
        if cfg.noise:
            img = _noisy(brng, model, cfg.read_noise)
            if cfg.cosmic_ray_rate > 0:
                n_hits = int(brng.poisson(cfg.cosmic_ray_rate * ny * nx / 1024.0))
                n_cr += n_hits
                for _ in range(n_hits):
                    xr, yr = brng.uniform(0, nx - 1), brng.uniform(0, ny - 1)
                    ix0, iy0, x0, y0 = _stamp_origin(xr, yr, 16)
                    cr = sim._cosmic_ray(brng, 16, x0, y0, float(brng.uniform(300.0, 5000.0)))
                    _add_stamp(img, cr.astype(np.float32), ix0, iy0)
        else:
            img = model
        if b == _V:
            for ix0, iy0, cr in post_noise:
                _add_stamp(img, cr.astype(np.float32), ix0, iy0)
        np.minimum(img, sat, out=img)
        img /= np.float32(EXPTIME_S[band])
        group = "uv" if b in _POINTINGS["uv"] else "optical"
        img[~inside[group]] = np.nan
        path = out / f"{prefix}_{band.lower()}.fits"
        _write_fits(path, img, wcs, band, b, cfg, seed, key, group)
        images[band] = path
        sizes[path.name] = path.stat().st_size
        del img
    del canvas, comps_bg
    lap("bands")

    # -- catalogue ------------------------------------------------------------------------------
    r_gal, _ = gal.coords(x, y)
    edge_d = _edge_distance(fps, x, y)
    real = {
        "x": x, "y": y, "cls": cls.astype(np.int64), "subclass_drawn": subs.astype(str), "mags": cand_mags,
        "log_age": log_age, "ebv": ebv, "fwhm_px": fwhm, "background": local_bg, "r_gal": r_gal,
        "edge_dist": edge_d,
    }
    # false peaks next to clusters and associations
    srng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    parents = np.flatnonzero(np.isin(subs, ["1", "2", "3"]) & (edge_d > edge_radius + 4))
    if not len(parents):
        parents = np.arange(n_real)
    par = srng.choice(parents, size=n_spur, replace=n_spur > len(parents)) if n_spur else np.zeros(0, int)
    rr, aa = srng.uniform(1.5, 4.0, n_spur), srng.uniform(0, 2 * np.pi, n_spur)
    sx, sy = x[par] + rr * np.cos(aa), y[par] + rr * np.sin(aa)
    sx, sy = np.clip(sx, -0.5, nx - 0.51), np.clip(sy, -0.5, ny - 0.51)
    dm = srng.uniform(1.0, 2.5, n_spur)
    spur = {
        "x": sx, "y": sy, "cls": np.full(n_spur, 4, dtype=np.int64), "subclass_drawn": np.full(n_spur, "spurious"),
        "mags": cand_mags[par] + dm[:, None], "log_age": log_age[par], "ebv": ebv[par], "fwhm_px": fwhm[par],
        "background": local_bg[par], "r_gal": gal.coords(sx, sy)[0],
        "edge_dist": _edge_distance(fps, sx, sy),
    }
    # interleave: spurious rows follow a random permutation so ids do not reveal them
    allx = {k: np.concatenate([real[k], spur[k]]) for k in real}
    order = srng.permutation(n)
    allx = {k: v[order] for k, v in allx.items()}
    spurious = np.concatenate([np.zeros(n_real, bool), np.ones(n_spur, bool)])[order]
    subclass = np.where(allx["subclass_drawn"] == "spurious", "4", allx["subclass_drawn"]).astype("<U8")
    clsv = allx["cls"].copy()
    edge = allx["edge_dist"] <= edge_radius
    subclass[edge] = "4.11"
    clsv[edge] = 4
    ra_, dec_ = wcs.all_pix2world(allx["x"], allx["y"], 0)
    cols = {"id": np.arange(1, n + 1, dtype=np.int64), "x": allx["x"], "y": allx["y"], "ra": ra_, "dec": dec_,
            "cls": clsv, "subclass": subclass, "subclass_drawn": allx["subclass_drawn"].astype("<U8"),
            **{f"mag_{b}": allx["mags"][:, k] for k, b in enumerate(BANDS)},
            "log_age": allx["log_age"], "ebv": allx["ebv"], "fwhm_px": allx["fwhm_px"],
            "background": allx["background"], "r_gal": allx["r_gal"], "edge_dist": allx["edge_dist"],
            "spurious": spurious}
    meta = {
        "description": "simulated PHANGS-HST-like cluster candidates painted into a five-band mosaic",
        "bands": list(BANDS), "images": {b: p.name for b, p in images.items()}, "hdu": "SCI",
        "image_units": "electron / s (BUNIT ELECTRONS/S), NaN off the footprint", "pixel_origin": 0,
        "shape": [ny, nx], "crval": [ra, dec], "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
        "zeropoints_vega": dict(ZEROPOINTS_VEGA), "exptime_s": dict(EXPTIME_S),
        "config": jsonable(asdict(cfg)), "seed": seed, "mosaic_version": MOSAIC_VERSION,
        "sim_version": SIM_VERSION, "key": key, "edge_radius_px": edge_radius, "n_field_objects": n_field,
        "n_cosmic_rays": n_cr,
        "galaxy": {"centre_px": [gal.cx, gal.cy], "axis_ratio": gal.q, "pa_rad": gal.pa, "scale_length_px": gal.h,
                   "bulge_re_px": gal.re, "pitch_deg": math.degrees(gal.pitch)},
        "footprints": {k: {"centre_px": [f.cx, f.cy], "half_size_px": [f.a, f.b], "angle_deg": math.degrees(f.angle),
                           "bands": [BANDS[i] for i in _POINTINGS[k]]} for k, f in fps.items()},
        "references": ["Whitmore et al. 2021, MNRAS 506, 5294", "Wei et al. 2020, MNRAS 493, 3178"],
    }
    table = _catalog_table(cols, meta)
    table = mark_redundant(table, radius=DEFAULT_RADIUS_PX, mag_col="mag_F555W", class_col=None,
                           subclass_col="subclass", id_col="id")
    table["cls"][table["redundant"]] = 4
    table["subclass"].description = _COLUMNS[6][2]
    cat_path = out / "candidates.ecsv"
    with atomic_path(cat_path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    sizes[cat_path.name] = cat_path.stat().st_size
    lap("catalogue")
    write_json(out / "manifest.json", {"key": key, "files": sizes, "n_sources": n, "shape": [ny, nx], "seed": seed,
                                       "timings_s": timings, "mosaic_version": MOSAIC_VERSION})
    log.debug("mosaic timings: %s", timings)
    return MosaicResult(out, images, cat_path, table, wcs, (ny, nx), key)


def _noisy(rng, model: np.ndarray, read_noise: float) -> np.ndarray:
    """Poisson(model) + N(0, read_noise), float32. Pixels with >= 1000 expected electrons use the
    normal approximation (indistinguishable there, and ~10x faster than numpy's Poisson sampler)."""
    out = np.empty_like(model, dtype=np.float32)
    flat_m, flat_o = model.reshape(-1), out.reshape(-1)
    step = 1 << 22
    for s in range(0, flat_m.size, step):
        m = flat_m[s : s + step]
        big = m >= 1000.0
        o = np.empty(m.size, dtype=np.float32)
        if big.any():
            mb = m[big]
            o[big] = mb + np.sqrt(mb) * rng.standard_normal(mb.size, dtype=np.float32)
            o[~big] = rng.poisson(m[~big].astype(np.float64))
        else:
            o[:] = rng.poisson(m.astype(np.float64))
        if read_noise > 0:
            o += np.float32(read_noise) * rng.standard_normal(m.size, dtype=np.float32)
        flat_o[s : s + step] = o
    return out


def _write_fits(path: Path, img: np.ndarray, wcs: WCS, band: str, b: int, cfg: SimConfig, seed: int, key: str,
                pointing: str) -> None:
    zp = ZEROPOINTS_VEGA[band]
    photflam = float(_VEGA_FLAM[b] * 10.0 ** (-0.4 * zp))
    primary = fits.PrimaryHDU()
    ph = primary.header
    ph["TELESCOP"] = ("HST", "simulated")
    ph["INSTRUME"] = ("WFC3", "simulated WFC3/UVIS")
    ph["DETECTOR"] = "UVIS"
    ph["FILTER"] = band
    ph["EXPTIME"] = (EXPTIME_S[band], "[s] exposure time")
    ph["TARGNAME"] = "NGC0628-SIM"
    ph["ORIGIN"] = "astrotl_phangs.mosaic"
    ph["SIMVERS"] = (MOSAIC_VERSION, "astrotl_phangs mosaic painter version")
    ph["SIMSEED"] = (seed, "simulation seed")
    ph["SIMKEY"] = (key[:16], "cache key (sha256 prefix)")
    h = wcs.to_header()
    h["BUNIT"] = ("ELECTRONS/S", "NaN off the footprint")
    h["FILTER"] = band
    h["EXPTIME"] = (EXPTIME_S[band], "[s] exposure time")
    h["PHOTFLAM"] = (photflam, "[erg/s/cm2/A per e-/s] approx.")
    h["PHOTPLAM"] = (float(_PIVOT_A[b]), "[Angstrom] pivot wavelength")
    h["PHOTZPT"] = (-21.10, "[mag] ST magnitude zero point")
    h["ZP_VEGA"] = (zp, "[mag] Vega mag of 1 e-/s")
    h["POINTING"] = (pointing, "camera pointing (footprint) of this band")
    h["PSFFWHM"] = (float(cfg.psf_fwhm_px * sim._PSF_FWHM_REL[b]), "[pix] PSF FWHM")
    h["RDNOISE"] = (float(cfg.read_noise), "[e-] read noise")
    sci = fits.ImageHDU(img.astype(np.float32, copy=False), header=h, name="SCI")
    with atomic_path(path) as tmp:
        fits.HDUList([primary, sci]).writeto(tmp, overwrite=True)
