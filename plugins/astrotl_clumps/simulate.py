"""Seeded simulator of SDSS-like g, r, i images of clumpy disk galaxies with clump boxes.

This module draws small SDSS-like frames (0.396 arcsec/pixel, seeing ~1.4 arcsec FWHM,
bands ``g, r, i``, sky and Poisson noise) of z < 0.3 disk galaxies with giant
star-forming clumps, labelled with boxes in the two classes of Galaxy Zoo: Clump Scout
(Adams et al. 2022; Popp et al. 2024, "Transfer learning for galaxy feature detection:
finding giant star-forming clumps in low-redshift galaxies using Faster R-CNN"):
``clump`` and ``odd_clump``. It is meant for pre-training, testing and benchmarking
detectors when the real (volunteer-labelled SDSS) images are not at hand; it is *not* a
substitute for real data.

Galaxies
--------
Per image: a redshift ``z`` (uniform in ``z_range``, raised where needed so that the disk
fits the frame), an r-band absolute magnitude ``M_r`` (uniform in ``abs_mag_range``), an
exponential disk with a scale length from a size-luminosity relation
(``h = 3 kpc x 10**(-0.12 (M_r + 21))`` with 0.15 dex scatter), an inclination
(``cos i`` uniform in 0.2-1, intrinsic thickness 0.15), a position angle, and a de
Vaucouleurs bulge (bulge-to-total ``B/T`` uniform in ``bulge_fraction_range``, redder than
the disk) on the same centre. Apparent magnitudes use a flat LCDM cosmology
(H0 = 70, Om0 = 0.3) without k-corrections; observed colours are drawn directly:
disk ``g-r`` 0.35-0.65, ``r-i`` 0.15-0.30; bulge ``g-r`` 0.70-0.90, ``r-i`` 0.35-0.45.

Clumps (the labelled objects)
-----------------------------
A fraction ``zero_clump_fraction`` of the galaxies has no clumps; the others have
``1 + Poisson(mean_clumps - 1)`` clumps (at most ``max_clumps``). Clumps sit in the disk
plane at radii ``r ~ h Gamma(2)`` (between ``max(0.5 h, 1 PSF FWHM)`` and ``3 h``, i.e. not
on the nucleus), projected with the disk's inclination and position angle, at least one
PSF FWHM from each other. Each is a circular Gaussian with an r-band flux ratio to the host
(disk + bulge) log-uniform in ``flux_ratio_range`` and an intrinsic FWHM of
``clump_size_kpc`` (0.1-1 kpc: mostly unresolved in SDSS seeing).

* ``clump`` (label 0): blue, compact star-forming knots: ``g-r`` uniform in -0.2 to 0.25 but
  always at least 0.2 mag bluer than the host disk, ``r-i`` -0.3 to 0.1.
* ``odd_clump`` (label 1), a fraction ``odd_fraction`` of the clumps, defined here as a
  clump that does not look like a young star-forming knot for one of two reasons (the
  ``odd_reason`` column): ``"red"`` -- redder than its host disk (``g-r`` 0.3-0.8 mag above
  the disk's, ``r-i`` 0.3-0.6), or ``"extended"`` -- resolved, with an intrinsic FWHM of
  1-2 PSF FWHM (blue like a normal clump). Clump Scout's volunteers used "odd" for
  anything clump-like they found unusual; this is one concrete, reproducible reading.

Distractors (never boxed)
-------------------------
Foreground stars (``Poisson(star_rate)`` per image; 70 % projected on the disk, the rest
anywhere; point sources on the stellar locus ``g-r`` 0.3-1.5), the galaxy's bulge and, with
probability ``nucleus_prob``, a red point-like nucleus at the centre, and background
galaxies (``Poisson(background_galaxy_rate)``, small, red exponential disks anywhere in
the frame). They are listed in the ``distractors`` table.

Boxes
-----
A clump's box is centred on its true position and has a half-side of ``box_scale`` (default
1.5) times its observed r-band FWHM, ``sqrt(fwhm_intrinsic**2 + psf_fwhm**2)``; it is
clipped to the pixel-centre range ``[0, size - 1]``. Coordinates are 0-based pixels
(pixel ``(0, 0)`` is centred on ``x = y = 0``), ``x`` along columns, ``y`` along rows.

Images
------
Every component's morphology is rendered once, in Fourier space: GalSim gives the
transforms of the exponential disk, the de Vaucouleurs bulge, background galaxies and, per
band, the Kolmogorov PSF convolved with the pixel response; Gaussian clumps and point
sources are analytic. Each component is multiplied by its phase ramp, the components are
summed with their per-band fluxes (``[components, bands]`` matrix), multiplied by each
band's PSF and inverse-FFT'd once per band on a zero-padded grid. The seeing (r-band FWHM
uniform in ``seeing_range_arcsec``) varies per image; ``g`` is 5 % broader and ``i`` 5 %
narrower. Images are in nanomaggies per pixel (``m = 22.5 - 2.5 log10(f)``), sky
subtracted like SDSS frames, with Poisson noise on source + sky computed in electrons
(:data:`ELECTRONS_PER_NMGY` times ``depth``; ``depth = 1`` is an SDSS 54 s drift scan, the
Stripe 82 co-adds are roughly ``depth ~ 20``) and sky levels :data:`SKY_MAG_ARCSEC2`.

All randomness comes from numpy: image ``i`` of ``simulate(n, config, seed)`` uses the child
seed ``SeedSequence(seed, spawn_key=(i,))``, so results are bit-identical for the same
arguments and the first ``m`` images do not depend on ``n``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass

import galsim
import numpy as np
from astropy.table import Column, Table

from astrotl.cache import jsonable

__all__ = [
    "BANDS",
    "CLASSES",
    "ELECTRONS_PER_NMGY",
    "PIXEL_SCALE_ARCSEC",
    "SIM_VERSION",
    "SKY_MAG_ARCSEC2",
    "SimConfig",
    "SimResult",
    "make_wcs",
    "sky_sigma_nmgy",
    "simulate",
    "simulate_cached",
]

log = logging.getLogger(__name__)

#: Version of the simulator; part of the cache key, bump when the output changes.
SIM_VERSION = "1.0.0"

#: Band names, in the order of the image axis 1.
BANDS: tuple[str, ...] = ("g", "r", "i")
_R = 1  # index of r

#: Class names; label ``i`` is ``CLASSES[i]`` (0-based, no background class).
CLASSES: tuple[str, ...] = ("clump", "odd_clump")
CLASS_DESCRIPTIONS: tuple[str, ...] = (
    "compact blue star-forming clump",
    "odd clump: redder than its host disk or resolved (extended)",
)

#: SDSS pixel scale, arcsec per pixel.
PIXEL_SCALE_ARCSEC = 0.396

#: Dark-sky surface brightness at SDSS (AB mag / arcsec^2).
SKY_MAG_ARCSEC2: dict[str, float] = {"g": 21.9, "r": 20.9, "i": 20.2}

#: Electrons per nanomaggy in a 54 s SDSS drift scan (approximate, tuned so that the 5 sigma
#: point-source limits in 1.4" seeing are about g 22.2, r 22.2, i 21.3).
ELECTRONS_PER_NMGY: dict[str, float] = {"g": 110.0, "r": 180.0, "i": 100.0}

_PSF_REL = np.array([1.05, 1.0, 0.95])
_SKY_NMGY_ARCSEC2 = np.array([10.0 ** (-0.4 * (SKY_MAG_ARCSEC2[b] - 22.5)) for b in BANDS])
_SKY_NMGY_PIX = _SKY_NMGY_ARCSEC2 * PIXEL_SCALE_ARCSEC**2
_E_PER_NMGY = np.array([ELECTRONS_PER_NMGY[b] for b in BANDS])
_Q0 = 0.15  # intrinsic disk thickness


def sky_sigma_nmgy(depth: float = 1.0) -> np.ndarray:
    """Per-band sky noise per pixel (nanomaggies) of the simulated frames.

    Parameters
    ----------
    depth : float
        Exposure multiplier (:attr:`SimConfig.depth`).

    Returns
    -------
    numpy.ndarray
        Three values, in :data:`BANDS` order.
    """
    return np.sqrt(_SKY_NMGY_PIX / (_E_PER_NMGY * float(depth))).astype(np.float32)


# --------------------------------------------------------------------------------------
# configuration


def _bad(name: str, value: object, valid: str) -> ValueError:
    return ValueError(f"SimConfig.{name}={value!r} is invalid: {valid}")


_RANGES = ("z_range", "abs_mag_range", "seeing_range_arcsec", "flux_ratio_range", "clump_size_kpc",
           "bulge_fraction_range")


@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate`.

    Parameters
    ----------
    size : int
        Frame side in pixels (>= 32). The paper's frames are 400 px cropped to the central 200.
    z_range : tuple of 2 float
        Redshift range (Clump Scout: z < 0.3; most of its galaxies are below 0.15, where
        SDSS resolves the disks).
    abs_mag_range : tuple of 2 float
        Host r-band absolute magnitude range (bright, faint).
    seeing_range_arcsec : tuple of 2 float
        Range of the per-image r-band PSF FWHM (arcsec).
    zero_clump_fraction : float
        Fraction of galaxies without clumps.
    mean_clumps : float
        Mean number of clumps of a clumpy galaxy (>= 1).
    max_clumps : int
        Most clumps per galaxy.
    flux_ratio_range : tuple of 2 float
        Range (log-uniform) of a clump's r-band flux relative to its host's.
    clump_size_kpc : tuple of 2 float
        Range of the intrinsic FWHM of normal clumps (kpc).
    odd_fraction : float
        Fraction of clumps that are ``odd_clump``.
    box_scale : float
        Box half-side in units of the clump's observed FWHM.
    star_rate : float
        Mean number of foreground stars per image.
    background_galaxy_rate : float
        Mean number of background galaxies per image.
    nucleus_prob : float
        Probability of a point-like nucleus.
    bulge_fraction_range : tuple of 2 float
        Range of the bulge-to-total ratio.
    max_disk_frac : float
        Largest disk scale length as a fraction of ``size`` (sets the lowest redshift of a
        large galaxy so that it fits the frame).
    depth : float
        Exposure multiplier (1: SDSS single epoch).
    noise : bool
        If False, noiseless model images (still sky subtracted, i.e. sky-free).
    mask_threshold : float
        The host segmentation map is the noiseless r-band host model (disk, bulge, clumps)
        above ``mask_threshold`` times the r-band sky noise, or'd with the host ellipse.
    """

    size: int = 64
    z_range: tuple[float, float] = (0.02, 0.15)
    abs_mag_range: tuple[float, float] = (-23.0, -20.0)
    seeing_range_arcsec: tuple[float, float] = (1.1, 1.7)
    zero_clump_fraction: float = 0.2
    mean_clumps: float = 3.0
    max_clumps: int = 10
    flux_ratio_range: tuple[float, float] = (0.01, 0.12)
    clump_size_kpc: tuple[float, float] = (0.1, 1.0)
    odd_fraction: float = 0.25
    box_scale: float = 1.5
    star_rate: float = 0.6
    background_galaxy_rate: float = 1.0
    nucleus_prob: float = 0.3
    bulge_fraction_range: tuple[float, float] = (0.0, 0.4)
    max_disk_frac: float = 0.125
    depth: float = 1.0
    noise: bool = True
    mask_threshold: float = 1.0

    def __post_init__(self) -> None:
        for name in _RANGES:
            value = getattr(self, name)
            if isinstance(value, list | np.ndarray):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        _validate(self)


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _validate(c: SimConfig) -> None:
    if isinstance(c.size, bool) or not isinstance(c.size, int | np.integer) or c.size < 32:
        raise _bad("size", c.size, "must be an integer >= 32")
    for name in _RANGES:
        v = getattr(c, name)
        if not isinstance(v, tuple) or len(v) != 2 or not all(_finite(x) for x in v) or v[0] > v[1]:
            raise _bad(name, v, "must be two finite numbers (low, high) with low <= high")
    if not (0.0 < c.z_range[0] and c.z_range[1] <= 0.5):
        raise _bad("z_range", c.z_range, "must lie in (0, 0.5]")
    if not (0.3 <= c.seeing_range_arcsec[0] and c.seeing_range_arcsec[1] <= 4.0):
        raise _bad("seeing_range_arcsec", c.seeing_range_arcsec, "must lie in [0.3, 4] arcsec")
    if not (0.0 < c.flux_ratio_range[0] and c.flux_ratio_range[1] <= 1.0):
        raise _bad("flux_ratio_range", c.flux_ratio_range, "must lie in (0, 1]")
    if not (0.0 < c.clump_size_kpc[0]):
        raise _bad("clump_size_kpc", c.clump_size_kpc, "must be > 0")
    if not (0.0 <= c.bulge_fraction_range[0] and c.bulge_fraction_range[1] < 1.0):
        raise _bad("bulge_fraction_range", c.bulge_fraction_range, "must lie in [0, 1)")
    for name in ("zero_clump_fraction", "odd_fraction", "nucleus_prob"):
        v = getattr(c, name)
        if not _finite(v) or not 0.0 <= float(v) <= 1.0:
            raise _bad(name, v, "must be a probability in [0, 1]")
    for name in ("star_rate", "background_galaxy_rate"):
        v = getattr(c, name)
        if not _finite(v) or float(v) < 0:
            raise _bad(name, v, "must be >= 0")
    if not _finite(c.mean_clumps) or c.mean_clumps < 1:
        raise _bad("mean_clumps", c.mean_clumps, "must be >= 1")
    if isinstance(c.max_clumps, bool) or not isinstance(c.max_clumps, int | np.integer) or c.max_clumps < 1:
        raise _bad("max_clumps", c.max_clumps, "must be an integer >= 1")
    for name, lo, hi in (("box_scale", 0.1, 10.0), ("max_disk_frac", 0.02, 0.5), ("depth", 1e-3, 1e4),
                         ("mask_threshold", 0.0, 1e6)):
        v = getattr(c, name)
        if not _finite(v) or not lo <= float(v) <= hi:
            raise _bad(name, v, f"must lie in [{lo}, {hi}]")


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes
    ----------
    images : numpy.ndarray
        float32 ``[n, 3, size, size]``, nanomaggies per pixel, sky subtracted, bands :data:`BANDS`.
    catalog : astropy.table.Table
        One row per image (galaxy parameters, see :func:`simulate`).
    clumps : astropy.table.Table
        One row per clump (true positions, fluxes, colours, class, box).
    distractors : astropy.table.Table
        One row per unlabelled source (star, nucleus, background galaxy).
    masks : numpy.ndarray
        bool ``[n, size, size]``: the host galaxy's segmentation map.
    """

    images: np.ndarray
    catalog: Table
    clumps: Table
    distractors: Table
    masks: np.ndarray


# --------------------------------------------------------------------------------------
# cosmology and geometry helpers


@functools.lru_cache(maxsize=1)
def _cosmo_grid():
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)
    z = np.linspace(0.001, 0.6, 600)
    dm = np.asarray(cosmo.distmod(z).value)
    kpc_per_arcsec = np.asarray(1.0 / cosmo.arcsec_per_kpc_proper(z).value)
    return z, dm, kpc_per_arcsec


def _distmod(z: float) -> float:
    zg, dm, _ = _cosmo_grid()
    return float(np.interp(z, zg, dm))


def _kpc_per_arcsec(z: float) -> float:
    zg, _, k = _cosmo_grid()
    return float(np.interp(z, zg, k))


def _z_for_kpc_per_arcsec(k: float) -> float:
    zg, _, kk = _cosmo_grid()
    return float(np.interp(k, kk, zg))  # kpc/arcsec rises monotonically for z < 1.6


def _nmgy(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - 22.5))


def _band_fluxes(flux_r: float, g_r: float, r_i: float) -> np.ndarray:
    """g, r, i fluxes (nmgy) from the r flux and the g-r, r-i colours."""
    return flux_r * np.array([10.0 ** (-0.4 * g_r), 1.0, 10.0 ** (0.4 * r_i)])


# --------------------------------------------------------------------------------------
# Fourier rendering


class _Grid:
    """The zero-padded Fourier grid of one frame size."""

    def __init__(self, size: int):
        self.size = size
        # 1.5x padding: the largest disk (scale length size / 8 by default) has faded by e**-6
        # where its light would wrap around
        self.P = P = int(galsim.Image.good_fft_size(int(math.ceil(1.5 * size))))
        self.off = (P - size) // 2
        self.dk = 2.0 * np.pi / P
        self.kx = 2.0 * np.pi * np.fft.rfftfreq(P)  # [P//2 + 1]
        self.ky = 2.0 * np.pi * np.fft.fftfreq(P)  # [P]
        self.k2 = self.ky[:, None] ** 2 + self.kx[None, :] ** 2
        self.nx = P // 2 + 1
        self._kimage = galsim.ImageCD(galsim.BoundsI(0, P // 2, -(P // 2), P - P // 2 - 1), scale=self.dk)

    def from_galsim(self, obj: galsim.GSObject) -> np.ndarray:
        """Real Fourier transform of a centred, point-symmetric GalSim profile, rfft layout."""
        obj.drawKImage(image=self._kimage, recenter=False)  # the half plane kx >= 0 only
        return np.fft.ifftshift(self._kimage.array.real, axes=0)

    def phase(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``exp(-i k.x)`` for positions in frame pixels, ``[n, P, P//2 + 1]``."""
        x = np.asarray(x, dtype=float) + self.off
        y = np.asarray(y, dtype=float) + self.off
        ex = np.exp(-1j * x[:, None] * self.kx[None, :])
        ey = np.exp(-1j * y[:, None] * self.ky[None, :])
        return ey[:, :, None] * ex[:, None, :]

    def gaussians(self, sigma: np.ndarray) -> np.ndarray:
        """Fourier transforms of unit-flux circular Gaussians, ``[n, P, P//2 + 1]``."""
        s2 = np.asarray(sigma, dtype=float) ** 2
        return np.exp(-0.5 * s2[:, None, None] * self.k2[None])

    def to_image(self, spec: np.ndarray) -> np.ndarray:
        img = np.fft.irfft2(spec, s=(self.P, self.P), axes=(-2, -1))
        o = self.off
        return img[..., o : o + self.size, o : o + self.size]


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> _Grid:
    return _Grid(size)


