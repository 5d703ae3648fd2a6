"""Seeded simulator of DSS2-like photographic images of open and globular star clusters.

This module paints small single-band images that look like views of the second
Digitized Sky Survey (DSS2, red plates: IIIaF emulsion behind an RG610 filter, scanned
at 1.0 arcsec per pixel) centred on a star cluster, the data of Stipp & Montana-Lopez
(2019, "Star cluster classification into open and globular clusters with interpretative
Grad-CAMs", CS230 report: 4000 + 4000 DSS2 images of SIMBAD open and globular clusters,
cropped to 244 px, VGG16). It is meant for pre-training, testing and benchmarking when
the real cut-outs are not at hand; it is *not* a substitute for real plates.

Classes and sub-types
---------------------
* ``0`` **open** cluster: a sparse, loose group of tens of stars (``n_members`` stars
  brighter than ``M_R = +4.5``), few kpc away, so its members are bright and resolved;
  King (1962) profile of low concentration ``c = log10(r_t / r_c)`` in 0.4-1.0, mildly
  elliptical. Sub-types: ``"poor"`` (12-40 members, old: brightest members are clump
  giants, ``M_R >= -1.5``), ``"rich"`` (40-200 members, same luminosity function) and
  ``"nebulous"`` (15-120 young members with B stars up to ``M_R = -4`` and a patch of
  diffuse emission, a log-normal random field under a Gaussian envelope).
* ``1`` **globular** cluster: a dense, centrally concentrated King swarm of hundreds to
  thousands of giants (``M_R`` in -3.5 ... +3, number proportional to the luminosity)
  plus 40-60 % of the light as an unresolved King-profile glow of fainter stars, 4-40 kpc
  away; its centre saturates the plate. Sub-types by King concentration:
  ``"loose"`` (c < 1.3), ``"intermediate"`` (1.3 <= c < 1.8) and ``"concentrated"``
  (c >= 1.8), drawn from c in 0.8-2.3.

Field
-----
Milky-Way field stars are uniform on the sky with a power-law luminosity function
``dN/dm ~ 10**(0.3 m)`` between ``R = 7`` and the plate limit ``R = 21.5``; their density
(stars per arcmin^2 brighter than R = 21) is drawn log-uniformly in
``field_density_range`` per image (a high-latitude field to the crowded Galactic plane),
independently of the class, so that crowding is a nuisance, not a label. (Real catalogues
have a latitude bias: open clusters lie in the crowded plane, many globulars at high
latitude; it is deliberately left out here.) Cluster members are dimmed by an extinction
``A_R`` drawn uniformly in ``extinction_range``.

Plate
-----
All fluxes are surface brightnesses ``x`` relative to 21 mag arcsec^-2 (a star of
magnitude ``m`` has total flux ``10**(-0.4 (m - 21))`` arcsec^2). The exposure is painted
on a fine grid that samples the plate at ``plate_scale_arcsec`` (1 arcsec, as the DSS2
scans): stars are deposited (cloud-in-cell, sub-pixel positions) together with the
unresolved glow and convolved (one real FFT) with the seeing PSF, a sum of three
Gaussians with weights 0.75/0.20/0.05 and widths 1/2/4 x sigma (a Moffat-like core with
wings, FWHM of the core ``seeing`` drawn in ``seeing_range_arcsec``). Stars brighter than
R = 16 also get the photographic aureole (light scattered in the emulsion, 3 % at
sigma = 6 arcsec and 1 % at 20 arcsec), painted on the output grid. The sky has a surface
brightness in ``sky_mag_range`` with a gentle linear gradient.

The emulsion's characteristic (Hurter-Driffield) curve turns exposure into density,
applied per plate pixel before any rebinning::

    v = fog + (1 - fog) * tanh(gamma * log10(1 + x))

linear at low exposure (toe), logarithmic in the middle and saturating at 1 (shoulder);
``gamma`` (contrast) is drawn in ``gamma_range``. Photographic grain adds Gaussian noise
of standard deviation ``grain_noise * sqrt(v)`` per plate pixel (Selwyn's law). The plate
pixels are then block-averaged to the output pixel (``pixel_scale_arcsec``, default
4 arcsec so that a 64 px image covers 4.3 arcmin: whole clusters fit, as in the binned
views the paper used) and clipped to [0, 1]. Values are normalised densities: about
0.2 on the sky, 1 where the plate saturates (bright stars and globular cores).

Catalogue
---------
One row per image (see :data:`COLUMNS`): class and sub-type, the cluster's centre
(0-based output pixels), distance, extinction, King core and tidal radii (pc and arcsec),
concentration, absolute magnitude, member counts, apparent magnitudes of its members,
field density and count, seeing, sky, plate contrast, nebulosity and the fraction of
saturated pixels.

All randomness comes from numpy: image ``i`` of ``simulate(n, config, seed)`` uses
``SeedSequence(seed, spawn_key=(i,))``, so results are bit-identical for the same
arguments and the first ``m`` images do not depend on ``n``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
from astropy.table import Column, Table

from astrotl.cache import jsonable
from astrotl.errors import DataError

__all__ = [
    "BANDS",
    "CLASSES",
    "COLUMNS",
    "GLOBULAR_SUBTYPES",
    "OPEN_SUBTYPES",
    "SIM_VERSION",
    "SimConfig",
    "SimConfigError",
    "SimResult",
    "plate_response",
    "simulate",
    "simulate_cached",
]

log = logging.getLogger(__name__)

#: Version of the simulator; part of the cache key, bump when the output changes.
SIM_VERSION = "1.0.0"

#: The single band: a DSS2-red-like photographic plate (IIIaF + RG610).
BANDS: tuple[str, ...] = ("DSS2_red",)

#: Class codes; index ``i`` is label ``i``.
CLASSES: tuple[str, ...] = ("open", "globular")

#: Sub-types of open clusters (in the order of ``SimConfig.open_subtype_fractions``).
OPEN_SUBTYPES: tuple[str, ...] = ("poor", "rich", "nebulous")

#: Sub-types of globular clusters by King concentration ``c = log10(r_t / r_c)``.
GLOBULAR_SUBTYPES: tuple[str, ...] = ("loose", "intermediate", "concentrated")
_C_EDGES = (1.3, 1.8)

_MAG_REF = 21.0  # surface brightness (mag / arcsec^2) of x = 1
_FIELD_MAG = (7.0, 21.5)  # field-star luminosity function range (R)
_FIELD_SLOPE = 0.3
_FIELD_NORM_MAG = 21.0  # field_density counts stars brighter than this
_AUREOLE_MAG = 16.0  # stars brighter than this get the photographic aureole
_CORE = ((1.0, 0.75), (2.0, 0.20), (4.0, 0.05))  # (sigma / sigma_seeing, weight)
_AUREOLE = ((6.0, 0.03), (20.0, 0.01))  # (sigma in arcsec, weight)
_M_SUN_R = 4.4
_GC_STARS_PER_LSUN = 0.008  # giants brighter than M_R = +3 per solar luminosity
_GC_LF = (-3.5, 3.0, 0.25)  # M_bright, M_faint, slope of dN/dM ~ 10**(slope M)
_OC_LF_OLD = (-1.5, 4.5, 0.15)
_OC_LF_YOUNG = (-4.0, 4.5, 0.15)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


class SimConfigError(DataError, ValueError):
    """A :class:`SimConfig` value (or an argument of :func:`simulate`) is invalid."""


# --------------------------------------------------------------------------------------
# configuration


def _bad(name: str, value: object, valid: str) -> SimConfigError:
    return SimConfigError(f"SimConfig.{name}={value!r} is invalid: {valid}")


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate`.

    Ranges are ``(low, high)`` pairs; each image draws its value uniformly between them
    (log-uniformly for distances and field density).

    Parameters
    ----------
    size : int
        Image side in pixels (16-1024).
    pixel_scale_arcsec : float
        Output pixel scale, arcsec per pixel (the field is ``size * pixel_scale_arcsec``).
    plate_scale_arcsec : float
        Sampling of the plate on which exposure, characteristic curve and grain are
        computed (DSS2: 1.0); the output pixel averages ``round(pixel_scale /
        plate_scale)**2`` plate pixels. Larger values are faster and coarser.
    class_fractions : tuple of 2 float
        Relative numbers of open and globular clusters.
    open_subtype_fractions : tuple of 3 float
        Relative numbers of poor, rich and nebulous open clusters.
    open_distance_kpc, globular_distance_kpc : tuple of 2 float
        Distance ranges (log-uniform).
    extinction_range : tuple of 2 float
        ``A_R`` (mag) of the cluster.
    field_density_range : tuple of 2 float
        Field stars per arcmin^2 brighter than R = 21 (log-uniform).
    seeing_range_arcsec : tuple of 2 float
        FWHM of the seeing core.
    sky_mag_range : tuple of 2 float
        Sky surface brightness, mag arcsec^-2 (R).
    gamma_range : tuple of 2 float
        Contrast of the characteristic curve (see :func:`plate_response`).
    fog : float
        Density of the unexposed plate (normalised units, 0 <= fog < 1).
    grain_noise : float
        Grain noise per plate pixel at density 1 (0 switches it off, as ``noise``).
    noise : bool
        If False, no grain noise (noiseless model images).
    jitter_px : float
        Maximum offset of the cluster centre from the image centre (output px, each axis).
    """

    size: int = 64
    pixel_scale_arcsec: float = 4.0
    plate_scale_arcsec: float = 1.0
    class_fractions: tuple[float, float] = (0.5, 0.5)
    open_subtype_fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)
    open_distance_kpc: tuple[float, float] = (1.5, 8.0)
    globular_distance_kpc: tuple[float, float] = (4.0, 40.0)
    extinction_range: tuple[float, float] = (0.0, 2.0)
    field_density_range: tuple[float, float] = (0.3, 30.0)
    seeing_range_arcsec: tuple[float, float] = (2.0, 3.0)
    sky_mag_range: tuple[float, float] = (20.3, 21.3)
    gamma_range: tuple[float, float] = (0.7, 1.0)
    fog: float = 0.03
    grain_noise: float = 0.03
    noise: bool = True
    jitter_px: float = 2.0

    def __post_init__(self) -> None:
        # accept lists (e.g. from YAML) but store tuples so the config stays hashable
        for name, value in asdict(self).items():
            if isinstance(value, list | np.ndarray):
                try:
                    object.__setattr__(self, name, tuple(float(v) for v in value))
                except (TypeError, ValueError):
                    raise _bad(name, value, "must be a list of numbers") from None
        _validate(self)

    @property
    def oversample(self) -> int:
        """Plate pixels per output pixel along each axis."""
        return max(1, int(round(self.pixel_scale_arcsec / self.plate_scale_arcsec)))


