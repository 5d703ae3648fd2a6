"""Seeded simulator of PHANGS-HST-like five-band cutouts of star-cluster candidates.

This module draws small HST WFC3/UVIS-like image stamps (``F275W, F336W, F438W, F555W,
F814W``; 0.04 arcsec/pixel) of the kinds of objects that end up in the PHANGS-HST star
cluster candidate catalogues, labelled with the morphological classes used by the human
classifiers of Whitmore et al. (2021, MNRAS 506, 5294; "Star cluster classification in
the PHANGS-HST survey: comparison between human and machine learning approaches") and by
the deep transfer-learning models of Wei et al. (2020, MNRAS 493, 3178). It is meant for
pre-training, testing and benchmarking classifiers when the real (licensed, large)
cutouts are not at hand; it is *not* a substitute for real data.

Classes (Whitmore et al. 2021, Sect. 3 and Table 3)
---------------------------------------------------
* ``1`` symmetric cluster: compact, round, single central peak, radial profile extended
  relative to a point source. Drawn as an Elson, Fall & Freeman (1987; EFF) profile,
  i.e. a Moffat profile with ``beta`` in 1.5-2.5, with an intrinsic size chosen so that
  the observed FWHM is 2.4-5.5 px (stars have 1.8-2.4 px in PHANGS-HST, clusters
  2.4-5 px or more). Old ages dominate (Fig. 9: few very young Class 1 objects).
* ``2`` asymmetric cluster: single central peak but elongated or lopsided: a sheared EFF
  body plus either an offset compact clump, one to three resolved bright stars, or a
  second offset diffuse component. Younger on average than Class 1 (Fig. 11).
* ``3`` compact association: multiple peaks, at least four resolved stars within a five
  pixel radius (the PHANGS-HST definition), on faint diffuse light. Mostly younger than
  10 Myr (Fig. 12).
* ``4`` artifacts, with the PHANGS-HST sub-class kept as a string: ``"4.1"`` single star,
  ``"4.2"`` pair, ``"4.3"`` triplet (these three dominate, pairs most common),
  ``"4.4"`` saturated star (diffraction spikes, Airy rings, charge bleeding along
  columns, clipped at a saturation level), ``"4.7"`` background galaxy (red, extended
  Sersic disk or bulge+disk), ``"4.11"`` edge (part of the stamp is outside the
  footprint of one or more bands: those pixels are no-data and set to exactly 0), and
  ``"4.12"`` bad pixel / cosmic ray (sharp, F555W only, not PSF-convolved). Sub-classes
  4.5, 4.6, 4.8, 4.9 and 4.10 are not simulated. The default sub-class mix roughly
  follows the totals of Table 3, with the rare kinds boosted so they are seen.

Photometry
----------
F555W (V) Vega magnitudes are drawn from a power-law luminosity function,
``dN/dm ~ 10**(lf_slope * m)`` in ``mag_range`` (``lf_slope = 0.3``, i.e.
``dN/dL ~ L**-1.75``, reproduces the magnitude quartiles of Sect. 4.2). Cluster colours
follow an approximate solar-metallicity simple stellar population (SSP) track in the
spirit of Bruzual & Charlot (2003) as drawn in Figs. 9-10 of Whitmore et al. (2021):
U-B ~ -1.5 and V-I ~ -0.3 at 1 Myr, the red-supergiant excursion to V-I ~ 0.8 near
10 Myr, and V-I ~ 1.15, U-B ~ 0.5 at 10 Gyr, so that the age boxes of Sect. 5
(Box 1 old ... Box 4 very young) are populated as expected. Reddening uses
E(B-V) in 0-0.5 (larger for younger objects) and a Milky-Way (Cardelli et al. 1989,
R_V = 3.1) law. Stars use a supergiant colour locus (the only stars bright enough at
~10 Mpc), pairs and triplets mix blue and red stars (Fig. 2), background galaxies are old
and dusty, hence red. Magnitudes become electrons with approximate WFC3/UVIS Vega zero
points (e-/s) and PHANGS-like exposure times (:data:`ZEROPOINTS_VEGA`,
:data:`EXPTIME_S`).

Images
------
The point-spread function of each band is an obscured Airy pattern (2.4 m aperture,
obscuration 0.33, lambda/D of the band) convolved with a Gaussian (charge diffusion,
drizzling, jitter) and with the 1-pixel response, rescaled so that its F555W FWHM is
``psf_fwhm_px`` (default 2.1 px) and the other bands follow the measured WFC3/UVIS trend
(F275W and F814W ~10 % broader). GalSim (Rowe et al. 2015) provides the PSF and the
Fourier transforms of the Moffat (EFF) and Sersic profiles; the stamps themselves are
synthesised in Fourier space with numpy: every component of an object is a Fourier
profile times a phase ramp, summed with its per-band fluxes, multiplied by the band's
PSF x pixel transfer function on a 2x over-sampled frequency grid, folded (the aliasing
of sampling the under-sampled UVIS PSF at pixel centres) and inverse-FFT'd once per
band. This renders each morphology once for all bands, keeps sub-pixel positions exact
and agrees with direct GalSim drawing to ~1-2 % of the peak (PSF wings wrap around the
padded grid).

Each stamp also gets a sky level per band, a smooth galaxy background (a gradient plus
low-frequency modes, from a faint blue disk to a bright red bulge, scaled by
``background``), unrelated crowding neighbours (a Poisson number, mean ``crowding``
modulated by environment: old Class 1 clusters are more isolated, associations, pairs and
triplets sit in crowded regions, Sect. 4.3 and 6.1), Poisson noise on source, sky and
background, Gaussian read noise, and (rarely) cosmic rays. Images are in electrons per
pixel (float32) with the background **not** subtracted. The candidate sits at the stamp
centre, 0-based pixel ``(size - 1) / 2``, with a sub-pixel jitter, except for edge
objects, which may be offset by up to 3 px.

All randomness comes from numpy: object ``i`` of ``simulate(n, config, seed)`` uses the
child seed ``SeedSequence(seed, spawn_key=(i,))``, so results are bit-identical for the
same arguments and the first ``m`` objects do not depend on ``n``. GalSim is only used
for deterministic transforms (no GalSim random deviates).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from astropy.table import Column, Table

from astrotl.cache import jsonable

__all__ = [
    "BANDS",
    "CLASS_NAMES",
    "EXPTIME_S",
    "PIXEL_SCALE_ARCSEC",
    "SIM_VERSION",
    "SKY_E_PER_PIX",
    "SUBCLASS_NAMES",
    "ZEROPOINTS_VEGA",
    "SimConfig",
    "SimResult",
    "simulate",
    "simulate_cached",
]

log = logging.getLogger(__name__)

#: Version of the simulator; part of the cache key, bump when the output changes.
SIM_VERSION = "1.0.0"

#: Band names, in the order of the image axis 1.
BANDS: tuple[str, ...] = ("F275W", "F336W", "F438W", "F555W", "F814W")
_V = 3  # index of F555W

#: Pixel scale of WFC3/UVIS (and of PHANGS-HST drizzled mosaics), arcsec per pixel.
PIXEL_SCALE_ARCSEC = 0.04

#: Approximate WFC3/UVIS Vega zero points: magnitude of a source giving 1 e-/s.
ZEROPOINTS_VEGA: dict[str, float] = {
    "F275W": 22.6,
    "F336W": 23.5,
    "F438W": 24.98,
    "F555W": 25.81,
    "F814W": 24.67,
}

#: Exposure times in seconds (PHANGS-like: longer in the UV).
EXPTIME_S: dict[str, float] = {
    "F275W": 2000.0,
    "F336W": 2000.0,
    "F438W": 1000.0,
    "F555W": 1000.0,
    "F814W": 1000.0,
}

#: Sky (zodiacal light + dark) per pixel over the exposure, electrons, for ``sky = 1``.
SKY_E_PER_PIX: dict[str, float] = {
    "F275W": 2.0,
    "F336W": 4.0,
    "F438W": 12.0,
    "F555W": 40.0,
    "F814W": 40.0,
}

#: Main class names (Whitmore et al. 2021, Sect. 3.2).
CLASS_NAMES: dict[int, str] = {
    1: "symmetric cluster",
    2: "asymmetric cluster",
    3: "compact association",
    4: "artifact",
}

#: Sub-class codes (PHANGS-HST, Whitmore et al. 2021 Table 3) of the simulated objects.
SUBCLASS_NAMES: dict[str, str] = {
    "1": "symmetric cluster",
    "2": "asymmetric cluster",
    "3": "compact association",
    "4.1": "star",
    "4.2": "pair",
    "4.3": "triplet",
    "4.4": "saturated star",
    "4.7": "background galaxy",
    "4.11": "edge",
    "4.12": "bad pixel",
}

_ARTIFACT_CODES = tuple(k for k in SUBCLASS_NAMES if k.startswith("4."))

#: Default mix of Class 4 sub-classes. Table 3 totals over the five galaxies are
#: 438 stars, 785 pairs, 385 triplets, 16 saturated, 11 galaxies, 34 edge, 12 bad pixel;
#: the rare kinds are boosted so that a few thousand stamps contain them.
DEFAULT_ARTIFACT_FRACTIONS: tuple[tuple[str, float], ...] = (
    ("4.1", 0.26),
    ("4.2", 0.38),
    ("4.3", 0.20),
    ("4.4", 0.04),
    ("4.7", 0.04),
    ("4.11", 0.04),
    ("4.12", 0.04),
)

# Pivot wavelengths (nm), PSF FWHM relative to F555W (WFC3/UVIS ISR values, rounded),
# and A_band / E(B-V) for a Cardelli et al. (1989) R_V = 3.1 law.
_WAVELENGTH_NM = np.array([272.0, 335.0, 433.0, 531.0, 802.0])
_PSF_FWHM_REL = np.array([1.10, 1.04, 1.04, 1.00, 1.10])
_R_EXT = np.array([6.05, 5.05, 4.12, 3.13, 1.83])
_ZP = np.array([ZEROPOINTS_VEGA[b] for b in BANDS])
_TEXP = np.array([EXPTIME_S[b] for b in BANDS])
_SKY = np.array([SKY_E_PER_PIX[b] for b in BANDS])

# Approximate solar-metallicity SSP colours (Vega) vs log(age/yr):
# columns: log_age, F275W-F336W, U-B, B-V, V-I.
_SSP_TABLE = np.array(
    [
        [6.0, -0.40, -1.50, -0.30, -0.35],
        [6.3, -0.38, -1.45, -0.28, -0.30],
        [6.5, -0.35, -1.40, -0.25, -0.20],
        [6.7, -0.30, -1.25, -0.18, 0.10],
        [6.9, -0.20, -1.05, -0.05, 0.60],
        [7.0, -0.15, -1.00, 0.00, 0.80],
        [7.2, -0.10, -0.85, 0.00, 0.55],
        [7.5, 0.00, -0.65, 0.00, 0.35],
        [8.0, 0.10, -0.40, 0.05, 0.30],
        [8.5, 0.35, -0.15, 0.15, 0.45],
        [9.0, 0.90, 0.10, 0.40, 0.75],
        [9.5, 1.40, 0.30, 0.65, 0.98],
        [10.0, 1.70, 0.50, 0.85, 1.15],
    ]
)

# Supergiant colour locus vs a spectral-type parameter t in [0, 1] (O/B ... M):
# columns: t, F275W-F336W, U-B, B-V, V-I.
_STAR_TABLE = np.array(
    [
        [0.00, -0.35, -1.15, -0.30, -0.33],
        [0.15, -0.25, -0.90, -0.22, -0.22],
        [0.30, -0.05, -0.50, -0.10, -0.08],
        [0.45, 0.35, -0.10, 0.05, 0.10],
        [0.60, 0.80, 0.25, 0.40, 0.50],
        [0.75, 1.50, 0.60, 0.90, 1.00],
        [0.90, 2.10, 1.20, 1.30, 1.45],
        [1.00, 2.60, 1.75, 1.70, 2.10],
    ]
)

_MOFFAT_BETAS = (1.5, 1.75, 2.0, 2.25, 2.5)
_SERSIC_NS = (1.0, 1.5, 2.0, 3.0, 4.0)


def _colour_offsets(table: np.ndarray, x: float) -> np.ndarray:
    """Return ``m_band - m_F555W`` (5 values) interpolated from a colour table at ``x``."""
    nuv_u, u_b, b_v, v_i = (float(np.interp(x, table[:, 0], table[:, j])) for j in range(1, 5))
    c_b = b_v
    c_u = u_b + b_v
    return np.array([c_u + nuv_u, c_u, c_b, 0.0, -v_i])


def ssp_colour_offsets(log_age: float) -> np.ndarray:
    """Intrinsic SSP colours of a cluster of a given age.

    Parameters
    ----------
    log_age : float
        log10 of the age in years (6-10; clipped to that range).

    Returns
    -------
    numpy.ndarray
        ``m_band - m_F555W`` for the five :data:`BANDS` (Vega, no reddening).
    """
    return _colour_offsets(_SSP_TABLE, float(np.clip(log_age, 6.0, 10.0)))


def star_colour_offsets(t: float) -> np.ndarray:
    """Intrinsic colours of a supergiant along a spectral-type parameter.

    Parameters
    ----------
    t : float
        0 for an O/early-B supergiant through 1 for an M supergiant.

    Returns
    -------
    numpy.ndarray
        ``m_band - m_F555W`` for the five :data:`BANDS` (Vega, no reddening).
    """
    return _colour_offsets(_STAR_TABLE, float(np.clip(t, 0.0, 1.0)))


# --------------------------------------------------------------------------------------
# configuration


def _bad(name: str, value: object, valid: str) -> ValueError:
    return ValueError(f"SimConfig.{name}={value!r} is invalid: {valid}")


@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate`.

    Parameters
    ----------
    size : int
        Stamp side in pixels (>= 8).
    class_fractions : tuple of 4 float
        Relative frequencies of classes 1-4 (non-negative, normalised internally).
    mag_range : tuple of 2 float
        F555W Vega magnitude range of the candidates (bright, faint). Saturated stars
        (4.4) are drawn 2-4.5 mag brighter than ``mag_range[0]``.
    crowding : float
        Mean number of unrelated neighbours per stamp (scaled per object by environment).
    background : float
        Scale of the smooth galaxy background (0 switches it off).
    sky : float
        Scale of the sky level :data:`SKY_E_PER_PIX` (0 switches it off).
    psf_fwhm_px : float
        FWHM of the F555W PSF in pixels (other bands scale with the WFC3/UVIS trend).
    artifact_fractions : tuple of (str, float)
        Relative frequencies of the Class 4 sub-classes (codes of :data:`SUBCLASS_NAMES`).
    read_noise : float
        Gaussian read noise, electrons per pixel.
    saturation_level : float
        Pixel values are clipped here (electrons); bleeding happens above it.
    noise : bool
        If False, no Poisson, read noise or random cosmic rays (noiseless model images).
    cosmic_ray_rate : float
        Probability per band and stamp of a residual cosmic ray somewhere in the stamp.
    lf_slope : float
        Luminosity-function slope ``a`` in ``dN/dm ~ 10**(a m)`` (0 = uniform in mag).
    jitter_px : float
        Maximum sub-pixel offset of the candidate from the stamp centre (each axis).
    """

    size: int = 32
    class_fractions: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    mag_range: tuple[float, float] = (20.5, 24.5)
    crowding: float = 1.0
    background: float = 1.0
    sky: float = 1.0
    psf_fwhm_px: float = 2.1
    artifact_fractions: tuple[tuple[str, float], ...] = DEFAULT_ARTIFACT_FRACTIONS
    read_noise: float = 3.0
    saturation_level: float = 70000.0
    noise: bool = True
    cosmic_ray_rate: float = 0.01
    lf_slope: float = 0.3
    jitter_px: float = 0.5

    def __post_init__(self) -> None:
        # accept lists (e.g. from YAML) but store tuples so the config stays hashable
        for name in ("class_fractions", "mag_range"):
            value = getattr(self, name)
            if isinstance(value, list | np.ndarray):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        af = self.artifact_fractions
        if isinstance(af, dict):
            af = tuple(af.items())
        if isinstance(af, list | tuple):
            try:
                af = tuple((str(k), float(w)) for k, w in af)
            except (TypeError, ValueError):
                raise _bad(
                    "artifact_fractions", self.artifact_fractions, "must be (code, weight) pairs"
                ) from None
            object.__setattr__(self, "artifact_fractions", af)
        _validate(self)


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _validate(c: SimConfig) -> None:
    if isinstance(c.size, bool) or not isinstance(c.size, int | np.integer) or c.size < 8:
        raise _bad("size", c.size, "must be an integer >= 8")
    cf = c.class_fractions
    if not isinstance(cf, tuple) or len(cf) != 4 or not all(_finite(v) for v in cf):
        raise _bad("class_fractions", cf, "must be 4 finite numbers for classes 1-4")
    if any(v < 0 for v in cf) or sum(cf) <= 0:
        raise _bad("class_fractions", cf, "must be non-negative with a positive sum")
    mr = c.mag_range
    if not isinstance(mr, tuple) or len(mr) != 2 or not all(_finite(v) for v in mr):
        raise _bad("mag_range", mr, "must be two finite magnitudes (bright, faint)")
    if not mr[0] < mr[1]:
        raise _bad("mag_range", mr, "must be (bright, faint) with bright < faint")
    for name in ("crowding", "background", "sky", "read_noise", "cosmic_ray_rate", "jitter_px"):
        v = getattr(c, name)
        if not _finite(v) or v < 0:
            raise _bad(name, v, "must be a finite number >= 0")
    if c.cosmic_ray_rate > 1:
        raise _bad("cosmic_ray_rate", c.cosmic_ray_rate, "must be a probability in [0, 1]")
    if not _finite(c.psf_fwhm_px) or not 0.8 <= c.psf_fwhm_px <= 0.25 * c.size + 2:
        raise _bad("psf_fwhm_px", c.psf_fwhm_px, f"must be in [0.8, {0.25 * c.size + 2:g}] px")
    if not _finite(c.saturation_level) or c.saturation_level <= 0:
        raise _bad("saturation_level", c.saturation_level, "must be a finite number > 0")
    if not _finite(c.lf_slope):
        raise _bad("lf_slope", c.lf_slope, "must be a finite number")
    af = c.artifact_fractions
    codes = [k for k, _ in af]
    unknown = [k for k in codes if k not in _ARTIFACT_CODES]
    if unknown:
        raise _bad("artifact_fractions", af, f"codes must be among {list(_ARTIFACT_CODES)}")
    ws = [w for _, w in af]
    if len(set(codes)) != len(codes) or not all(_finite(w) and w >= 0 for w in ws):
        raise _bad("artifact_fractions", af, "needs unique codes with finite weights >= 0")
    if cf[3] > 0 and sum(ws) <= 0:
        raise _bad("artifact_fractions", af, "weights must sum to > 0 when class 4 is drawn")