# --------------------------------------------------------------------------------------
# one image


def _pick_z(rng, cfg: SimConfig, h_kpc: float) -> tuple[float, float]:
    """Redshift such that the disk fits the frame; may shrink ``h`` at the top of the range."""
    zlo, zhi = cfg.z_range
    hmax_arcsec = cfg.max_disk_frac * cfg.size * PIXEL_SCALE_ARCSEC
    zreq = _z_for_kpc_per_arcsec(h_kpc / hmax_arcsec)
    lo = max(zlo, zreq)
    if lo >= zhi:
        z = float(rng.uniform(zlo, zhi)) if zreq <= zlo else zhi
        h_kpc = min(h_kpc, hmax_arcsec * _kpc_per_arcsec(z))
        return z, h_kpc
    return float(rng.uniform(lo, zhi)), h_kpc


def _ellipse_inside(x, y, xc, yc, a, b, theta):
    ct, st = math.cos(theta), math.sin(theta)
    dx, dy = np.asarray(x) - xc, np.asarray(y) - yc
    u = dx * ct + dy * st
    v = -dx * st + dy * ct
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _simulate_one(i: int, cfg: SimConfig, seed: int, grid: _Grid):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    size = cfg.size
    c0 = (size - 1) / 2.0
    xc, yc = c0 + rng.uniform(-1.0, 1.0), c0 + rng.uniform(-1.0, 1.0)

    # --- host
    abs_mag = float(rng.uniform(*cfg.abs_mag_range))
    h_kpc = 3.0 * 10.0 ** (-0.12 * (abs_mag + 21.0)) * 10.0 ** rng.normal(0.0, 0.15)
    z, h_kpc = _pick_z(rng, cfg, h_kpc)
    kpc_as = _kpc_per_arcsec(z)
    kpc_px = kpc_as * PIXEL_SCALE_ARCSEC
    h_px = h_kpc / kpc_px
    mag_r = abs_mag + _distmod(z)
    flux_host_r = float(_nmgy(mag_r))
    cos_i = float(rng.uniform(0.2, 1.0))
    q = math.sqrt(cos_i**2 * (1 - _Q0**2) + _Q0**2)
    theta = float(rng.uniform(0.0, np.pi))  # major axis, from +x towards +y
    bt = float(rng.uniform(*cfg.bulge_fraction_range))
    disk_gr, disk_ri = float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.15, 0.30))
    bulge_gr, bulge_ri = float(rng.uniform(0.70, 0.90)), float(rng.uniform(0.35, 0.45))
    re_bulge = float(rng.uniform(0.3, 0.8)) * 1.678 * h_px * 0.5
    q_bulge = float(rng.uniform(0.7, 1.0))

    seeing = float(rng.uniform(*cfg.seeing_range_arcsec))
    psf_px = seeing / PIXEL_SCALE_ARCSEC
    fwhm_b = psf_px * _PSF_REL

    # --- components: rows of (k-transform, x, y, fluxes[3], kind)
    ks, xs, ys, fl = [], [], [], []
    host_rows = []

    def add(kt, x, y, f, host=False):
        if host:
            host_rows.append(len(ks))
        ks.append(kt)
        xs.append(x)
        ys.append(y)
        fl.append(f)

    beta = theta * galsim.radians
    disk = galsim.Exponential(scale_radius=h_px).shear(q=q, beta=beta)
    add(grid.from_galsim(disk), xc, yc, _band_fluxes(flux_host_r * (1 - bt), disk_gr, disk_ri), host=True)
    if bt > 0:
        bulge = galsim.DeVaucouleurs(half_light_radius=max(re_bulge, 0.3)).shear(q=q_bulge, beta=beta)
        add(grid.from_galsim(bulge), xc, yc, _band_fluxes(flux_host_r * bt, bulge_gr, bulge_ri), host=True)
    flux_host = _band_fluxes(flux_host_r * (1 - bt), disk_gr, disk_ri) + _band_fluxes(flux_host_r * bt, bulge_gr,
                                                                                       bulge_ri)

    # --- clumps
    if rng.random() < cfg.zero_clump_fraction:
        n_want = 0
    else:
        n_want = min(cfg.max_clumps, 1 + int(rng.poisson(cfg.mean_clumps - 1.0)))
    rmin = max(0.5 * h_px, psf_px)
    rmax = max(3.0 * h_px, rmin + 1.0)
    ct, st = math.cos(theta), math.sin(theta)
    clumps = []
    tries = 0
    while len(clumps) < n_want and tries < 50 * max(n_want, 1):
        tries += 1
        r = float(np.clip(h_px * rng.gamma(2.0), rmin, rmax))
        phi = float(rng.uniform(0, 2 * np.pi))
        u, v = r * math.cos(phi), r * math.sin(phi) * cos_i
        x, y = xc + u * ct - v * st, yc + u * st + v * ct
        if not (1.0 <= x <= size - 2.0 and 1.0 <= y <= size - 2.0):
            continue
        if any(math.hypot(x - c["x"], y - c["y"]) < psf_px for c in clumps):
            continue
        odd = rng.random() < cfg.odd_fraction
        reason = "none"
        size_kpc = float(rng.uniform(*cfg.clump_size_kpc))
        fwhm_int = size_kpc / kpc_px
        gr = float(rng.uniform(-0.2, 0.25))
        gr = min(gr, disk_gr - 0.2)
        ri = float(rng.uniform(-0.3, 0.1))
        if odd:
            if rng.random() < 0.5:
                reason = "red"
                gr = disk_gr + float(rng.uniform(0.3, 0.8))
                ri = float(rng.uniform(0.3, 0.6))
            else:
                reason = "extended"
                fwhm_int = psf_px * float(rng.uniform(1.0, 2.0))
                size_kpc = fwhm_int * kpc_px
        ratio = float(np.exp(rng.uniform(np.log(cfg.flux_ratio_range[0]), np.log(cfg.flux_ratio_range[1]))))
        clumps.append(dict(x=x, y=y, r_disk=r, flux_ratio=ratio, fwhm_int=fwhm_int, size_kpc=size_kpc, gr=gr, ri=ri,
                           odd=odd, reason=reason))
    if clumps:
        sig = np.array([c["fwhm_int"] for c in clumps]) / 2.3548
        gk = grid.gaussians(sig)
        for c, kt in zip(clumps, gk):
            f = _band_fluxes(c["flux_ratio"] * flux_host_r, c["gr"], c["ri"])
            c["flux"] = f
            add(kt, c["x"], c["y"], f, host=True)

    # --- distractors
    distract = []
    ones = np.ones((grid.P, grid.nx))
    a_ell = 3.2 * h_px
    b_ell = a_ell * q
    if rng.random() < cfg.nucleus_prob:
        ratio = float(rng.uniform(0.02, 0.1))
        gr, ri = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.3, 0.45))
        f = _band_fluxes(ratio * flux_host_r, gr, ri)
        add(ones, xc, yc, f)
        distract.append(dict(kind="nucleus", x=xc, y=yc, flux=f, gr=gr))
    for _ in range(int(rng.poisson(cfg.star_rate))):
        if rng.random() < 0.7:
            rr = math.sqrt(rng.random()) * 0.8
            ph = rng.uniform(0, 2 * np.pi)
            u, v = rr * a_ell * math.cos(ph), rr * b_ell * math.sin(ph)
            x, y = xc + u * ct - v * st, yc + u * st + v * ct
        else:
            x, y = rng.uniform(0, size - 1, size=2)
        x, y = float(np.clip(x, 0, size - 1)), float(np.clip(y, 0, size - 1))
        ratio = float(np.exp(rng.uniform(np.log(0.01), np.log(0.4))))
        gr = float(rng.uniform(0.3, 1.5))
        ri = 0.4 * gr - 0.05 + float(rng.normal(0, 0.03))
        f = _band_fluxes(ratio * flux_host_r, gr, ri)
        add(ones, x, y, f)
        distract.append(dict(kind="star", x=x, y=y, flux=f, gr=gr))
    for _ in range(int(rng.poisson(cfg.background_galaxy_rate))):
        x, y = (float(v) for v in rng.uniform(0, size - 1, size=2))
        ratio = float(np.exp(rng.uniform(np.log(0.005), np.log(0.05))))
        gr, ri = float(rng.uniform(0.9, 1.6)), float(rng.uniform(0.4, 0.7))
        hb = float(rng.uniform(0.5, 1.5))
        obj = galsim.Exponential(scale_radius=hb).shear(q=float(rng.uniform(0.3, 1.0)),
                                                        beta=float(rng.uniform(0, np.pi)) * galsim.radians)
        f = _band_fluxes(ratio * flux_host_r, gr, ri)
        add(grid.from_galsim(obj), x, y, f)
        distract.append(dict(kind="background_galaxy", x=x, y=y, flux=f, gr=gr))

    # --- render: one transform per component, coloured per band, one inverse FFT per band
    kt = np.stack(ks) * grid.phase(np.array(xs), np.array(ys))
    F = np.array(fl)  # [C, 3]
    psf_k = np.stack([grid.from_galsim(galsim.Convolve(galsim.Kolmogorov(fwhm=float(fw)), galsim.Pixel(1.0)))
                      for fw in fwhm_b])
    # einsum, not a complex BLAS matmul: the latter is far slower for these thin matrices
    spec = np.einsum("cb,cyx->byx", F.astype(complex), kt) * psf_k
    model = grid.to_image(spec)
    host_spec = np.einsum("c,cyx->yx", F[host_rows, _R].astype(complex), kt[host_rows]) * psf_k[_R]
    host_model = grid.to_image(host_spec)

    sky = _SKY_NMGY_PIX[:, None, None]
    gain = (_E_PER_NMGY * cfg.depth)[:, None, None]
    if cfg.noise:
        lam = np.maximum(model + sky, 0.0) * gain
        img = rng.poisson(lam) / gain - sky
    else:
        img = model
    sigma_r = float(sky_sigma_nmgy(cfg.depth)[_R])
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (host_model > cfg.mask_threshold * sigma_r) | _ellipse_inside(xx, yy, xc, yc, a_ell, b_ell, theta)

    # --- tables
    psf_r = float(fwhm_b[_R])
    crow = []
    for j, c in enumerate(clumps):
        fwhm_obs = math.hypot(c["fwhm_int"], psf_r)
        hw = cfg.box_scale * fwhm_obs
        box = np.clip([c["x"] - hw, c["y"] - hw, c["x"] + hw, c["y"] + hw], 0.0, size - 1.0)
        mags = 22.5 - 2.5 * np.log10(c["flux"])
        crow.append(dict(image=i, clump_id=j, x=c["x"], y=c["y"], label=int(c["odd"]), cls=CLASSES[int(c["odd"])],
                         odd_reason=c["reason"], flux_ratio=c["flux_ratio"],
                         flux_ratio_g=float(c["flux"][0] / flux_host[0]), fwhm_intrinsic_px=c["fwhm_int"],
                         fwhm_px=fwhm_obs, size_kpc=c["size_kpc"], r_disk_px=c["r_disk"],
                         mag_g=mags[0], mag_r=mags[1], mag_i=mags[2], g_r=c["gr"], r_i=c["ri"],
                         x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
    drow = []
    for d in distract:
        mags = 22.5 - 2.5 * np.log10(d["flux"])
        drow.append(dict(image=i, kind=d["kind"], x=d["x"], y=d["y"], mag_r=mags[1], g_r=d["gr"]))
    host_mag = 22.5 - 2.5 * np.log10(flux_host)
    row = dict(
        id=i, x=xc, y=yc, redshift=z, abs_mag_r=abs_mag, mag_g=host_mag[0], mag_r=host_mag[1], mag_i=host_mag[2],
        disk_g_r=disk_gr, disk_r_i=disk_ri, bulge_g_r=bulge_gr, bulge_frac=bt, disk_scale_kpc=h_kpc,
        disk_scale_px=h_px, bulge_reff_px=re_bulge if bt > 0 else 0.0, inclination_deg=math.degrees(math.acos(cos_i)),
        axis_ratio=q, pa_deg=math.degrees(theta), pa_sky_deg=(math.degrees(theta) - 90.0) % 180.0,
        psf_fwhm_arcsec=seeing, psf_fwhm_px=psf_r, n_clumps=len(clumps), n_odd=sum(c["odd"] for c in clumps),
        n_stars=sum(d["kind"] == "star" for d in distract),
        n_background_galaxies=sum(d["kind"] == "background_galaxy" for d in distract),
        has_nucleus=any(d["kind"] == "nucleus" for d in distract),
        ellipse_a=a_ell, ellipse_b=b_ell, ellipse_theta_deg=math.degrees(theta),
    )
    return img.astype(np.float32), mask, row, crow, drow


# --------------------------------------------------------------------------------------
# tables

_CAT_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("id", None, "image index 0..N-1"),
    ("ra", "deg", "made-up RA of the galaxy centre (the image WCS reference point)"),
    ("dec", "deg", "made-up Dec of the galaxy centre"),
    ("x", "pix", "0-based x (column) of the galaxy centre"),
    ("y", "pix", "0-based y (row) of the galaxy centre"),
    ("redshift", None, "redshift"),
    ("abs_mag_r", "mag", "host r-band absolute magnitude (no k-correction)"),
    ("mag_g", "mag", "host (disk + bulge) g magnitude, AB"),
    ("mag_r", "mag", "host (disk + bulge) r magnitude, AB"),
    ("mag_i", "mag", "host (disk + bulge) i magnitude, AB"),
    ("disk_g_r", "mag", "disk g-r colour"),
    ("disk_r_i", "mag", "disk r-i colour"),
    ("bulge_g_r", "mag", "bulge g-r colour"),
    ("bulge_frac", None, "bulge-to-total r-band flux ratio"),
    ("disk_scale_kpc", "kpc", "exponential disk scale length"),
    ("disk_scale_px", "pix", "exponential disk scale length"),
    ("bulge_reff_px", "pix", "bulge half-light radius (0: no bulge)"),
    ("inclination_deg", "deg", "disk inclination (0 face-on)"),
    ("axis_ratio", None, "projected disk axis ratio b/a"),
    ("pa_deg", "deg", "major-axis angle in the image, from +x towards +y"),
    ("pa_sky_deg", "deg", "major-axis position angle east of north (north +y, east -x)"),
    ("psf_fwhm_arcsec", "arcsec", "r-band seeing FWHM"),
    ("psf_fwhm_px", "pix", "r-band PSF FWHM"),
    ("n_clumps", None, "number of boxed clumps (both classes)"),
    ("n_odd", None, "number of odd clumps"),
    ("n_stars", None, "number of foreground stars (distractors)"),
    ("n_background_galaxies", None, "number of background galaxies (distractors)"),
    ("has_nucleus", None, "a point-like nucleus (distractor) is present"),
    ("ellipse_a", "pix", "host mask ellipse semi-major axis (3.2 disk scale lengths)"),
    ("ellipse_b", "pix", "host mask ellipse semi-minor axis"),
    ("ellipse_theta_deg", "deg", "host mask ellipse angle, from +x towards +y"),
)

_CLUMP_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("image", None, "index of the image (catalogue id)"),
    ("clump_id", None, "index of the clump within its image"),
    ("x", "pix", "0-based x (column) of the clump centre"),
    ("y", "pix", "0-based y (row) of the clump centre"),
    ("label", None, "0 clump, 1 odd_clump"),
    ("cls", None, "class name"),
    ("odd_reason", None, "why an odd clump is odd: 'red' or 'extended' ('none' for normal clumps)"),
    ("flux_ratio", None, "clump r flux / host r flux"),
    ("flux_ratio_g", None, "clump g flux / host g flux"),
    ("fwhm_intrinsic_px", "pix", "intrinsic Gaussian FWHM"),
    ("fwhm_px", "pix", "observed r-band FWHM: sqrt(intrinsic^2 + PSF^2)"),
    ("size_kpc", "kpc", "intrinsic FWHM"),
    ("r_disk_px", "pix", "radius in the disk plane"),
    ("mag_g", "mag", "clump g magnitude"),
    ("mag_r", "mag", "clump r magnitude"),
    ("mag_i", "mag", "clump i magnitude"),
    ("g_r", "mag", "clump g-r colour"),
    ("r_i", "mag", "clump r-i colour"),
    ("x0", "pix", "box left (0-based, clipped to [0, size-1])"),
    ("y0", "pix", "box bottom"),
    ("x1", "pix", "box right"),
    ("y1", "pix", "box top"),
)