_RANGES = {
    "open_distance_kpc": (0.05, 200.0),
    "globular_distance_kpc": (0.05, 200.0),
    "extinction_range": (0.0, 20.0),
    "field_density_range": (0.0, 1000.0),
    "seeing_range_arcsec": (0.3, 20.0),
    "sky_mag_range": (15.0, 30.0),
    "gamma_range": (0.05, 5.0),
}


def _validate(c: SimConfig) -> None:
    if isinstance(c.size, bool) or not isinstance(c.size, int | np.integer) or not 16 <= c.size <= 1024:
        raise _bad("size", c.size, "must be an integer in [16, 1024]")
    for name in ("pixel_scale_arcsec", "plate_scale_arcsec"):
        v = getattr(c, name)
        if not _finite(v) or not 0.1 <= v <= 60.0:
            raise _bad(name, v, "must be a number of arcsec in [0.1, 60]")
    if c.plate_scale_arcsec > c.pixel_scale_arcsec:
        raise _bad("plate_scale_arcsec", c.plate_scale_arcsec,
                   f"must be <= pixel_scale_arcsec={c.pixel_scale_arcsec} (the plate is sampled at least as finely)")
    if c.size * c.oversample > 4096:
        raise _bad("plate_scale_arcsec", c.plate_scale_arcsec,
                   "gives a plate grid over 4096 px; raise plate_scale_arcsec or lower size")
    for name, n in (("class_fractions", 2), ("open_subtype_fractions", 3)):
        v = getattr(c, name)
        if not isinstance(v, tuple) or len(v) != n or not all(_finite(x) and float(x) >= 0 for x in v) \
                or sum(v) <= 0:
            raise _bad(name, v, f"must be {n} non-negative numbers with a positive sum")
    for name, (lo_ok, hi_ok) in _RANGES.items():
        v = getattr(c, name)
        if not isinstance(v, tuple) or len(v) != 2 or not all(_finite(x) for x in v):
            raise _bad(name, v, "must be a (low, high) pair of finite numbers")
        if not lo_ok <= v[0] <= v[1] <= hi_ok:
            raise _bad(name, v, f"needs {lo_ok:g} <= low <= high <= {hi_ok:g}")
    if c.field_density_range[0] <= 0 < c.field_density_range[1]:
        raise _bad("field_density_range", c.field_density_range,
                   "is drawn log-uniformly: give low > 0, or (0, 0) for no field stars")
    if not _finite(c.fog) or not 0 <= c.fog < 1:
        raise _bad("fog", c.fog, "must be in [0, 1)")
    if not _finite(c.grain_noise) or not 0 <= c.grain_noise <= 1:
        raise _bad("grain_noise", c.grain_noise, "must be in [0, 1]")
    if not isinstance(c.noise, bool | np.bool_):
        raise _bad("noise", c.noise, "must be true or false")
    if not _finite(c.jitter_px) or not 0 <= c.jitter_px <= c.size / 4:
        raise _bad("jitter_px", c.jitter_px, f"must be in [0, {c.size / 4:g}] px")