# --------------------------------------------------------------------------------------
# result


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes
    ----------
    images : numpy.ndarray
        float32 array ``[N, 5, size, size]`` in electrons per pixel (bands as in
        :data:`BANDS`, axes ``y, x``), background not subtracted, no-data pixels are 0.
    catalog : astropy.table.Table
        One row per stamp (see :func:`simulate` for the columns); ``meta`` holds the
        configuration, seed, bands and photometric constants.
    """

    images: np.ndarray
    catalog: Table = field(repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------
# deterministic rendering context (GalSim transforms, cached)


@functools.lru_cache(maxsize=32)
def _radial_ktable(kind: str, param: float) -> tuple[np.ndarray, np.ndarray]:
    """Fourier transform of a round unit profile along k (real, normalised to 1 at k=0).

    Moffat profiles have FWHM = 1, Sersic profiles half-light radius = 1.
    """
    import galsim

    if kind == "moffat":
        prof = galsim.Moffat(beta=param, fwhm=1.0)
    elif kind == "sersic":
        prof = galsim.Sersic(n=param, half_light_radius=1.0)
    else:  # pragma: no cover - internal
        raise KeyError(kind)
    q = np.concatenate([np.linspace(0.0, 20.0, 2001), np.linspace(20.1, 200.0, 1800)])
    k = np.array([prof.kValue(galsim.PositionD(float(x), 0.0)).real for x in q])
    k /= k[0]
    return q, k


def _sersic_fwhm_over_hlr(n: float) -> float:
    b = 2.0 * n - 1.0 / 3.0 + 0.009876 / n
    return 2.0 * (math.log(2.0) / b) ** n


@functools.lru_cache(maxsize=16)
def _band_psf(band_index: int, fwhm_px: float):
    """GalSim PSF (Airy x Gaussian, pixel units, pixel response NOT included) with a
    pixel-convolved FWHM of ``fwhm_px``."""
    import galsim

    lam_over_d_px = _WAVELENGTH_NM[band_index] * 1e-9 / 2.4 * 206264.806 / PIXEL_SCALE_ARCSEC
    airy = galsim.Airy(lam_over_diam=lam_over_d_px, obscuration=0.33)
    airy_fwhm = 1.028 * lam_over_d_px
    g = math.sqrt(max(fwhm_px**2 - airy_fwhm**2 - 0.6, (0.35 * fwhm_px) ** 2))
    psf = galsim.Convolve(airy, galsim.Gaussian(fwhm=g))
    pix = galsim.Pixel(1.0)
    for _ in range(3):  # rescale until the pixel-convolved FWHM matches
        im = galsim.Convolve(psf, pix).drawImage(nx=161, ny=161, scale=0.1, method="no_pixel")
        psf = psf.dilate(fwhm_px / im.calculateFWHM())
    return psf


@dataclass(frozen=True)
class _Context:
    size: int
    pad: int  # padded FFT size
    off: int  # offset of the stamp inside the padded grid
    kx: np.ndarray  # (P+1,) rad/px, 0 <= kx <= 2 pi
    ky: np.ndarray  # (2P,) rad/px, -2 pi <= ky < 2 pi
    kxx: np.ndarray  # (2P, P+1)
    kyy: np.ndarray
    otf: np.ndarray  # (5, 2P, P+1) complex: PSF x pixel transfer function
    psf_fwhm: np.ndarray  # (5,)
    yy: np.ndarray  # (size, size) pixel coordinates of the stamp
    xx: np.ndarray
    neg_rows: np.ndarray  # (2P, 1) row index of -ky
    fold_cols: np.ndarray  # (1, P/2+1) column index of 1 cycle/px - kx


@functools.lru_cache(maxsize=8)
def _context(size: int, psf_fwhm_px: float) -> _Context:
    P = size + 2 * max(8, size // 4)
    P += P % 2
    off = (P - size) // 2
    # Spectra live on the Fourier grid of a 2x over-sampled (0.5 px) image: |k| < 2 pi
    # rad/px covers the PSF x pixel transfer function, which is not band-limited below the
    # 1-px Nyquist frequency (WFC3/UVIS is under-sampled). Folding this spectrum onto the
    # P-grid is exactly the aliasing of sampling at pixel centres.
    # Only the kx >= 0 half-plane is computed (real images, Hermitian spectra).
    ky = 2.0 * np.pi * np.fft.fftfreq(2 * P, d=0.5)
    kx = 2.0 * np.pi * np.fft.rfftfreq(2 * P, d=0.5)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    fwhm = psf_fwhm_px * _PSF_FWHM_REL
    otf = np.empty((5, 2 * P, P + 1), dtype=np.complex128)
    import galsim

    pix = galsim.Pixel(1.0)
    for b in range(5):
        psf = galsim.Convolve(_band_psf(b, float(fwhm[b])), pix)
        im = psf.drawImage(nx=2 * P, ny=2 * P, scale=0.5, method="no_pixel", use_true_center=False)
        otf[b] = np.fft.rfft2(np.fft.ifftshift(im.array.astype(np.float64)))
        otf[b] /= otf[b][0, 0].real
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    neg_rows = (-np.arange(2 * P)) % (2 * P)
    fold_cols = P - np.arange(P // 2 + 1)
    return _Context(size, P, off, kx, ky, kxx, kyy, otf, fwhm, yy, xx, neg_rows[:, None], fold_cols[None, :])


# --------------------------------------------------------------------------------------
# object construction


@dataclass
class _Comp:
    """One source component: a point source (``kind=None``) or an extended profile."""

    x: float
    y: float
    flux: np.ndarray  # (5,) electrons
    kind: tuple[str, float] | None = None  # ("moffat", beta) or ("sersic", n)
    scale: float = 0.0  # FWHM (moffat) or half-light radius (sersic), px
    q: float = 1.0  # axis ratio b/a
    theta: float = 0.0  # position angle, rad


def _fluxes(mag_v: float, offsets: np.ndarray, ebv: float) -> np.ndarray:
    """Electrons per band of a source with F555W magnitude ``mag_v`` (already reddened)."""
    mags = mag_v + offsets + (_R_EXT - _R_EXT[_V]) * ebv
    return 10.0 ** (-0.4 * (mags - _ZP)) * _TEXP


def _draw_mag(rng: np.random.Generator, lo: float, hi: float, slope: float) -> float:
    u = rng.random()
    if abs(slope) < 1e-9:
        return lo + u * (hi - lo)
    a = slope
    return lo + math.log10(1.0 + u * (10.0 ** (a * (hi - lo)) - 1.0)) / a


def _draw_log_age(rng: np.random.Generator, weights: tuple[float, float, float, float]) -> float:
    w = np.asarray(weights, dtype=float)
    i = rng.choice(4, p=w / w.sum())
    return 6.0 + i + rng.random()


def _draw_ebv(rng: np.random.Generator, log_age: float) -> float:
    top = 0.5 if log_age < 7.0 else (0.3 if log_age < 8.0 else 0.15)
    return float(rng.uniform(0.0, top))


def _star_t(rng: np.random.Generator, blue_frac: float = 0.65) -> float:
    if rng.random() < blue_frac:
        return float(rng.uniform(0.0, 0.35))
    return float(rng.uniform(0.55, 1.0))


def _star_fluxes(rng: np.random.Generator, mag_v: float) -> tuple[np.ndarray, float]:
    ebv = float(rng.uniform(0.0, 0.3))
    return _fluxes(mag_v, star_colour_offsets(_star_t(rng)), ebv), ebv


def _beta(rng: np.random.Generator) -> float:
    return float(_MOFFAT_BETAS[rng.integers(len(_MOFFAT_BETAS))])


def _intrinsic_fwhm(fobs: float, fpsf: float) -> float:
    return math.sqrt(max(fobs**2 - fpsf**2, 0.09))


def _scatter(rng, n, radius, min_sep, centre):
    """``n`` positions in a disk, at least ``min_sep`` apart, light centre at ``centre``."""
    pts: list[np.ndarray] = []
    sep = min_sep
    tries = 0
    while len(pts) < n:
        r = radius * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * np.pi)
        p = np.array([r * math.cos(a), r * math.sin(a)])
        if all(np.hypot(*(p - o)) >= sep for o in pts):
            pts.append(p)
        tries += 1
        if tries > 300:  # very rare: relax and restart
            pts, tries, sep = [], 0, sep * 0.95
    arr = np.array(pts)
    return arr - arr.mean(axis=0) + np.asarray(centre)


def _cluster(rng, ctx, cfg, x0, y0, mag, round_: bool, age_w):
    """EFF (Moffat) cluster body; returns comps, log_age, ebv, fwhm_obs."""
    log_age = _draw_log_age(rng, age_w)
    ebv = _draw_ebv(rng, log_age)
    fpsf = float(ctx.psf_fwhm[_V])
    fobs = float(math.exp(rng.uniform(math.log(2.5), math.log(5.5))))
    fint = _intrinsic_fwhm(fobs, fpsf)
    q = float(rng.uniform(0.85, 1.0)) if round_ else float(rng.uniform(0.45, 0.8))
    comp = _Comp(
        x0, y0, _fluxes(mag, ssp_colour_offsets(log_age), ebv), ("moffat", _beta(rng)),
        fint, q, float(rng.uniform(0, np.pi)),
    )
    return [comp], log_age, ebv, math.sqrt(fint**2 + fpsf**2)


def _make_class1(rng, ctx, cfg, x0, y0, mag):
    comps, age, ebv, fw = _cluster(rng, ctx, cfg, x0, y0, mag, True, (0.06, 0.30, 0.44, 0.20))
    return comps, age, ebv, fw


def _make_class2(rng, ctx, cfg, x0, y0, mag):
    comps, age, ebv, fw = _cluster(rng, ctx, cfg, x0, y0, mag, False, (0.45, 0.30, 0.20, 0.05))
    body = comps[0]
    mode = rng.choice(3, p=[0.45, 0.35, 0.20])
    extra: list[_Comp] = []
    fv_total = body.flux[_V]
    if mode == 0:  # offset compact clump, younger
        frac = rng.uniform(0.15, 0.4)
        r, a = rng.uniform(1.5, 3.5), rng.uniform(0, 2 * np.pi)
        cage = max(6.0, age - rng.uniform(0.0, 1.0))
        cebv = _draw_ebv(rng, cage)
        mag_c = -2.5 * math.log10(frac) + mag
        extra.append(_Comp(
            x0 + r * math.cos(a), y0 + r * math.sin(a), _fluxes(mag_c, ssp_colour_offsets(cage), cebv),
            ("moffat", 2.5), float(rng.uniform(0.5, 1.5)),
        ))
    elif mode == 1:  # a few resolved bright stars on the body
        for _ in range(int(rng.integers(1, 4))):
            frac = rng.uniform(0.06, 0.2)
            r, a = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * np.pi)
            f, _ = _star_fluxes(rng, -2.5 * math.log10(frac) + mag)
            extra.append(_Comp(x0 + r * math.cos(a), y0 + r * math.sin(a), f))
    else:  # lopsided: a second offset diffuse component of the same population
        frac = rng.uniform(0.2, 0.5)
        r, a = rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)
        extra.append(_Comp(
            x0 + r * math.cos(a), y0 + r * math.sin(a), body.flux * frac, body.kind,
            body.scale * rng.uniform(0.8, 1.5), float(rng.uniform(0.4, 0.9)), float(rng.uniform(0, np.pi)),
        ))
    f_extra = sum(c.flux[_V] for c in extra)
    body.flux = body.flux * max(fv_total - f_extra, 0.3 * fv_total) / fv_total
    # keep the total F555W flux at ``mag``
    scale = fv_total / (body.flux[_V] + f_extra)
    for c in [body, *extra]:
        c.flux = c.flux * scale
    return [body, *extra], age, ebv, fw


def _make_class3(rng, ctx, cfg, x0, y0, mag):
    log_age = _draw_log_age(rng, (0.80, 0.18, 0.02, 0.0))
    ebv = _draw_ebv(rng, log_age)
    n = int(rng.integers(4, 7))
    pos = _scatter(rng, n, 4.8, 3.2, (x0, y0))
    fv = 10.0 ** (-0.4 * (mag - _ZP[_V])) * _TEXP[_V]
    diffuse = rng.uniform(0.1, 0.35)
    w = rng.uniform(0.4, 1.0, size=n)
    w = w / w.sum() * (1.0 - diffuse)
    comps = []
    for (px, py), wi in zip(pos, w):
        t = _star_t(rng, blue_frac=0.8)
        f = _fluxes(0.0, star_colour_offsets(t), ebv + rng.uniform(-0.05, 0.05))
        comps.append(_Comp(float(px), float(py), f / f[_V] * fv * wi))
    f = _fluxes(0.0, ssp_colour_offsets(log_age), ebv)
    comps.append(_Comp(x0, y0, f / f[_V] * fv * diffuse, ("moffat", 1.5), float(rng.uniform(4.0, 8.0)),
                       float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, np.pi))))
    fpsf = float(ctx.psf_fwhm[_V])
    return comps, log_age, ebv, fpsf


def _make_stars(rng, ctx, x0, y0, mag, n):
    """Single star, pair or triplet with its light centre at (x0, y0)."""
    fv = 10.0 ** (-0.4 * (mag - _ZP[_V])) * _TEXP[_V]
    if n == 1:
        pos = np.array([[x0, y0]])
        w = np.array([1.0])
    elif n == 2:
        w = np.array([1.0, rng.uniform(0.4, 1.0)])
        sep, a = rng.uniform(3.3, 5.5), rng.uniform(0, 2 * np.pi)
        u = np.array([math.cos(a), math.sin(a)])
        pos = np.array([[x0, y0]]) + np.outer([w[1] / w.sum(), -w[0] / w.sum()], u) * sep
    else:
        w = np.concatenate([[1.0], rng.uniform(1.0 / 3.0, 1.0, size=n - 1)])
        pos = _scatter(rng, n, 4.2, 3.2, (0.0, 0.0))
        pos = pos - (w[:, None] * pos).sum(0) / w.sum() + np.array([x0, y0])
    w = w / w.sum()
    comps, ebvs = [], []
    for (px, py), wi in zip(pos, w):
        f, e = _star_fluxes(rng, 0.0)
        comps.append(_Comp(float(px), float(py), f / f[_V] * fv * wi))
        ebvs.append(e)
    return comps, float(np.mean(ebvs)), float(ctx.psf_fwhm[_V])


def _make_galaxy(rng, ctx, x0, y0, mag):
    log_age = float(rng.uniform(9.3, 10.0))
    ebv = float(rng.uniform(0.1, 0.5))
    fv = 10.0 ** (-0.4 * (mag - _ZP[_V])) * _TEXP[_V]
    hlr = float(rng.uniform(2.5, 8.0))
    q, th = float(rng.uniform(0.25, 0.9)), float(rng.uniform(0, np.pi))
    n_s = float(_SERSIC_NS[rng.integers(len(_SERSIC_NS))])
    f = _fluxes(0.0, ssp_colour_offsets(log_age), ebv)
    if rng.random() < 0.5:
        comps = [_Comp(x0, y0, f / f[_V] * fv, ("sersic", n_s), hlr, q, th)]
        fint = _sersic_fwhm_over_hlr(n_s) * hlr
    else:  # red bulge + (slightly bluer) disk
        bt = float(rng.uniform(0.2, 0.6))
        fd = _fluxes(0.0, ssp_colour_offsets(log_age - 0.7), ebv)
        comps = [
            _Comp(x0, y0, f / f[_V] * fv * bt, ("sersic", 4.0), 0.3 * hlr, min(1.0, q + 0.3), th),
            _Comp(x0, y0, fd / fd[_V] * fv * (1 - bt), ("sersic", 1.0), hlr, q, th),
        ]
        fint = _sersic_fwhm_over_hlr(1.0) * hlr
    fpsf = float(ctx.psf_fwhm[_V])
    return comps, log_age, ebv, math.sqrt(fint**2 + fpsf**2)


def _cosmic_ray(rng, size, x0, y0, total) -> np.ndarray:
    """A sharp, un-convolved hit of ``total`` electrons near (x0, y0)."""
    img = np.zeros((size, size))
    ix, iy = int(round(x0)), int(round(y0))
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    if kind == 0:
        pix = [(iy, ix)]
    elif kind == 1:
        pix = [(iy, ix)] + [(iy + dy, ix + dx) for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 0), (0, -1))
                            if rng.random() < 0.45]
    else:
        length = int(rng.integers(3, 8))
        a = rng.uniform(0, 2 * np.pi)
        pix = sorted({(int(round(iy + s * math.sin(a))), int(round(ix + s * math.cos(a))))
                      for s in np.linspace(-length / 2, length / 2, 2 * length)})
    pix = [(y, x) for y, x in pix if 0 <= y < size and 0 <= x < size] or [(iy, ix)]
    w = rng.uniform(0.3, 1.0, size=len(pix))
    w[0] += 1.0  # one dominant pixel
    w /= w.sum()
    for (y, x), wi in zip(pix, w):
        img[y, x] += total * wi
    return img


def _spikes(ctx: _Context, x0: float, y0: float, theta: float) -> np.ndarray:
    """Diffraction-spike pattern (4 spikes) per unit flux, ``[5, size, size]``."""
    dx, dy = ctx.xx - x0, ctx.yy - y0
    out = np.zeros_like(ctx.xx)
    for phi in (theta, theta + 0.5 * np.pi):
        s = dx * math.cos(phi) + dy * math.sin(phi)
        t = -dx * math.sin(phi) + dy * math.cos(phi)
        out += np.exp(-0.5 * (t / 0.6) ** 2) / (1.0 + (s / 2.0) ** 2)
    amp = 0.004 * (_WAVELENGTH_NM / _WAVELENGTH_NM[_V])
    return amp[:, None, None] * out[None]


def _bleed(img: np.ndarray, sat: float) -> None:
    """Move charge above ``sat`` along columns (in place), like a CCD bleed trail."""
    cols = np.nonzero((img > sat).any(axis=0))[0]
    n = img.shape[0]
    for c in cols:
        col = img[:, c]
        over = col > sat
        excess = float((col[over] - sat).sum())
        col[over] = sat
        rows = np.nonzero(over)[0]
        up, down = rows.max() + 1, rows.min() - 1
        half = [excess / 2.0, excess / 2.0]
        for k, (r, step) in enumerate(((up, 1), (down, -1))):
            while half[k] > 0 and 0 <= r < n:
                room = sat - col[r]
                take = min(room, half[k]) if room > 0 else 0.0
                col[r] += take
                half[k] -= take
                r += step


def _render(ctx: _Context, comps: list[_Comp]) -> np.ndarray:
    """Noiseless PSF-convolved, pixel-integrated image ``[5, size, size]`` of components."""
    P = ctx.pad
    spec = np.zeros((5, 2 * P, P + 1), dtype=np.complex128)
    pts = [c for c in comps if c.kind is None]
    if pts:
        xs = np.array([c.x for c in pts]) + ctx.off
        ys = np.array([c.y for c in pts]) + ctx.off
        F = np.stack([c.flux for c in pts], axis=1)  # (5, C)
        ex = np.exp(-1j * xs[:, None] * ctx.kx[None, :])  # (C, P+1)
        ey = np.exp(-1j * ys[:, None] * ctx.ky[None, :])  # (C, 2P)
        spec += np.matmul(F[:, None, :] * ey.T[None, :, :], ex[None])  # (5, 2P, P+1)
    for c in comps:
        if c.kind is None:
            continue
        q_tab, k_tab = _radial_ktable(*c.kind)
        a, b = 1.0 / math.sqrt(c.q), math.sqrt(c.q)
        ct, st = math.cos(c.theta), math.sin(c.theta)
        k1 = a * (ct * ctx.kxx + st * ctx.kyy)
        k2 = b * (-st * ctx.kxx + ct * ctx.kyy)
        kk = np.sqrt(k1 * k1 + k2 * k2) * c.scale
        prof = np.interp(kk, q_tab, k_tab, right=0.0)
        phase = np.exp(-1j * (c.y + ctx.off) * ctx.ky)[:, None] * np.exp(-1j * (c.x + ctx.off) * ctx.kx)[None, :]
        spec += c.flux[:, None, None] * (prof * phase)[None]
    spec *= ctx.otf
    # Fold the over-sampled spectrum onto the P-grid (the aliasing of sampling at pixel
    # centres): X(ky, kx) + X(ky, kx - 1 cycle/px), the latter from the Hermitian
    # partner conj(X(-ky, 1 - kx)), then ky and ky - 1 cycle/px; one irfft per band.
    spec = spec[:, :, : P // 2 + 1] + np.conj(spec[:, ctx.neg_rows, ctx.fold_cols])
    spec = spec.reshape(5, 2, P, P // 2 + 1).sum(axis=1)
    img = np.fft.irfft2(spec, s=(P, P), axes=(-2, -1))
    o = ctx.off
    return img[:, o : o + ctx.size, o : o + ctx.size]


def _neighbours(rng, ctx, cfg, lam, x0, y0) -> list[_Comp]:
    n = int(rng.poisson(lam)) if lam > 0 else 0
    size = ctx.size
    rmin = min(6.0, 0.35 * size)
    fpsf = float(ctx.psf_fwhm[_V])
    out: list[_Comp] = []
    for _ in range(n):
        for _try in range(50):
            x, y = rng.uniform(-0.5, size - 0.5, size=2)
            if math.hypot(x - x0, y - y0) >= rmin:
                break
        else:
            continue
        mag = _draw_mag(rng, cfg.mag_range[0] - 0.5, cfg.mag_range[1] + 1.5, cfg.lf_slope)
        if rng.random() < 0.65:
            f, _ = _star_fluxes(rng, mag)
            out.append(_Comp(float(x), float(y), f))
        else:
            age = float(rng.uniform(6.0, 10.0))
            f = _fluxes(mag, ssp_colour_offsets(age), _draw_ebv(rng, age))
            fint = _intrinsic_fwhm(float(rng.uniform(2.4, 4.0)), fpsf)
            out.append(_Comp(float(x), float(y), f, ("moffat", 2.0), fint, float(rng.uniform(0.6, 1.0)),
                             float(rng.uniform(0, np.pi))))
    return out


def _background(rng, ctx, cfg) -> np.ndarray:
    """Smooth galaxy light ``[5, size, size]`` (electrons), faint blue disk to bright red bulge."""
    if cfg.background <= 0:
        return np.zeros((5, ctx.size, ctx.size))
    u = rng.random()
    level_v = cfg.background * 20.0 * 100.0**u
    age = 8.3 + 1.7 * u
    f = _fluxes(0.0, ssp_colour_offsets(age), 0.1)
    levels = level_v * f / f[_V]
    s = float(ctx.size)
    c = (s - 1) / 2
    gx, gy = rng.normal(0.0, 0.08, size=2)
    shape = 1.0 + gx * (ctx.xx - c) / s + gy * (ctx.yy - c) / s
    for _ in range(2):
        lam = rng.uniform(1.5, 4.0) * s
        a = rng.uniform(0, 2 * np.pi)
        k = 2 * np.pi / lam
        shape += rng.uniform(0.0, 0.08) * np.cos(k * (math.cos(a) * ctx.xx + math.sin(a) * ctx.yy)
                                                  + rng.uniform(0, 2 * np.pi))
    shape = np.maximum(shape, 0.05)
    return levels[:, None, None] * shape[None]


_ENV_WEIGHT = {"1": 0.6, "2": 1.2, "3": 1.4, "4.1": 0.8, "4.2": 1.3, "4.3": 1.3,
               "4.4": 0.5, "4.7": 0.5, "4.11": 0.8, "4.12": 0.8}


def _simulate_one(i: int, cfg: SimConfig, seed: int, ctx: _Context, cls_p, art_codes, art_p):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    size = cfg.size
    c = (size - 1) / 2.0
    cls = int(rng.choice(4, p=cls_p)) + 1
    sub = str(cls) if cls < 4 else str(art_codes[rng.choice(len(art_codes), p=art_p)])
    jit = cfg.jitter_px
    x0, y0 = c + rng.uniform(-jit, jit), c + rng.uniform(-jit, jit)
    lo, hi = cfg.mag_range
    mag = _draw_mag(rng, lo, hi, cfg.lf_slope)
    log_age, cr_img, spikes_theta, edge = math.nan, None, None, None

    if sub == "4.11":
        x0, y0 = c + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
    if sub == "4.4":
        mag = lo - float(rng.uniform(2.0, 4.5))

    if sub == "1" or (sub == "4.11" and rng.random() < 0.6):
        comps, log_age, ebv, fwhm = _make_class1(rng, ctx, cfg, x0, y0, mag)
    elif sub == "2":
        comps, log_age, ebv, fwhm = _make_class2(rng, ctx, cfg, x0, y0, mag)
    elif sub == "3":
        comps, log_age, ebv, fwhm = _make_class3(rng, ctx, cfg, x0, y0, mag)
    elif sub in ("4.1", "4.4", "4.11"):
        comps, ebv, fwhm = _make_stars(rng, ctx, x0, y0, mag, 1)
        if sub == "4.4":
            spikes_theta = float(rng.uniform(0, 0.5 * np.pi))
    elif sub == "4.2":
        comps, ebv, fwhm = _make_stars(rng, ctx, x0, y0, mag, 2)
    elif sub == "4.3":
        comps, ebv, fwhm = _make_stars(rng, ctx, x0, y0, mag, 3)
    elif sub == "4.7":
        comps, log_age, ebv, fwhm = _make_galaxy(rng, ctx, x0, y0, mag)
    elif sub == "4.12":
        comps, ebv, fwhm = [], 0.0, 1.0
        total = 10.0 ** (-0.4 * (mag - _ZP[_V])) * _TEXP[_V]
        cr_img = _cosmic_ray(rng, size, x0, y0, total)
    else:  # pragma: no cover - guarded by validation
        raise AssertionError(sub)

    if sub == "4.11":
        a = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(1.0, 6.0)
        if rng.random() < 0.6:
            bands = np.ones(5, dtype=bool)
        else:
            bands = np.zeros(5, dtype=bool)
            bands[rng.choice(5, size=int(rng.integers(1, 5)), replace=False)] = True
        edge = (a, d, bands)

    cand_flux = np.sum([cp.flux for cp in comps], axis=0) if comps else np.zeros(5)
    if cr_img is not None:
        cand_flux = np.full(5, np.nan)
        cand_flux[_V] = cr_img.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = _ZP - 2.5 * np.log10(cand_flux / _TEXP)

    lam = cfg.crowding * _ENV_WEIGHT[sub] * rng.gamma(2.0, 0.5)
    neigh = _neighbours(rng, ctx, cfg, lam, x0, y0)

    model = _render(ctx, comps + neigh)
    np.maximum(model, 0.0, out=model)
    if spikes_theta is not None:
        model += cand_flux[:, None, None] * _spikes(ctx, x0, y0, spikes_theta)
    bg = _background(rng, ctx, cfg)
    sky = (cfg.sky * _SKY)[:, None, None]
    model += bg + sky
    sat = cfg.saturation_level
    if model.max() > sat:
        for b in range(5):
            _bleed(model[b], sat)

    if cfg.noise:
        img = rng.poisson(model).astype(np.float64)
        img += rng.normal(0.0, cfg.read_noise, size=img.shape) if cfg.read_noise > 0 else 0.0
        if cfg.cosmic_ray_rate > 0:
            hits = rng.random(5) < cfg.cosmic_ray_rate
            for b in np.nonzero(hits)[0]:
                xr, yr = rng.uniform(0, size - 1, size=2)
                img[b] += _cosmic_ray(rng, size, xr, yr, float(rng.uniform(300.0, 5000.0)))
    else:
        img = model
    if cr_img is not None:
        img[_V] += cr_img
    np.minimum(img, sat, out=img)

    r2 = (ctx.xx - x0) ** 2 + (ctx.yy - y0) ** 2
    near = r2 <= 9.0
    saturated = bool((img[:, near] >= sat).any())

    ann = (r2 >= 49.0) & (r2 <= 64.0)
    if not ann.any():
        ann = np.ones_like(r2, dtype=bool)
    background = float(np.median(bg[_V][ann] + sky[_V, 0, 0]))

    nodata = 0.0
    if edge is not None:
        a, d, bands = edge
        outside = (ctx.xx - x0) * math.cos(a) + (ctx.yy - y0) * math.sin(a) > d
        img[bands] = np.where(outside[None], 0.0, img[bands])
        nodata = float(outside.mean() * bands.sum() / 5.0)

    row = dict(
        id=i, x=float(x0), y=float(y0), cls=cls, subclass=sub,
        **{f"mag_{b}": float(m) for b, m in zip(BANDS, mags)},
        log_age=float(log_age), ebv=float(ebv), fwhm_px=float(fwhm), n_neighbours=len(neigh),
        background=background, saturated=saturated, nodata_frac=nodata,
    )
    return img.astype(np.float32), row


_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("id", None, "stamp index 0..N-1"),
    ("x", "pix", "0-based x (column) of the candidate in the stamp"),
    ("y", "pix", "0-based y (row) of the candidate in the stamp"),
    ("cls", None, "main class: 1 symmetric cluster, 2 asymmetric cluster, 3 compact association, 4 artifact"),
    ("subclass", None, "PHANGS-HST sub-class code ('1', '2', '3', '4.1' star, '4.2' pair, ...)"),
    *((f"mag_{b}", "mag", f"true input {b} Vega magnitude of the candidate (NaN: no flux)") for b in BANDS),
    ("log_age", None, "log10(age/yr) of the SSP used for the colours (NaN for stars and bad pixels)"),
    ("ebv", "mag", "E(B-V) reddening applied (mean over stars for 4.1-4.4)"),
    ("fwhm_px", "pix", "approximate observed F555W FWHM put in: sqrt(intrinsic^2 + PSF^2)"),
    ("n_neighbours", None, "number of unrelated neighbours placed in the stamp"),
    ("background", "electron / pix", "median sky + galaxy background in F555W, 7-8 px annulus"),
    ("saturated", None, "a pixel within 3 px of the candidate is at the saturation level"),
    ("nodata_frac", None, "fraction of pixels x bands set to 0 as no-data (edge sub-class)"),
)


def _make_table(rows: list[dict], cfg: SimConfig, seed: int) -> Table:
    t = Table()
    for name, unit, desc in _COLUMNS:
        vals = [r[name] for r in rows]
        if name in ("id", "cls", "n_neighbours"):
            data = np.array(vals, dtype=np.int64)
        elif name == "subclass":
            data = np.array(vals, dtype="<U8")
        elif name == "saturated":
            data = np.array(vals, dtype=bool)
        else:
            data = np.array(vals, dtype=np.float64)
        t[name] = Column(data, unit=unit, description=desc)
    t.meta["config"] = jsonable(asdict(cfg))
    t.meta["seed"] = int(seed)
    t.meta["bands"] = list(BANDS)
    t.meta["sim_version"] = SIM_VERSION
    t.meta["pixel_scale_arcsec"] = PIXEL_SCALE_ARCSEC
    t.meta["zeropoints_vega"] = dict(ZEROPOINTS_VEGA)
    t.meta["exptime_s"] = dict(EXPTIME_S)
    t.meta["image_units"] = "electron / pix, background not subtracted, no-data = 0"
    t.meta["references"] = ["Whitmore et al. 2021, MNRAS 506, 5294", "Wei et al. 2020, MNRAS 493, 3178"]
    return t


def simulate(n: int, config: SimConfig = SimConfig(), seed: int = 0) -> SimResult:
    """Simulate ``n`` five-band cutouts of PHANGS-HST-like cluster candidates.

    Parameters
    ----------
    n : int
        Number of stamps (>= 0).
    config : SimConfig, optional
        Simulation parameters (validated).
    seed : int, optional
        Non-negative seed; object ``i`` uses the child seed ``SeedSequence(seed,
        spawn_key=(i,))``, so identical arguments give bit-identical output and the
        first objects do not depend on ``n``.

    Returns
    -------
    SimResult
        ``images`` float32 ``[n, 5, size, size]`` (electrons/pixel, bands in
        :data:`BANDS` order) and ``catalog`` with columns ``id, x, y, cls, subclass,
        mag_F275W ... mag_F814W, log_age, ebv, fwhm_px, n_neighbours, background,
        saturated, nodata_frac`` (units and descriptions on the columns; magnitudes are
        NaN in bands without flux, i.e. all but F555W for bad pixels; ``log_age`` is NaN
        for stars and bad pixels; ``meta`` has
        ``config``, ``seed``, ``bands`` and the photometric constants).

    Raises
    ------
    ValueError
        For a negative ``n`` or ``seed`` or an invalid ``config``.

    Examples
    --------
    >>> res = simulate(4, SimConfig(size=32), seed=1)
    >>> res.images.shape
    (4, 5, 32, 32)
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
    ctx = _context(int(config.size), float(config.psf_fwhm_px))
    cf = np.asarray(config.class_fractions, dtype=float)
    cls_p = cf / cf.sum()
    codes = [k for k, w in config.artifact_fractions if w > 0]
    ws = np.array([w for _, w in config.artifact_fractions if w > 0], dtype=float)
    art_p = ws / ws.sum() if ws.size else np.array([])
    images = np.empty((n, 5, config.size, config.size), dtype=np.float32)
    rows = []
    for i in range(n):
        images[i], row = _simulate_one(i, config, seed, ctx, cls_p, codes, art_p)
        rows.append(row)
    cat = _make_table(rows, config, seed)
    dt = time.perf_counter() - t0
    log.info("simulated %d stamps in %.2f s (%.0f /s)", n, dt, n / dt if dt > 0 else float("inf"))
    return SimResult(images=images, catalog=cat)


# --------------------------------------------------------------------------------------
# cache


def simulate_cached(n: int, config: SimConfig, seed: int, cache_dir: str | os.PathLike) -> SimResult:
    """Like :func:`simulate`, but stored in and re-loaded from ``cache_dir``.

    The entry is keyed by ``(n, config, seed, SIM_VERSION)`` through astrotl's one cache rule
    (:func:`astrotl.cache.cached_arrays`): written atomically, rebuilt if corrupt.

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

    def build():
        res = simulate(n, config, seed)
        return {"images": res.images}, {"catalog": res.catalog}

    def check(arrays, tables):
        expected = (int(n), 5, config.size, config.size)
        if arrays["images"].shape != expected or arrays["images"].dtype != np.float32 or len(tables["catalog"]) != n:
            raise ValueError("cache entry does not match its key")

    key = cache_key("phangs_sim", int(n), config, int(seed), SIM_VERSION, length=None)
    arrays, tables = cached_arrays(cache_dir, key, build, check=check, what=f"{n} simulated PHANGS stamps")
    return SimResult(images=arrays["images"], catalog=tables["catalog"])