_DISTRACTOR_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("image", None, "index of the image"),
    ("kind", None, "star, nucleus or background_galaxy"),
    ("x", "pix", "0-based x"),
    ("y", "pix", "0-based y"),
    ("mag_r", "mag", "r magnitude"),
    ("g_r", "mag", "g-r colour"),
)

_INT = {"id", "image", "clump_id", "label", "n_clumps", "n_odd", "n_stars", "n_background_galaxies"}
_STR = {"cls": "<U9", "odd_reason": "<U8", "kind": "<U17"}


def _table(rows: list[dict], columns) -> Table:
    t = Table()
    for name, unit, desc in columns:
        vals = [r[name] for r in rows]
        if name in _INT:
            data = np.array(vals, dtype=np.int64)
        elif name in _STR:
            data = np.array(vals, dtype=_STR[name])
        elif name == "has_nucleus":
            data = np.array(vals, dtype=bool)
        else:
            data = np.array(vals, dtype=np.float64)
        t[name] = Column(data, unit=unit, description=desc)
    return t


def make_wcs(ra: float, dec: float, x: float, y: float):
    """TAN WCS at :data:`PIXEL_SCALE_ARCSEC`, north up (+y), east left (-x).

    Parameters
    ----------
    ra, dec : float
        Sky position (deg) of the reference pixel.
    x, y : float
        0-based pixel of the reference point.

    Returns
    -------
    astropy.wcs.WCS
    """
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [float(x) + 1.0, float(y) + 1.0]  # FITS is 1-based
    s = PIXEL_SCALE_ARCSEC / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    return w