# --------------------------------------------------------------------------------------
# result


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes
    ----------
    images : numpy.ndarray
        float32 ``[N, 1, size, size]``, normalised photographic density in [0, 1]
        (axes ``y, x``; about 0.2 on the sky, 1 where the plate saturates).
    catalog : astropy.table.Table
        One row per image (:data:`COLUMNS`); ``meta`` holds the configuration, seed,
        band and version.
    """

    images: np.ndarray
    catalog: Table = field(repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def plate_response(x: np.ndarray, gamma: float = 0.6, fog: float = 0.03) -> np.ndarray:
    """Characteristic curve of the emulsion: exposure to normalised density.

    Parameters
    ----------
    x : array_like
        Exposure as a surface brightness relative to 21 mag arcsec^-2 (>= 0).
    gamma : float, optional
        Contrast: slope of density against ``log10(exposure)`` in the linear part.
    fog : float, optional
        Density of the unexposed plate.

    Returns
    -------
    numpy.ndarray
        ``fog + (1 - fog) * tanh(gamma * log10(1 + x))``: linear in ``x`` at low
        exposure (toe), logarithmic in the middle, saturating at 1 (shoulder).

    Examples
    --------
    >>> float(plate_response(0.0))
    0.03
    >>> bool(plate_response(1e6) > 0.99)
    True
    """
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    return fog + (1.0 - fog) * np.tanh(gamma * np.log10(1.0 + x))


# --------------------------------------------------------------------------------------
# geometry (cached per configuration)


@dataclass(frozen=True, eq=False)  # hashed by identity (lru_cache keys)
class _Context:
    size: int
    os: int  # plate pixels per output pixel
    pf: float  # plate pixel, arcsec
    P: int  # padded plate grid (FFT size)
    off: int  # offset of the image inside the padded plate grid (plate px)
    k2: np.ndarray  # (P, P//2+1) float32 squared spatial frequency, cycles^2 / plate px^2
    Pc: int  # padded output grid for the wide PSF wing and the aureole
    offc: int
    kc2: np.ndarray  # (Pc, Pc//2+1) squared frequency, cycles^2 / output px^2
    d: np.ndarray  # (P,) plate-pixel centres in output pixels (0-based, output pixel centres at integers)


@functools.lru_cache(maxsize=8)
def _context(size: int, pixel_scale: float, plate_scale: float, max_seeing: float) -> _Context:
    os_ = max(1, int(round(pixel_scale / plate_scale)))
    pf = pixel_scale / os_
    sig_max = max_seeing * _FWHM_TO_SIGMA * _CORE[1][0]
    margin = int(math.ceil(3.0 * sig_max / pf)) + 2
    P = scipy.fft.next_fast_len(size * os_ + 2 * margin, real=True)
    off = (P - size * os_) // 2
    fy = np.fft.fftfreq(P)
    fx = np.fft.rfftfreq(P)
    k2 = (fy[:, None] ** 2 + fx[None, :] ** 2).astype(np.float32)
    wide = max(_AUREOLE[-1][0], max_seeing * _FWHM_TO_SIGMA * _CORE[-1][0])
    mc = int(math.ceil(3.0 * wide / pixel_scale)) + 1
    Pc = scipy.fft.next_fast_len(size + 2 * mc, real=True)
    offc = (Pc - size) // 2
    fyc = np.fft.fftfreq(Pc)
    fxc = np.fft.rfftfreq(Pc)
    kc2 = fyc[:, None] ** 2 + fxc[None, :] ** 2
    d = (np.arange(P) - off + 0.5) / os_ - 0.5
    return _Context(size, os_, pf, P, off, k2, Pc, offc, kc2, d)


@functools.lru_cache(maxsize=64)
def _core_otf(ctx: _Context, sigma_centi_px: int) -> np.ndarray:
    """Transfer function of the narrow PSF components (sigma in 1/100 plate px, float32)."""
    sig = sigma_centi_px / 100.0
    w_core = sum(w for _, w in _CORE[:-1])
    otf = sum(w * np.exp(-2.0 * math.pi**2 * (f * sig) ** 2 * ctx.k2) for f, w in _CORE[:-1]) / w_core
    return otf.astype(np.float32)


# --------------------------------------------------------------------------------------
# drawing helpers


def _draw_powerlaw_mag(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """``n`` magnitudes in [lo, hi] with ``dN/dm ~ 10**(slope m)``."""
    u = rng.random(n)
    if abs(slope) < 1e-9:
        return lo + u * (hi - lo)
    return lo + np.log10(1.0 + u * (10.0 ** (slope * (hi - lo)) - 1.0)) / slope


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if lo == hi:
        return float(lo)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _king_profile(r: np.ndarray, rc: float, rt: float) -> np.ndarray:
    """King (1962) projected surface density (unnormalised), zero beyond ``rt``."""
    a = 1.0 / np.sqrt(1.0 + (r / rc) ** 2) - 1.0 / math.sqrt(1.0 + (rt / rc) ** 2)
    return np.where(r < rt, np.maximum(a, 0.0) ** 2, 0.0)


def _king_radial_table(rc: float, rt: float, n: int = 512) -> tuple[np.ndarray, np.ndarray, float]:
    """Radii, normalised cumulative counts and the integral ``2 pi int R f(R) dR``."""
    r = np.concatenate([[0.0], np.geomspace(min(rc, rt) * 1e-3, rt, n - 1)])
    f = _king_profile(r, rc, rt) * 2.0 * math.pi * r
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(r))])
    total = float(cum[-1])
    return r, cum / total, total


def _king_positions(rng: np.random.Generator, n: int, rc: float, rt: float, q: float, pa: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (same units as rc) of ``n`` stars drawn from an elliptical King profile."""
    r_tab, cdf, _ = _king_radial_table(rc, rt)
    r = np.interp(rng.random(n), cdf, r_tab)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    a, b = r * np.cos(phi) / math.sqrt(q), r * np.sin(phi) * math.sqrt(q)
    ca, sa = math.cos(pa), math.sin(pa)
    return a * ca - b * sa, a * sa + b * ca


def _king_image(d: np.ndarray, cx: float, cy: float, rc: float, rt: float, q: float, pa: float,
                flux: float, pix_area: float, norm: float | None = None) -> np.ndarray:
    """Elliptical King surface brightness (total ``flux``) sampled at the grid ``d x d`` (float32).

    ``d`` are pixel-centre coordinates in the units of ``rc``/``rt``; ``pix_area`` converts
    flux per unit area to the grid's brightness unit.
    """
    if norm is None:
        norm = _king_radial_table(rc, rt)[2]
    dx = (d - cx).astype(np.float32)
    dy = (d - cy).astype(np.float32)
    ca, sa = math.cos(pa), math.sin(pa)
    # squared elliptical radius in units of rc: A dx^2 + B dx dy + C dy^2
    A = (ca * ca * q + sa * sa / q) / rc**2
    C = (sa * sa * q + ca * ca / q) / rc**2
    B = 2.0 * ca * sa * (q - 1.0 / q) / rc**2
    u = np.float32(A) * (dx * dx)[None, :] + np.float32(C) * (dy * dy)[:, None] \
        + np.float32(B) * np.outer(dy, dx)
    u += 1.0
    np.sqrt(u, out=u)
    np.divide(1.0, u, out=u)
    u -= np.float32(1.0 / math.sqrt(1.0 + (rt / rc) ** 2))
    np.maximum(u, 0.0, out=u)
    u *= u
    u *= np.float32(flux / (norm * pix_area))
    return u