def simulate(n: int, config: SimConfig = SimConfig(), seed: int = 0) -> SimResult:
    """Simulate ``n`` SDSS-like g, r, i frames of clumpy disk galaxies.

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
        Images (nanomaggies/pixel, sky subtracted), the per-image ``catalog`` (columns
        ``id, ra, dec, x, y, redshift, abs_mag_r, mag_g, mag_r, mag_i, disk_g_r, disk_r_i,
        bulge_g_r, bulge_frac, disk_scale_kpc, disk_scale_px, bulge_reff_px,
        inclination_deg, axis_ratio, pa_deg, pa_sky_deg, psf_fwhm_arcsec, psf_fwhm_px,
        n_clumps, n_odd, n_stars, n_background_galaxies, has_nucleus, ellipse_a,
        ellipse_b, ellipse_theta_deg``), the per-clump ``clumps`` table (``image,
        clump_id, x, y, label, cls, odd_reason, flux_ratio, flux_ratio_g,
        fwhm_intrinsic_px, fwhm_px, size_kpc, r_disk_px, mag_g, mag_r, mag_i, g_r, r_i,
        x0, y0, x1, y1``), the ``distractors`` table (``image, kind, x, y, mag_r, g_r``)
        and the host segmentation ``masks``.

    Raises
    ------
    ValueError
        For a negative ``n`` or ``seed`` or an invalid ``config``.

    Examples
    --------
    >>> res = simulate(2, SimConfig(size=48), seed=1)
    >>> res.images.shape
    (2, 3, 48, 48)
    """
    if not isinstance(config, SimConfig):
        raise ValueError(f"config={config!r} is invalid: must be a SimConfig")
    _validate(config)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n={n!r} is invalid: must be an integer >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: must be an integer >= 0")
    n, seed = int(n), int(seed)
    t0 = time.perf_counter()
    size = int(config.size)
    grid = _grid(size)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    rows, crows, drows = [], [], []
    for i in range(n):
        images[i], masks[i], row, crow, drow = _simulate_one(i, config, seed, grid)
        rows.append(row)
        crows.extend(crow)
        drows.extend(drow)
    # made-up sky positions: a separate stream so that they do not change the images
    pos = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
    ra = pos.uniform(0.0, 360.0, size=n)
    dec = np.degrees(np.arcsin(pos.uniform(-0.2, 0.9, size=n)))
    for r, a, d in zip(rows, ra, dec):
        r["ra"], r["dec"] = float(a), float(d)
    cat = _table(rows, _CAT_COLUMNS)
    clumps = _table(crows, _CLUMP_COLUMNS)
    distractors = _table(drows, _DISTRACTOR_COLUMNS)
    cat.meta.update(
        config=jsonable(config), seed=seed, bands=list(BANDS), classes=list(CLASSES),
        sim_version=SIM_VERSION, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC,
        image_units="nanomaggy / pix (22.5 AB zero point), sky subtracted",
        sky_sigma_nmgy=[float(v) for v in sky_sigma_nmgy(config.depth)],
        references=["Popp et al. 2024 (Galaxy Zoo: Clump Scout, Faster R-CNN)", "Adams et al. 2022, ApJ 931, 16"],
    )
    dt = time.perf_counter() - t0
    log.info("simulated %d clumpy-galaxy frames in %.2f s (%.0f /s)", n, dt, n / dt if dt > 0 else float("inf"))
    return SimResult(images=images, catalog=cat, clumps=clumps, distractors=distractors, masks=masks)