def _deposit(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cloud-in-cell deposit of weights ``w`` at float pixel positions (x, y) onto a grid."""
    ny, nx = shape
    if len(x) == 0:
        return np.zeros(shape)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    idx, ws = [], []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
            idx.append((yi * nx + xi)[ok])
            ws.append((w * wx * wy)[ok])
    return np.bincount(np.concatenate(idx), weights=np.concatenate(ws), minlength=ny * nx).reshape(shape)


def _nebula(rng: np.random.Generator, size: int, cx: float, cy: float, radius_px: float) -> np.ndarray:
    """Log-normal random field (power spectrum ~k^-3) under a Gaussian envelope, peak 1."""
    noise = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(fy**2 + fx**2)
    k[0, 0] = 1.0
    amp = k ** -1.5
    amp[0, 0] = 0.0
    amp[k > 0.25] = 0.0
    g = scipy.fft.irfft2(scipy.fft.rfft2(noise) * amp, s=(size, size))
    g /= g.std() + 1e-12
    yy, xx = np.mgrid[0:size, 0:size]
    env = np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / radius_px**2)
    field_ = np.exp(0.8 * g) * env
    return field_ / max(float(field_.max()), 1e-12)


# --------------------------------------------------------------------------------------
# one image


def _simulate_one(i: int, cfg: SimConfig, seed: int, ctx: _Context, cls_p: np.ndarray, sub_p: np.ndarray
                  ) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    S, os_, pf, P = ctx.size, ctx.os, ctx.pf, ctx.P
    p = cfg.pixel_scale_arcsec
    cls = int(rng.choice(2, p=cls_p))

    # -- observing conditions
    seeing = float(rng.uniform(*cfg.seeing_range_arcsec))
    sky_mag = float(rng.uniform(*cfg.sky_mag_range))
    gamma = float(rng.uniform(*cfg.gamma_range))
    lo, hi = cfg.field_density_range
    density = 0.0 if hi <= 0 else _loguniform(rng, lo, hi)
    ext = float(rng.uniform(*cfg.extinction_range))

    # -- cluster
    cx = (S - 1) / 2.0 + rng.uniform(-cfg.jitter_px, cfg.jitter_px)
    cy = (S - 1) / 2.0 + rng.uniform(-cfg.jitter_px, cfg.jitter_px)
    pa = rng.uniform(0.0, math.pi)
    if cls == 1:
        dist = _loguniform(rng, *cfg.globular_distance_kpc)
        rt_pc = _loguniform(rng, 15.0, 80.0)
        c_king = float(rng.uniform(0.8, 2.3))
        rc_pc = rt_pc / 10.0**c_king
        subtype = GLOBULAR_SUBTYPES[int(np.searchsorted(_C_EDGES, c_king, side="right"))]
        q = 1.0 - float(rng.uniform(0.0, 0.15))
        abs_mag = float(np.clip(rng.normal(-8.0, 1.0), -10.5, -5.0))
        lum = 10.0 ** (-0.4 * (abs_mag - _M_SUN_R))
        n_members = max(20, int(rng.poisson(_GC_STARS_PER_LSUN * lum)))
        m_abs = _draw_powerlaw_mag(rng, n_members, *_GC_LF)
    else:
        sub = int(rng.choice(3, p=sub_p))
        subtype = OPEN_SUBTYPES[sub]
        dist = _loguniform(rng, *cfg.open_distance_kpc)
        rc_pc = float(rng.uniform(0.3, 1.5))
        c_king = float(rng.uniform(0.4, 1.0))
        rt_pc = rc_pc * 10.0**c_king
        q = 1.0 - float(rng.uniform(0.0, 0.4))
        n_members = int(rng.integers(*{"poor": (12, 41), "rich": (40, 201), "nebulous": (15, 121)}[subtype]))
        m_abs = _draw_powerlaw_mag(rng, n_members, *(_OC_LF_YOUNG if subtype == "nebulous" else _OC_LF_OLD))
    dm = 5.0 * math.log10(dist * 100.0)  # distance modulus: 5 log10(d / 10 pc)
    pc_to_arcsec = 206.264806 / dist  # 1 pc at dist kpc
    rc_as, rt_as = rc_pc * pc_to_arcsec, rt_pc * pc_to_arcsec
    m_app = m_abs + dm + ext
    sx, sy = _king_positions(rng, n_members, rc_as / p, rt_as / p, q, pa)  # output px
    mem_x, mem_y = cx + sx, cy + sy
    star_flux = 10.0 ** (-0.4 * (m_app - _MAG_REF))  # x * arcsec^2
    if cls == 1:  # the fainter stars make an unresolved glow carrying the rest of the light (>= 30 %)
        total = 10.0 ** (-0.4 * (abs_mag + dm + ext - _MAG_REF))
        diffuse_flux = max(total - float(star_flux.sum()), 0.3 * total)
    else:  # members below the luminosity function's faint end
        diffuse_flux = 0.1 * float(star_flux.sum())
    total_abs = -2.5 * math.log10(float(star_flux.sum()) + diffuse_flux) + _MAG_REF - dm - ext
    nebulous = subtype == "nebulous"
    neb_mag = float(rng.uniform(19.0, 21.5)) if nebulous else float("nan")
    neb_radius_px = float(rng.uniform(0.6, 1.5)) * max(rc_as * 10.0**(0.5 * c_king), 60.0) / p if nebulous else 0.0

    # -- field stars, over the padded output grid of the wide components
    half = ctx.Pc / 2.0
    area_arcmin2 = (ctx.Pc * p / 60.0) ** 2
    lf_norm = (10.0 ** (_FIELD_SLOPE * (_FIELD_MAG[1] - _FIELD_MAG[0])) - 1.0) / \
        (10.0 ** (_FIELD_SLOPE * (_FIELD_NORM_MAG - _FIELD_MAG[0])) - 1.0)
    n_field = int(rng.poisson(density * area_arcmin2 * lf_norm))
    f_mag = _draw_powerlaw_mag(rng, n_field, _FIELD_MAG[0], _FIELD_MAG[1], _FIELD_SLOPE)
    f_x = (S - 1) / 2.0 + rng.uniform(-half, half, n_field)
    f_y = (S - 1) / 2.0 + rng.uniform(-half, half, n_field)
    in_img = (f_x >= -0.5) & (f_x < S - 0.5) & (f_y >= -0.5) & (f_y < S - 0.5)

    all_x = np.concatenate([mem_x, f_x])
    all_y = np.concatenate([mem_y, f_y])
    all_flux = np.concatenate([star_flux, 10.0 ** (-0.4 * (f_mag - _MAG_REF))])
    bright = np.concatenate([m_app, f_mag]) < _AUREOLE_MAG
    w_aur = sum(w for _, w in _AUREOLE)
    w_wide = _CORE[-1][1]
    flux = np.where(bright, all_flux * (1.0 - w_aur), all_flux)  # without the aureole

    # -- plate grid: narrow PSF components of all stars + the unresolved glow, one FFT convolution
    px = (all_x + 0.5) * os_ - 0.5 + ctx.off
    py = (all_y + 0.5) * os_ - 0.5 + ctx.off
    grid = _deposit((P, P), px, py, flux * ((1.0 - w_wide) / pf**2)).astype(np.float32)
    rc_px = max(rc_as, 0.5 * pf) / p  # the glow's core, softened to half a plate pixel
    king_norm = _king_radial_table(rc_px, rt_as / p)[2] if diffuse_flux > 0 else 0.0
    if diffuse_flux > 0:
        grid += _king_image(ctx.d, cx, cy, rc_px, rt_as / p, q, pa, (1.0 - w_wide) * diffuse_flux, p**2, king_norm)
    sig = seeing * _FWHM_TO_SIGMA / pf  # plate px
    otf = _core_otf(ctx, int(round(100 * sig)))
    expo = scipy.fft.irfft2(scipy.fft.rfft2(grid) * otf, s=(P, P))
    expo = expo[ctx.off:ctx.off + S * os_, ctx.off:ctx.off + S * os_]

    # -- output grid: wide PSF wing (all stars and the glow), aureole (bright stars), nebula, sky
    Pc, offc = ctx.Pc, ctx.offc
    s_wide = _CORE[-1][0] * seeing * _FWHM_TO_SIGMA / p
    g_wide = _deposit((Pc, Pc), all_x + offc, all_y + offc, flux * (w_wide / p**2))
    if diffuse_flux > 0:
        dc = np.arange(Pc, dtype=np.float64) - offc
        g_wide += _king_image(dc, cx, cy, rc_px, rt_as / p, q, pa, w_wide * diffuse_flux, p**2, king_norm)
    spec = scipy.fft.rfft2(g_wide) * np.exp(-2.0 * math.pi**2 * s_wide**2 * ctx.kc2)
    if bright.any():
        g = _deposit((Pc, Pc), all_x[bright] + offc, all_y[bright] + offc, all_flux[bright] / p**2)
        otf_c = sum(w * np.exp(-2.0 * math.pi**2 * (s_as / p) ** 2 * ctx.kc2) for s_as, w in _AUREOLE)
        spec += scipy.fft.rfft2(g) * otf_c
    coarse = scipy.fft.irfft2(spec, s=(Pc, Pc))[offc:offc + S, offc:offc + S]
    if nebulous:
        coarse += 10.0 ** (-0.4 * (neb_mag - _MAG_REF)) * _nebula(rng, S, cx, cy, neb_radius_px)
    sky = 10.0 ** (-0.4 * (sky_mag - _MAG_REF))
    gx, gy = rng.uniform(-0.05, 0.05, 2) / S
    coarse += sky * (1.0 + gx * (np.arange(S)[None, :] - S / 2) + gy * (np.arange(S)[:, None] - S / 2))
    expo.reshape(S, os_, S, os_)[...] += coarse.astype(np.float32)[:, None, :, None]

    # -- emulsion: characteristic curve per plate pixel, block-average, grain
    #    tanh(g log10(1 + x)) = 1 - 2 / ((1 + x)**(2 g / ln 10) + 1)
    np.maximum(expo, 0.0, out=expo)
    expo += 1.0
    t = np.power(expo, np.float32(2.0 * gamma / math.log(10.0)))
    t += 1.0
    v = np.float32(1.0 - cfg.fog) * (1.0 - 2.0 / t) + np.float32(cfg.fog)
    if os_ > 1:
        v = v.reshape(S, os_, S, os_).mean(axis=(1, 3))
    if cfg.noise and cfg.grain_noise > 0:
        # grain: sigma = grain_noise * sqrt(v) per plate pixel; the mean of os^2 independent
        # plate pixels has sigma = grain_noise * sqrt(mean v) / os (exact for Gaussian grain)
        v += np.float32(cfg.grain_noise / os_) * np.sqrt(v) * rng.standard_normal((S, S), dtype=np.float32)
    img = np.clip(v, 0.0, 1.0).astype(np.float32)

    resolved = m_app < _FIELD_MAG[1]
    row = dict(
        id=i, cls=cls, class_name=CLASSES[cls], subtype=subtype, x=float(cx), y=float(cy),
        distance_kpc=float(dist), extinction_mag=ext, core_radius_pc=float(rc_pc), tidal_radius_pc=float(rt_pc),
        core_radius_arcsec=float(rc_as), tidal_radius_arcsec=float(rt_as), king_c=float(c_king),
        ellipticity=float(1.0 - q), abs_mag=float(total_abs), n_members=int(n_members),
        n_resolved=int(resolved.sum()), m_brightest=float(m_app.min()),
        m_median_resolved=float(np.median(m_app[resolved])) if resolved.any() else float("nan"),
        field_density=float(density), n_field=int(in_img.sum()), seeing_arcsec=seeing, sky_mag=sky_mag,
        gamma=gamma, nebulous=bool(nebulous), nebula_mag=neb_mag, saturated_frac=float((img >= 0.95).mean()),
    )
    return img, row


#: Catalogue columns: name, unit, description.
COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("id", None, "image index 0..N-1"),
    ("cls", None, "label: 0 open, 1 globular"),
    ("class_name", None, "'open' or 'globular'"),
    ("subtype", None, "open: poor/rich/nebulous; globular: loose/intermediate/concentrated (King c)"),
    ("x", "pix", "0-based x (column) of the cluster centre"),
    ("y", "pix", "0-based y (row) of the cluster centre"),
    ("distance_kpc", "kpc", "heliocentric distance"),
    ("extinction_mag", "mag", "A_R extinction of the cluster"),
    ("core_radius_pc", "pc", "King core radius r_c"),
    ("tidal_radius_pc", "pc", "King tidal radius r_t"),
    ("core_radius_arcsec", "arcsec", "King core radius on the sky"),
    ("tidal_radius_arcsec", "arcsec", "King tidal radius on the sky"),
    ("king_c", None, "King concentration log10(r_t / r_c)"),
    ("ellipticity", None, "1 - b/a of the cluster"),
    ("abs_mag", "mag", "absolute R magnitude of the cluster (members + unresolved light, no extinction)"),
    ("n_members", None, "member stars drawn (open: M_R < +4.5; globular: giants with M_R < +3)"),
    ("n_resolved", None, "members brighter than the plate limit R = 21.5"),
    ("m_brightest", "mag", "apparent R magnitude of the brightest member"),
    ("m_median_resolved", "mag", "median apparent R magnitude of the resolved members (NaN: none)"),
    ("field_density", "1 / arcmin2", "field stars per arcmin^2 brighter than R = 21"),
    ("n_field", None, "field stars whose centre falls in the image"),
    ("seeing_arcsec", "arcsec", "FWHM of the seeing core"),
    ("sky_mag", "mag / arcsec2", "sky surface brightness"),
    ("gamma", None, "contrast of the characteristic curve"),
    ("nebulous", None, "diffuse emission painted around the cluster"),
    ("nebula_mag", "mag / arcsec2", "peak surface brightness of the nebulosity (NaN: none)"),
    ("saturated_frac", None, "fraction of output pixels with density >= 0.95"),
)

_INT_COLS = {"id", "cls", "n_members", "n_resolved", "n_field"}
_STR_COLS = {"class_name", "subtype"}


def _make_table(rows: list[dict], cfg: SimConfig, seed: int) -> Table:
    t = Table()
    for name, unit, desc in COLUMNS:
        vals = [r[name] for r in rows]
        if name in _INT_COLS:
            data = np.array(vals, dtype=np.int64)
        elif name in _STR_COLS:
            data = np.array(vals, dtype="<U12")
        elif name == "nebulous":
            data = np.array(vals, dtype=bool)
        else:
            data = np.array(vals, dtype=np.float64)
        t[name] = Column(data, unit=unit, description=desc)
    t.meta["config"] = jsonable(cfg)
    t.meta["seed"] = int(seed)
    t.meta["bands"] = list(BANDS)
    t.meta["classes"] = list(CLASSES)
    t.meta["sim_version"] = SIM_VERSION
    t.meta["image_units"] = "normalised photographic density: fog ~0.03, sky ~0.2, saturation 1"
    t.meta["references"] = ["Stipp & Montana-Lopez 2019, CS230 report (Stanford)", "King 1962, AJ 67, 471"]
    return t


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise SimConfigError(f"{name}={value!r} is invalid: must be an integer >= 0")
    return int(value)


def simulate(n: int, config: SimConfig = SimConfig(), seed: int = 0) -> SimResult:
    """Simulate ``n`` DSS2-like images of open and globular clusters.

    Parameters
    ----------
    n : int
        Number of images (>= 0).
    config : SimConfig, optional
        Simulation parameters (validated).
    seed : int, optional
        Non-negative seed; image ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.

    Returns
    -------
    SimResult
        ``images`` float32 ``[n, 1, size, size]`` and its ``catalog``.

    Raises
    ------
    SimConfigError
        (a :class:`~astrotl.errors.DataError` and a :class:`ValueError`) for a negative
        ``n`` or ``seed`` or an invalid ``config``.

    Examples
    --------
    >>> res = simulate(2, SimConfig(size=32), seed=1)
    >>> res.images.shape
    (2, 1, 32, 32)
    >>> list(res.catalog["class_name"]) in (["open", "open"], ["open", "globular"],
    ...                                     ["globular", "open"], ["globular", "globular"])
    True
    """
    if not isinstance(config, SimConfig):
        raise SimConfigError(f"config={config!r} is invalid: must be a SimConfig")
    _validate(config)
    n, seed = _check_int("n", n), _check_int("seed", seed)
    t0 = time.perf_counter()
    ctx = _context(int(config.size), float(config.pixel_scale_arcsec), float(config.plate_scale_arcsec),
                   float(config.seeing_range_arcsec[1]))
    cf = np.asarray(config.class_fractions, dtype=float)
    sf = np.asarray(config.open_subtype_fractions, dtype=float)
    images = np.empty((n, 1, config.size, config.size), dtype=np.float32)
    rows = []
    for i in range(n):
        images[i, 0], row = _simulate_one(i, config, seed, ctx, cf / cf.sum(), sf / sf.sum())
        rows.append(row)
    cat = _make_table(rows, config, seed)
    dt = time.perf_counter() - t0
    log.info("simulated %d cluster images in %.2f s (%.0f /s)", n, dt, n / dt if dt > 0 else float("inf"))
    return SimResult(images=images, catalog=cat)


# --------------------------------------------------------------------------------------
# cache


def cache_key(n: int, config: SimConfig, seed: int) -> str:
    """The name of the cache entry of ``(n, config, seed, SIM_VERSION)`` (:func:`astrotl.cache.cache_key`)."""
    from astrotl.cache import cache_key as _key

    return _key("clustertype_sim", int(n), config, int(seed), SIM_VERSION, length=None)


def simulate_cached(n: int, config: SimConfig, seed: int, cache_dir: str | os.PathLike) -> SimResult:
    """Like :func:`simulate`, but stored in and re-loaded from ``cache_dir``.

    The entry is named by :func:`cache_key` and stored by :func:`astrotl.cache.cached_arrays` as
    ``<key>.npz`` (images) and ``<key>.catalog.ecsv``, written atomically; a missing, corrupt or
    inconsistent entry is rebuilt with a logged warning.

    Parameters
    ----------
    n, config, seed
        As for :func:`simulate`.
    cache_dir : str or os.PathLike
        Directory of the cache (created if needed).

    Returns
    -------
    SimResult
        Identical to ``simulate(n, config, seed)``.

    Raises
    ------
    DataError
        When ``cache_dir`` cannot be created (or for invalid arguments, as :func:`simulate`).
    """
    from astrotl.cache import cached_arrays

    if not isinstance(config, SimConfig):
        raise SimConfigError(f"config={config!r} is invalid: must be a SimConfig")
    _validate(config)
    n, seed = _check_int("n", n), _check_int("seed", seed)
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the simulation cache '{cache}' ({exc.strerror}); "
                        f"point cache_dir (ASTROTL_CACHE_DIR) to a writable folder") from None

    def build():
        res = simulate(n, config, seed)
        return {"images": res.images}, {"catalog": res.catalog}

    def check(arrays, tables):
        images = arrays["images"]
        if images.shape != (n, 1, config.size, config.size) or images.dtype != np.float32 \
                or len(tables["catalog"]) != n:
            raise ValueError("cache entry does not match its key")

    arrays, tables = cached_arrays(cache, cache_key(n, config, seed), build, check=check,
                                   what=f"{n} simulated cluster images")
    return SimResult(images=arrays["images"], catalog=tables["catalog"])