# --------------------------------------------------------------------------------------
# cache


def simulate_cached(n: int, config: SimConfig, seed: int, cache_dir: str | os.PathLike) -> SimResult:
    """Like :func:`simulate`, but stored in and re-loaded from ``cache_dir``.

    The entry is keyed by ``(n, config, seed, SIM_VERSION)`` and stored by
    :func:`astrotl.cache.cached_arrays` as ``<key>.npz`` (images, masks packed by
    :func:`numpy.packbits`), ``<key>.catalog.ecsv``, ``<key>.clumps.ecsv`` and
    ``<key>.distractors.ecsv``, each written atomically (the ``.npz`` last); a missing, corrupt or
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
    """
    from astrotl.cache import cache_key, cached_arrays

    if not isinstance(config, SimConfig):
        raise ValueError(f"config={config!r} is invalid: must be a SimConfig")
    _validate(config)
    size = int(config.size)

    def build():
        res = simulate(n, config, seed)
        return ({"images": res.images, "masks": np.packbits(res.masks, axis=-1)},
                {"catalog": res.catalog, "clumps": res.clumps, "distractors": res.distractors})

    def check(arrays, tables):
        images, masks, cat = arrays["images"], arrays["masks"], tables["catalog"]
        if (images.shape != (int(n), 3, size, size) or images.dtype != np.float32 or len(cat) != n
                or masks.shape != (int(n), size, (size + 7) // 8) or masks.dtype != np.uint8
                or int(np.sum(cat["n_clumps"])) != len(tables["clumps"]) or "distractors" not in tables):
            raise ValueError("cache entry does not match its key")

    key = cache_key("clumps_sim", int(n), config, int(seed), SIM_VERSION, length=None)
    arrays, tables = cached_arrays(cache_dir, key, build, check=check, what=f"{n} simulated clumpy-galaxy frames")
    masks = np.unpackbits(arrays["masks"], axis=-1, count=size).astype(bool)
    return SimResult(images=arrays["images"], catalog=tables["catalog"], clumps=tables["clumps"],
                     distractors=tables["distractors"], masks=masks)
