"""Seeded simulator of CANDELS-like and CLASH-like galaxy stamps with simulated visual-classification votes.

This module draws single-band HST stamps of galaxies of the kinds classified by the CANDELS
visual-morphology project (Kartaltepe et al. 2015) and by Perez-Carrasco et al. (2019, PASP 131,
108002; "Multiband galaxy morphologies for CLASH: a convolutional neural network transferred from
CANDELS"), together with the *vote fractions* a small panel of human classifiers would give them in
the five CANDELS classes ``spheroid, disk, irregular, point_source, unclassifiable``. It is meant
for pre-training, testing and benchmarking soft-label regressors when the real stamps are not at
hand; it is *not* a substitute for real data (see ``docs/clash.md``).

Two domains
-----------
``candels``
    The source domain: WFC3/IR F160W stamps from a GOODS-S-like mosaic (0.06 arcsec/px, PSF FWHM
    ~0.18 arcsec), three CANDELS depths (``deep``, ``wide``, ``ers``), one stamp per galaxy.
``clash``
    The target domain: the same kinds of galaxies (more spheroids: cluster members) through the 16
    CLASH filters F225W ... F160W (:data:`CLASH_BANDS`), one stamp per galaxy *and band*. The
    mosaics are on a common 0.065 arcsec/px grid (as the CLASH data products and the one real
    stamp in the shared folder), but each band keeps its own resolution and depth: the native
    pixel of its camera (WFC3/UVIS 0.04, ACS/WFC 0.05, WFC3/IR 0.13 arcsec) and the optical PSF
    (an obscured Airy pattern of the band's pivot wavelength) are part of the band's PSF, whose
    FWHM follows :data:`CLASH_BANDS`; the noise has the band's depth and, for WFC3/IR, is
    correlated over the native pixel (drizzling); the UV bands are the shallowest.

Galaxies (rendered once, coloured per band)
-------------------------------------------
Every galaxy is a sum of components, each with its own spectral energy distribution (SED,
:data:`SED_TEMPLATES`, colours relative to F160W in AB mag):

* ``spheroid``: a Sersic bulge with ``n`` in {3, 4}, old (red) SED, axis ratio 0.5-1;
* ``disk``: an exponential disk (intermediate SED) with a Sersic bulge (``n`` in {2, 3, 4}, bulge
  fraction 0-0.5 in F160W, old SED), in 40% of cases a bar (Sersic ``n = 0.5``, axis ratio
  0.2-0.35), in 65% two- to four-armed logarithmic spiral arms (a zero-mean modulation of the disk
  whose contrast grows towards the UV: young stars) and 2-8 star-forming clumps (Gaussians of
  0.02-0.06 arcsec, young SED) on the arms or in the disk carrying 2-12% of the F160W light.
  Because the clumps' SED is ~3 mag bluer in F225W-F160W than the disk's, they carry most of the
  UV light: the same disk looks smooth in F160W and clumpy (irregular) in F275W;
* ``irregular``: one to three offset, elongated exponential blobs with an intermediate-to-young
  SED plus 3-10 young clumps carrying 25-55% of the F160W light;
* ``point_source``: a star (colours along a hot-to-M-dwarf sequence) or a QSO (young-like SED).

F160W AB magnitudes are drawn from ``dN/dm ~ 10**(lf_slope m)`` within ``mag_range``
(``H < 24.5`` as in the paper), half-light radii from a log-normal size-magnitude relation per
kind. Colours get a per-galaxy stretch (0.75-1.25, a stand-in for redshift and age) and a
0.08 mag per-band scatter. Images are in nJy per pixel with the sky subtracted.

Stamps and framing
------------------
With ``framing="petrosian"`` (default, the paper's choice) the stamp side is
``petrosian_factor`` (4) times a Petrosian radius ``R_p = 2 sqrt(r_e**2 + (FWHM_F160W/2)**2)``
(clipped to ``side_range_arcsec``), resampled to ``size`` pixels, so the pixel scale differs from
galaxy to galaxy (but not from band to band); with ``framing="fixed"`` the stamp has the mosaic's
pixel scale. The galaxy sits at the stamp centre, 0-based pixel ``(size - 1) / 2``, with a
sub-pixel jitter. Unrelated faint neighbours are scattered in the outer stamp.

Rendering follows the PHANGS simulator: GalSim (Rowe et al. 2015) provides the Fourier transforms of
the Sersic profiles (n = 2, 3, 4; n = 1 and 0.5 are analytic) and of the Airy pattern, and measures
the PSF FWHM each band is tuned to (:func:`tune_psf_sigma`, stored in ``_PSF_TUNED``); each
component's transform (times a phase ramp) is computed once per galaxy, the per-band spectra are
one matrix product of the component fluxes with them, multiplied by the band's optical transfer
function (Airy x Gaussian x native pixel x mosaic pixel x stamp pixel) and inverse-FFT'd once per
band. Where some band's PSF has fewer than 2.5 pixels per FWHM, the spectra live on a 2x
over-sampled frequency grid and are folded (the aliasing of pixel sampling) before the inverse FFT.
Spiral arms are drawn in real space and Fourier-transformed once. Against direct GalSim drawing of
the same galaxy and PSF the stamps agree to better than 0.3% of the peak (light beyond the padded
grid wraps around, so galaxies much larger than the stamp agree less well). Noise (Gaussian sky of the band's depth,
correlated over the native pixel where it is larger than the stamp pixel, plus source Poisson noise)
is added with numpy.

Defects ("unclassifiable")
--------------------------
A fraction ``defect_rate`` of galaxies gets one defect: a ``cosmic_ray`` residual crossing the
galaxy (in a random subset of bands, most often in WFC3/UVIS), the diffraction ``spikes`` of a bright
star in the stamp, an ``edge`` of the mosaic footprint (the no-data side of the stamp is 0; in CLASH
often in one camera's bands only), or a ``blend`` with a comparably bright neighbour (with its own
colours, so it may vanish in some bands). Its per-band severity ``defect_weight`` in [0, 1] is the
contaminating flux inside the galaxy's aperture relative to the galaxy's own (the masked aperture
fraction for edges). Independently, a stamp is ``faint`` when its S/N is below 3. The stamp's
``true_type`` is ``unclassifiable`` when ``defect_weight >= 0.5`` or it is faint, else the galaxy's
``intrinsic_type``.

Votes
-----
:func:`vote_probabilities` gives the expected vote fractions of a stamp from what a classifier sees:
the intrinsic kind (a confusion row per kind), the bulge fraction of disks, the fraction of the
band's light in clumps (clumpy disks get irregular votes), the resolution ``r_e / FWHM`` (small
galaxies get spheroid and point-source votes), the S/N (faint disks lose their features to
spheroid votes, faint stamps get unclassifiable votes and all votes spread out) and the defect
weight. A panel of ``n_voters`` (drawn per galaxy in ``voters``, the same panel for all bands) then
votes: per stamp a Dirichlet-multinomial draw with concentration ``vote_concentration``
(:func:`sample_votes`). The catalogue keeps the expected fractions (``true_<class>``), the
sampled counts (``votes_<class>``) and fractions (``p_<class>``, the regression target).

All randomness comes from numpy: galaxy ``i`` of ``simulate(n, config, seed)`` uses the child seed
``SeedSequence(seed, spawn_key=(i,))``, so results are bit-identical for the same arguments and the
first ``m`` galaxies do not depend on ``n``. GalSim is only used for deterministic transforms.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Column, Table

from astrotl.cache import jsonable

__all__ = [
    "CANDELS_DEPTHS",
    "CLASH_BANDS",
    "CLASSES",
    "DEFECTS",
    "KINDS",
    "MOSAIC_SCALE_ARCSEC",
    "SED_TEMPLATES",
    "SIM_VERSION",
    "BandSpec",
    "SimConfig",
    "SimResult",
    "sample_votes",
    "simulate",
    "simulate_cached",
    "vote_probabilities",
]

log = logging.getLogger(__name__)

#: Version of the simulator; part of the cache key, bump when the output changes.
SIM_VERSION = "1.0.0"

#: The five CANDELS visual classes, in target order.
CLASSES: tuple[str, ...] = ("spheroid", "disk", "irregular", "point_source", "unclassifiable")
#: The physical kinds of simulated galaxies (the first four classes).
KINDS: tuple[str, ...] = CLASSES[:4]
#: Stamp defects (``faint`` is set from the S/N, the others are drawn).
DEFECTS: tuple[str, ...] = ("none", "faint", "cosmic_ray", "spikes", "edge", "blend")

#: Pixel scale of the simulated mosaics (arcsec/px): CANDELS 60 mas, CLASH 65 mas.
MOSAIC_SCALE_ARCSEC: dict[str, float] = {"candels": 0.06, "clash": 0.065}

_AB_NJY = 31.4  # AB magnitude of 1 nJy
_D_TELESCOPE_M = 2.4
_OBSCURATION = 0.33
_APERTURE_DEPTH_ARCSEC = 0.4  # depths are 5 sigma point-source limits in a 0.4" diameter aperture
_SNR_FAINT = 3.0


@dataclass(frozen=True)
class BandSpec:
    """One HST filter as simulated.

    Attributes
    ----------
    name : str
        Filter name, e.g. ``"F160W"``.
    camera : str
        ``"WFC3/UVIS"``, ``"ACS/WFC"`` or ``"WFC3/IR"``.
    pivot_nm : float
        Pivot wavelength (nm); sets the Airy pattern.
    native_arcsec : float
        Native detector pixel (arcsec): part of the PSF and the noise correlation length.
    fwhm_arcsec : float
        FWHM of the PSF in the drizzled mosaic (arcsec), approximate.
    depth_ab : float
        5-sigma point-source limit in a 0.4 arcsec diameter aperture (AB), approximate.
    zp_ab : float
        AB magnitude giving 1 electron/s (sets the source Poisson noise).
    exptime_s : float
        Exposure time (s).
    cr_weight : float
        Relative probability that a cosmic-ray residual hits this band.
    """

    name: str
    camera: str
    pivot_nm: float
    native_arcsec: float
    fwhm_arcsec: float
    depth_ab: float
    zp_ab: float
    exptime_s: float
    cr_weight: float


def _band(name, camera, pivot, fwhm, depth, zp, texp):
    native = {"WFC3/UVIS": 0.04, "ACS/WFC": 0.05, "WFC3/IR": 0.13}[camera]
    cr = {"WFC3/UVIS": 0.6, "ACS/WFC": 0.3, "WFC3/IR": 0.12}[camera]
    return BandSpec(name, camera, pivot, native, fwhm, depth, zp, texp, cr)


#: The 16 CLASH filters (Postman et al. 2012) in wavelength order. FWHM, depths, zero points and
#: exposure times are rounded, CLASH-like values (UV shallowest), not a calibration.
CLASH_BANDS: dict[str, BandSpec] = {b.name: b for b in (
    _band("F225W", "WFC3/UVIS", 237.0, 0.090, 25.6, 24.04, 3600.0),
    _band("F275W", "WFC3/UVIS", 271.0, 0.088, 25.7, 24.13, 3600.0),
    _band("F336W", "WFC3/UVIS", 335.0, 0.085, 26.0, 24.64, 2400.0),
    _band("F390W", "WFC3/UVIS", 392.0, 0.085, 27.0, 25.37, 2400.0),
    _band("F435W", "ACS/WFC", 431.0, 0.095, 26.8, 25.66, 2000.0),
    _band("F475W", "ACS/WFC", 474.0, 0.095, 27.2, 26.06, 2000.0),
    _band("F606W", "ACS/WFC", 592.0, 0.100, 27.2, 26.49, 2000.0),
    _band("F625W", "ACS/WFC", 631.0, 0.100, 26.8, 25.91, 2000.0),
    _band("F775W", "ACS/WFC", 769.0, 0.105, 26.6, 25.66, 2000.0),
    _band("F814W", "ACS/WFC", 806.0, 0.105, 27.0, 25.94, 4000.0),
    _band("F850LP", "ACS/WFC", 905.0, 0.110, 26.3, 24.86, 4000.0),
    _band("F105W", "WFC3/IR", 1055.0, 0.165, 27.0, 26.27, 2500.0),
    _band("F110W", "WFC3/IR", 1153.0, 0.170, 27.3, 26.82, 2500.0),
    _band("F125W", "WFC3/IR", 1249.0, 0.175, 27.0, 26.23, 2500.0),
    _band("F140W", "WFC3/IR", 1392.0, 0.180, 27.0, 26.45, 2300.0),
    _band("F160W", "WFC3/IR", 1537.0, 0.185, 26.9, 25.95, 5000.0),
)}

#: The CANDELS F160W band (GOODS-S-like mosaic); its depth is set per field (:data:`CANDELS_DEPTHS`).
CANDELS_BAND = _band("F160W", "WFC3/IR", 1537.0, 0.180, 27.0, 25.95, 5000.0)
#: Approximate F160W depths (5 sigma, 0.4" aperture, AB) of the three GOODS-S CANDELS tiers.
CANDELS_DEPTHS: dict[str, float] = {"deep": 27.3, "wide": 26.7, "ers": 26.9}

_CLASH_ORDER = tuple(CLASH_BANDS)

#: SED templates: AB colour ``m_band - m_F160W`` in the order of :data:`CLASH_BANDS`.
#: ``old`` (spheroids, bulges), ``disk`` (smooth stellar disk), ``young`` (star-forming clumps,
#: arms, QSOs), ``star_hot`` / ``star_cool`` (ends of the stellar sequence).
SED_TEMPLATES: dict[str, np.ndarray] = {
    "old": np.array([6.5, 6.0, 5.0, 4.1, 3.6, 3.3, 2.5, 2.2, 1.6, 1.5, 1.2, 0.75, 0.55, 0.40, 0.20, 0.0]),
    "disk": np.array([4.0, 3.7, 3.2, 2.8, 2.5, 2.3, 1.7, 1.5, 1.1, 1.0, 0.8, 0.50, 0.40, 0.25, 0.12, 0.0]),
    "young": np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.45, 0.4, 0.3, 0.3, 0.25, 0.15, 0.10, 0.08, 0.04, 0.0]),
    "star_hot": np.array([-0.6, -0.5, -0.4, -0.3, -0.3, -0.25, -0.2, -0.2, -0.1, -0.1, -0.05, 0.0, 0.0, 0.0, 0.0, 0.0]),
    "star_cool": np.array([9.0, 8.0, 6.5, 5.5, 4.6, 4.0, 2.8, 2.4, 1.4, 1.3, 1.0, 0.6, 0.5, 0.35, 0.2, 0.0]),
}

#: Domain defaults used where a :class:`SimConfig` field is ``None``.
DOMAIN_DEFAULTS: dict[str, dict] = {
    # CANDELS argmax mix of the real labels: disk 56%, spheroid 27%, irregular 9%, PS 5%, unc 2%.
    "candels": {"type_fractions": (0.20, 0.62, 0.13, 0.05), "defect_rate": 0.04, "voters": (4, 8), "lf_slope": 0.3},
    # cluster fields: many spheroidal members; real CLASH argmax mix: spheroid 49%, irr 18%, disk 16%,
    # unc 12%, PS 4% (irregular and unclassifiable votes come partly from the UV bands).
    # a flatter magnitude distribution: bright cluster members
    "clash": {"type_fractions": (0.50, 0.28, 0.17, 0.05), "defect_rate": 0.05, "voters": (5, 9), "lf_slope": 0.15},
}

# ------------------------------------------------------------------------------------------
# the vote model

_I = {c: i for i, c in enumerate(CLASSES)}
#: Expected votes for a perfect image of each kind (rows: spheroid, disk, irregular, point source).
BASE_VOTES = np.array([
    [0.86, 0.08, 0.03, 0.02, 0.01],
    [0.10, 0.80, 0.08, 0.01, 0.01],
    [0.04, 0.12, 0.81, 0.01, 0.02],
    [0.06, 0.01, 0.01, 0.90, 0.02],
])
#: Votes for an unresolved extended galaxy (compact: mostly spheroid, some point source).
UNRESOLVED_VOTES = np.array([0.64, 0.08, 0.05, 0.20, 0.03])
#: Votes for a faint, noisy blob: patchy light reads as irregular or smooth.
CONFUSED_VOTES = np.array([0.32, 0.13, 0.45, 0.05, 0.05])
_RES0 = 0.6  # r_e / FWHM at which half the votes of an extended galaxy become "unresolved" votes
_SNR_FEATURES = 8.0  # S/N at which disks lose a quarter of their disk votes (to spheroid and irregular)
_SNR_CONFUSED = 6.0  # S/N at which a quarter of the votes follow CONFUSED_VOTES
_SNR_UNCLASSIFIABLE = 3.0  # S/N at which half the votes are "unclassifiable"


def vote_probabilities(kind, snr, resolution, clump_frac, bulge_frac, defect_weight) -> np.ndarray:
    """Expected vote fractions of stamps, from what a visual classifier sees.

    Parameters
    ----------
    kind : array_like of int
        Index of the intrinsic kind in :data:`KINDS` (0 spheroid, 1 disk, 2 irregular, 3 point source).
    snr : array_like of float
        Signal-to-noise ratio of the galaxy in the stamp's band (aperture S/N).
    resolution : array_like of float
        Half-light radius over PSF FWHM in the stamp's band (0 for point sources).
    clump_frac : array_like of float
        Fraction of the band's light in star-forming clumps.
    bulge_frac : array_like of float
        Bulge-to-total flux ratio in the band (disks).
    defect_weight : array_like of float
        Severity of a defect in [0, 1] (0: none).

    Returns
    -------
    numpy.ndarray
        ``[..., 5]`` probabilities in :data:`CLASSES` order, each row summing to 1.

    Notes
    -----
    In order: the kind's row of :data:`BASE_VOTES`; disks mix in the spheroid row by
    ``bulge_frac**2`` and the irregular row by ``clip((clump_frac - 0.2) / 0.35, 0, 1)`` (a disk
    whose light is dominated by clumps looks irregular); extended kinds mix in
    :data:`UNRESOLVED_VOTES` by ``1 / (1 + (resolution / 0.6)**3)``; disks move
    ``0.5 / (1 + (snr / 8)**2)`` of their disk votes to spheroid (60%) and irregular (40%); a
    fraction ``0.5 / (1 + (snr / 6)**2)`` of the votes follows :data:`CONFUSED_VOTES`;
    ``1 / (1 + (snr / 3)**3)`` of the votes become unclassifiable; finally ``defect_weight`` of the
    votes become unclassifiable. The split of the votes therefore grows as the S/N falls.

    Examples
    --------
    >>> p = vote_probabilities([1, 1], [100.0, 3.0], [3.0, 3.0], [0.05, 0.05], [0.1, 0.1], [0.0, 0.0])
    >>> bool(p[0, 1] > 0.7 and p[1, 4] > p[0, 4])
    True
    """
    kind = np.asarray(kind, dtype=np.int64)
    snr = np.maximum(np.asarray(snr, dtype=float), 0.0)
    res = np.maximum(np.asarray(resolution, dtype=float), 0.0)
    clump = np.clip(np.asarray(clump_frac, dtype=float), 0.0, 1.0)
    bulge = np.clip(np.asarray(bulge_frac, dtype=float), 0.0, 1.0)
    dw = np.clip(np.asarray(defect_weight, dtype=float), 0.0, 1.0)
    kind, snr, res, clump, bulge, dw = np.broadcast_arrays(kind, snr, res, clump, bulge, dw)
    p = BASE_VOTES[kind].copy()
    is_disk = (kind == 1)[..., None]
    w_b = (bulge**2)[..., None]
    p = np.where(is_disk, (1 - w_b) * p + w_b * BASE_VOTES[0], p)
    a = np.clip((clump - 0.2) / 0.35, 0.0, 1.0)[..., None]
    p = np.where(is_disk, (1 - a) * p + a * BASE_VOTES[2], p)
    extended = (kind != 3)[..., None]
    u = (1.0 / (1.0 + (res / _RES0) ** 3))[..., None]
    p = np.where(extended, (1 - u) * p + u * UNRESOLVED_VOTES, p)
    moved = np.where(kind == 1, 0.5 / (1.0 + (snr / _SNR_FEATURES) ** 2), 0.0) * p[..., 1]
    p[..., 1] -= moved
    p[..., 0] += 0.6 * moved
    p[..., 2] += 0.4 * moved
    c = (0.5 / (1.0 + (snr / _SNR_CONFUSED) ** 2))[..., None]
    p = (1 - c) * p + c * CONFUSED_VOTES
    unc = np.zeros(5)
    unc[4] = 1.0
    phi = (1.0 / (1.0 + (snr / _SNR_UNCLASSIFIABLE) ** 3))[..., None]
    p = (1 - phi) * p + phi * unc
    d = dw[..., None]
    p = (1 - d) * p + d * unc
    return p / p.sum(-1, keepdims=True)


def sample_votes(rng: np.random.Generator, p: np.ndarray, n_voters, concentration: float) -> np.ndarray:
    """Vote counts of panels of classifiers: a Dirichlet-multinomial draw per row of ``p``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    p : numpy.ndarray
        ``[N, K]`` expected vote fractions (rows sum to 1).
    n_voters : int or array_like of int
        Panel size per row.
    concentration : float
        Dirichlet concentration: the per-stamp vote probabilities are ``Dirichlet(concentration
        * p)``, modelling classifiers who disagree more than independent draws would;
        ``inf`` gives plain multinomial draws.

    Returns
    -------
    numpy.ndarray
        ``[N, K]`` int64 counts; row ``i`` sums to ``n_voters[i]``.
    """
    p = np.atleast_2d(np.asarray(p, dtype=float))
    n = np.broadcast_to(np.asarray(n_voters, dtype=np.int64), (p.shape[0],))
    if math.isfinite(concentration):
        g = rng.gamma(np.maximum(concentration * p, 1e-3))
        q = g / g.sum(-1, keepdims=True)
    else:
        q = p
    q = q / q.sum(-1, keepdims=True)
    return rng.multinomial(n, q).astype(np.int64)


# ------------------------------------------------------------------------------------------
# configuration


def _bad(name: str, value: object, valid: str) -> ValueError:
    return ValueError(f"SimConfig.{name}={value!r} is invalid: {valid}")


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate`. ``None`` fields take the domain's default (:data:`DOMAIN_DEFAULTS`).

    Parameters
    ----------
    domain : {"candels", "clash"}
        CANDELS-like F160W stamps (one per galaxy) or CLASH-like stamps in ``bands``.
    size : int
        Stamp side in pixels (>= 12; the paper used 80).
    bands : tuple of str or None
        CLASH filters to draw (subset of :data:`CLASH_BANDS`, default all 16, kept in
        wavelength order); must be ``None`` or ``("F160W",)`` for ``candels``.
    type_fractions : tuple of 4 float or None
        Relative numbers of spheroids, disks, irregulars and point sources.
    mag_range : tuple of 2 float
        F160W AB magnitude range (bright, faint); the paper selects ``H < 24.5``.
    lf_slope : float or None
        ``dN/dm ~ 10**(lf_slope m)`` within ``mag_range`` (CANDELS 0.3, CLASH 0.15: bright members).
    defect_rate : float or None
        Fraction of galaxies with a defect (cosmic ray, spikes, edge or blend).
    framing : {"petrosian", "fixed"}
        Stamp side = ``petrosian_factor`` Petrosian radii resampled to ``size`` (the paper), or the
        mosaic pixel scale.
    petrosian_factor : float
        Stamp side in Petrosian radii (``framing="petrosian"``).
    side_range_arcsec : tuple of 2 float
        Limits of the stamp side (arcsec) with ``framing="petrosian"``.
    voters : tuple of 2 int or None
        Range (inclusive) of the panel size per galaxy.
    vote_concentration : float
        Dirichlet concentration of :func:`sample_votes` (``inf``: multinomial).
    neighbours : float
        Mean number of unrelated faint neighbours per stamp.
    depth_offset : float
        Magnitudes added to every band's depth (positive: deeper).
    noise : bool
        If False, noiseless images (defects are still drawn).
    jitter_px : float
        Maximum offset of the galaxy from the stamp centre (each axis, pixels).
    """

    domain: str = "candels"
    size: int = 64
    bands: tuple[str, ...] | None = None
    type_fractions: tuple[float, float, float, float] | None = None
    mag_range: tuple[float, float] = (18.0, 24.5)
    lf_slope: float | None = None
    defect_rate: float | None = None
    framing: str = "petrosian"
    petrosian_factor: float = 4.0
    side_range_arcsec: tuple[float, float] = (1.5, 12.0)
    voters: tuple[int, int] | None = None
    vote_concentration: float = 25.0
    neighbours: float = 0.5
    depth_offset: float = 0.0
    noise: bool = True
    jitter_px: float = 0.5

    def __post_init__(self) -> None:
        for name in ("bands", "type_fractions", "mag_range", "side_range_arcsec", "voters"):
            value = getattr(self, name)
            if isinstance(value, list | np.ndarray):
                object.__setattr__(self, name, tuple(value.tolist() if isinstance(value, np.ndarray) else value))
        if self.domain not in DOMAIN_DEFAULTS:
            raise _bad("domain", self.domain, f"must be one of {sorted(DOMAIN_DEFAULTS)}")
        defaults = DOMAIN_DEFAULTS[self.domain]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, tuple(value) if isinstance(value, tuple) else value)
        if self.bands is None:
            object.__setattr__(self, "bands", ("F160W",) if self.domain == "candels" else _CLASH_ORDER)
        elif isinstance(self.bands, str):
            object.__setattr__(self, "bands", (self.bands,))
        if isinstance(self.bands, tuple):
            object.__setattr__(self, "bands", tuple(str(b).upper() for b in self.bands))
            if self.domain == "clash" and all(b in CLASH_BANDS for b in self.bands) and \
                    len(set(self.bands)) == len(self.bands):
                object.__setattr__(self, "bands", tuple(b for b in _CLASH_ORDER if b in self.bands))
        if isinstance(self.voters, tuple):
            try:
                object.__setattr__(self, "voters", tuple(int(v) for v in self.voters))
            except (TypeError, ValueError):
                raise _bad("voters", self.voters, "must be two integers (min, max)") from None
        _validate(self)


def _validate(c: SimConfig) -> None:
    if isinstance(c.size, bool) or not isinstance(c.size, int | np.integer) or not 12 <= c.size <= 512:
        raise _bad("size", c.size, "must be an integer in [12, 512]")
    if c.domain == "candels":
        if tuple(c.bands) != ("F160W",):
            raise _bad("bands", c.bands, "must be ('F160W',) (or None) for domain 'candels'")
    else:
        unknown = [b for b in c.bands if b not in CLASH_BANDS]
        if not c.bands or unknown or len(set(c.bands)) != len(c.bands):
            raise _bad("bands", c.bands, f"must be distinct CLASH filters among {list(CLASH_BANDS)}")
    tf = c.type_fractions
    if not isinstance(tf, tuple) or len(tf) != 4 or not all(_finite(v) and v >= 0 for v in tf) or sum(tf) <= 0:
        raise _bad("type_fractions", tf, "must be 4 numbers >= 0 (spheroid, disk, irregular, point source), not all 0")
    mr = c.mag_range
    if not isinstance(mr, tuple) or len(mr) != 2 or not all(_finite(v) for v in mr) or not mr[0] < mr[1]:
        raise _bad("mag_range", mr, "must be (bright, faint) F160W AB magnitudes with bright < faint")
    if not _finite(c.lf_slope):
        raise _bad("lf_slope", c.lf_slope, "must be a finite number")
    if not _finite(c.defect_rate) or not 0 <= c.defect_rate <= 1:
        raise _bad("defect_rate", c.defect_rate, "must be a fraction in [0, 1]")
    if c.framing not in ("petrosian", "fixed"):
        raise _bad("framing", c.framing, "must be 'petrosian' or 'fixed'")
    if not _finite(c.petrosian_factor) or c.petrosian_factor <= 0:
        raise _bad("petrosian_factor", c.petrosian_factor, "must be a number > 0")
    sr = c.side_range_arcsec
    if not isinstance(sr, tuple) or len(sr) != 2 or not all(_finite(v) and v > 0 for v in sr) or sr[0] > sr[1]:
        raise _bad("side_range_arcsec", sr, "must be (min, max) stamp sides in arcsec, 0 < min <= max")
    v = c.voters
    if not isinstance(v, tuple) or len(v) != 2 or not 1 <= v[0] <= v[1] <= 1000:
        raise _bad("voters", v, "must be (min, max) panel sizes with 1 <= min <= max")
    if not (c.vote_concentration > 0) or math.isnan(float(c.vote_concentration)):
        raise _bad("vote_concentration", c.vote_concentration, "must be > 0 (inf: multinomial votes)")
    for name in ("neighbours", "jitter_px"):
        if not _finite(getattr(c, name)) or getattr(c, name) < 0:
            raise _bad(name, getattr(c, name), "must be a finite number >= 0")
    if not _finite(c.depth_offset):
        raise _bad("depth_offset", c.depth_offset, "must be a finite number")
    if not isinstance(c.noise, bool | np.bool_):
        raise _bad("noise", c.noise, "must be true or false")


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes
    ----------
    images : numpy.ndarray
        float32 ``[N, size, size]`` in nJy per pixel, sky subtracted, no-data pixels 0; one stamp per
        (galaxy, band), galaxy-major (all bands of galaxy 0, then galaxy 1, ...).
    catalog : astropy.table.Table
        One row per stamp (see :func:`simulate`); ``meta`` holds the configuration and constants.
    """

    images: np.ndarray
    catalog: Table = field(repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ------------------------------------------------------------------------------------------
# deterministic context (GalSim transforms, cached)


_Q_STEP = 0.02  # step of the uniform k tables (units of 1 / half-light radius)
_Q_MAX = 400.0


@functools.lru_cache(maxsize=16)
def _sersic_ktable(n: float) -> np.ndarray:
    """Fourier transform of a round Sersic profile of half-light radius 1 (1 at k=0), tabulated on a
    uniform grid ``k = 0, _Q_STEP, ..., _Q_MAX`` (GalSim's transform, resampled)."""
    import galsim

    prof = galsim.Sersic(n=float(n), half_light_radius=1.0)
    q = np.concatenate([np.linspace(0.0, 20.0, 1001), np.geomspace(20.2, _Q_MAX, 500)])
    k = np.array([prof.kValue(galsim.PositionD(float(x), 0.0)).real for x in q])
    return np.interp(np.arange(0.0, _Q_MAX + _Q_STEP, _Q_STEP), q, k / k[0])


def _lookup(table: np.ndarray, x: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation of a uniformly tabulated function at ``x >= 0`` (0 beyond the table)."""
    t = x * (1.0 / step)
    i = t.astype(np.int64)
    last = len(table) - 1
    beyond = i >= last
    np.minimum(i, last - 1, out=i)
    f = t - i
    out = table[i] * (1.0 - f) + table[i + 1] * f
    out[beyond] = 0.0
    return out


@functools.lru_cache(maxsize=1)
def _airy_ktable() -> tuple[np.ndarray, float]:
    """Transfer function of an obscured Airy pattern with lambda/D = 1 (cut-off at k = 2 pi), tabulated
    uniformly; returns ``(table, step)``."""
    import galsim

    prof = galsim.Airy(lam_over_diam=1.0, obscuration=_OBSCURATION)
    u = np.linspace(0.0, 2.0 * np.pi, 801)
    k = np.array([prof.kValue(galsim.PositionD(float(x), 0.0)).real for x in u])
    k[-1] = 0.0
    return np.maximum(k / k[0], 0.0), float(u[1] - u[0])


def _lam_over_d_arcsec(spec: BandSpec) -> float:
    return spec.pivot_nm * 1e-9 / _D_TELESCOPE_M * 206264.806


#: Gaussian sigma (arcsec) and resulting FWHM (arcsec) of each band's PSF, as found by
#: :func:`tune_psf_sigma` (stored because tuning all 16 bands with GalSim takes ~10 s).
_PSF_TUNED: dict[tuple[str, float], tuple[float, float]] = {
    ("F225W", 0.065): (0.02631, 0.08967),
    ("F275W", 0.065): (0.02423, 0.08763),
    ("F336W", 0.065): (0.02031, 0.08445),
    ("F390W", 0.065): (0.01906, 0.08456),
    ("F435W", 0.065): (0.02387, 0.09519),
    ("F475W", 0.065): (0.02333, 0.09567),
    ("F606W", 0.065): (0.02428, 0.09953),
    ("F625W", 0.065): (0.02380, 0.09949),
    ("F775W", 0.065): (0.02495, 0.10450),
    ("F814W", 0.065): (0.02436, 0.10464),
    ("F850LP", 0.065): (0.02594, 0.11054),
    ("F105W", 0.065): (0.03408, 0.16505),
    ("F110W", 0.065): (0.03712, 0.17159),
    ("F125W", 0.065): (0.03798, 0.17426),
    ("F140W", 0.065): (0.03904, 0.17947),
    ("F160W", 0.065): (0.03994, 0.18573),
    ("F160W", 0.06): (0.03594, 0.17971),
}


def tune_psf_sigma(spec: BandSpec, mosaic_arcsec: float) -> tuple[float, float]:
    """Gaussian sigma that makes a band's PSF reach its FWHM.

    The PSF is GalSim's ``Airy(lambda/D, obscuration=0.33)`` convolved with a Gaussian (charge
    diffusion, jitter, drizzle kernel), the native detector pixel and the mosaic pixel; the
    Gaussian's sigma is adjusted until the FWHM measured on a GalSim drawing is within 1% of
    ``spec.fwhm_arcsec``.

    Parameters
    ----------
    spec : BandSpec
        The band.
    mosaic_arcsec : float
        Pixel scale of the mosaic (arcsec).

    Returns
    -------
    sigma, fwhm : float
        The Gaussian's sigma and the FWHM reached, both in arcsec.
    """
    import galsim

    lam_d = _lam_over_d_arcsec(spec)
    parts = [galsim.Airy(lam_over_diam=lam_d, obscuration=_OBSCURATION), galsim.Pixel(spec.native_arcsec),
             galsim.Pixel(mosaic_arcsec)]
    target = spec.fwhm_arcsec

    def fwhm(sig: float) -> float:
        prof = galsim.Convolve(*parts, galsim.Gaussian(sigma=sig))
        im = prof.drawImage(nx=97, ny=97, scale=target / 16.0, method="no_pixel")
        return float(im.calculateFWHM())

    base = math.sqrt((1.028 * lam_d) ** 2 + 0.8 * spec.native_arcsec**2 + 0.8 * mosaic_arcsec**2)
    sig = math.sqrt(max(target**2 - base**2, (0.15 * target) ** 2)) / 2.3548
    got = fwhm(sig)
    for _ in range(3):
        if abs(got - target) < 0.01 * target:
            break
        sig = math.sqrt(max(sig**2 + (target**2 - got**2) / 2.3548**2, (0.005 * target) ** 2))
        got = fwhm(sig)
    return sig, got


def _psf_sigma(spec: BandSpec, mosaic_arcsec: float) -> tuple[float, float]:
    key = (spec.name, round(float(mosaic_arcsec), 4))
    if key in _PSF_TUNED and (spec == CLASH_BANDS.get(spec.name) or spec == CANDELS_BAND):
        return _PSF_TUNED[key]
    return tune_psf_sigma(spec, mosaic_arcsec)


@dataclass(frozen=True)
class _Grid:
    size: int
    pad: int  # side of the padded image grid (px)
    off: int  # offset of the stamp inside it
    ovs: int  # over-sampling of the Fourier grid (2: |k| < 2 pi, folded; 1: |k| < pi)
    kx: np.ndarray  # (ovs P / 2 + 1,) rad/px
    ky: np.ndarray  # (ovs P,) rad/px
    kxx2: np.ndarray  # kx^2 on the grid
    kyy2: np.ndarray  # ky^2
    kxy: np.ndarray  # kx ky
    kr: np.ndarray  # |k|
    neg_rows: np.ndarray
    fold_cols: np.ndarray
    p_rows: np.ndarray  # rows of the grid holding the rows of a P x P image's rfft
    pyy: np.ndarray  # (P, P) coordinates of the padded grid (px)
    pxx: np.ndarray
    yy: np.ndarray  # (size, size) stamp coordinates (px)
    xx: np.ndarray


@functools.lru_cache(maxsize=16)
def _grid(size: int, ovs: int) -> _Grid:
    P = size + 2 * max(6, size // 8)
    P += P % 2
    off = (P - size) // 2
    N = ovs * P
    ky = 2.0 * np.pi * np.fft.fftfreq(N, d=1.0 / ovs)
    kx = 2.0 * np.pi * np.fft.rfftfreq(N, d=1.0 / ovs)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    r = np.arange(P)
    p_rows = np.where(r < P // 2, r, r + N - P)
    pyy, pxx = np.mgrid[0:P, 0:P].astype(np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return _Grid(size, P, off, ovs, kx, ky, kxx * kxx, kyy * kyy, kxx * kyy, np.hypot(kxx, kyy),
                 ((-np.arange(N)) % N)[:, None], (P - np.arange(P // 2 + 1))[None, :], p_rows, pyy, pxx, yy, xx)


@dataclass(frozen=True)
class _Optics:
    """Per-band PSF parameters of a domain's band set."""

    specs: tuple[BandSpec, ...]
    mosaic: float
    lam_d: np.ndarray  # (B,) arcsec
    sigma: np.ndarray  # (B,) Gaussian sigma, arcsec
    fwhm: np.ndarray  # (B,) FWHM reached (arcsec)
    native: np.ndarray  # (B,)
    sed_index: np.ndarray  # (B,) column of the SED templates
    radial: np.ndarray  # (B, M) Airy x Gaussian transfer function on a uniform kappa grid (rad/arcsec)
    kappa_step: float


@functools.lru_cache(maxsize=16)
def _optics(domain: str, bands: tuple[str, ...]) -> _Optics:
    specs = (CANDELS_BAND,) if domain == "candels" else tuple(CLASH_BANDS[b] for b in bands)
    mosaic = MOSAIC_SCALE_ARCSEC[domain]
    tuned = [_psf_sigma(s, mosaic) for s in specs]
    lam_d = np.array([_lam_over_d_arcsec(s) for s in specs])
    sigma = np.array([t[0] for t in tuned])
    airy, u_step = _airy_ktable()
    kstep = 0.05
    kappa = np.arange(0.0, 2 * np.pi / lam_d.min() + 2 * kstep, kstep)
    radial = np.stack([_lookup(airy, kappa * lam_d[b], u_step) * np.exp(-0.5 * (sigma[b] * kappa) ** 2)
                       for b in range(len(specs))])
    return _Optics(specs, mosaic, lam_d, sigma, np.array([t[1] for t in tuned]),
                   np.array([s.native_arcsec for s in specs]),
                   np.array([_CLASH_ORDER.index(s.name) for s in specs]), radial, kstep)


def _otf(grid: _Grid, optics: _Optics, scale: float) -> np.ndarray:
    """Optical transfer function ``[B, 2P, P+1]`` (real) for stamp pixels of ``scale`` arcsec."""
    kappa = grid.kr * (1.0 / scale)  # rad / arcsec
    t = kappa * (1.0 / optics.kappa_step)
    i = t.astype(np.int64)
    last = optics.radial.shape[1] - 1
    beyond = i >= last
    np.minimum(i, last - 1, out=i)
    f = t - i
    radial = optics.radial[:, i] * (1.0 - f) + optics.radial[:, i + 1] * f
    radial[:, beyond] = 0.0
    two_pi = 2 * np.pi
    sx_pix = np.sinc(grid.kx / two_pi)
    sy_pix = np.sinc(grid.ky / two_pi)
    sx_mos = np.sinc(grid.kx * (optics.mosaic / scale / two_pi))
    sy_mos = np.sinc(grid.ky * (optics.mosaic / scale / two_pi))
    for b in range(len(optics.specs)):
        w = optics.native[b] / scale / two_pi
        sx = sx_pix * sx_mos * np.sinc(grid.kx * w)
        sy = sy_pix * sy_mos * np.sinc(grid.ky * w)
        radial[b] *= sy[:, None]
        radial[b] *= sx[None, :]
    return radial


# ------------------------------------------------------------------------------------------
# galaxy construction (arcsec, offsets from the galaxy centre)


@dataclass
class _Sersic:
    n: float
    hlr: float  # arcsec (geometric-mean half-light radius)
    q: float
    theta: float
    dx: float  # arcsec
    dy: float
    flux: np.ndarray  # (B,) nJy


@dataclass
class _Gauss:
    sigma: float  # arcsec (0: point source)
    dx: float
    dy: float
    flux: np.ndarray


@dataclass
class _Arms:
    hlr: float  # of the host disk (arcsec)
    q: float
    theta: float
    m: int
    pitch: float  # rad
    phase: float
    flux: np.ndarray  # (B,) amplitude x disk flux per band


@dataclass
class _Galaxy:
    kind: int
    mag_h: float
    r_e: float  # arcsec, the main component's half-light radius (0 for point sources)
    n: float
    q: float
    sersic: list = field(default_factory=list)
    gauss: list = field(default_factory=list)
    arms: list = field(default_factory=list)
    bulge_flux: np.ndarray | None = None
    clump_flux: np.ndarray | None = None
    has_bar: bool = False


def _sed(rng: np.random.Generator, name: str, stretch: float, idx: np.ndarray) -> np.ndarray:
    """``10**(-0.4 colour)`` per band: flux relative to F160W."""
    col = SED_TEMPLATES[name][idx] * stretch + rng.normal(0.0, 0.08, size=len(idx)) * (idx != 15)
    return 10.0 ** (-0.4 * col)


def _star_sed(rng, idx, t: float) -> np.ndarray:
    col = (1 - t) * SED_TEMPLATES["star_hot"][idx] + t * SED_TEMPLATES["star_cool"][idx]
    return 10.0 ** (-0.4 * col)


def _draw_mag(rng: np.random.Generator, lo: float, hi: float, slope: float) -> float:
    u = rng.random()
    if abs(slope) < 1e-9:
        return lo + u * (hi - lo)
    return lo + math.log10(1.0 + u * (10.0 ** (slope * (hi - lo)) - 1.0)) / slope


def _size(rng, kind: int, mag: float) -> float:
    median = {0: 0.25, 1: 0.45, 2: 0.40}[kind]
    return float(median * 10.0 ** (-0.08 * (mag - 22.0) + rng.normal(0.0, 0.2)))


def _make_galaxy(rng: np.random.Generator, kind: int, mag: float, idx: np.ndarray) -> _Galaxy:
    f_h = 10.0 ** (-0.4 * (mag - _AB_NJY))
    stretch = float(rng.uniform(0.75, 1.25))
    B = len(idx)
    zero = np.zeros(B)
    if kind == 3:  # point source: star or QSO
        if rng.random() < 0.3:
            sed = _sed(rng, "young", stretch, idx)
        else:
            sed = _star_sed(rng, idx, float(rng.uniform(0.2, 1.0)))
        return _Galaxy(kind, mag, 0.0, 0.0, 1.0, gauss=[_Gauss(0.0, 0.0, 0.0, f_h * sed)], bulge_flux=zero,
                       clump_flux=zero)
    r_e = _size(rng, kind, mag)
    theta = float(rng.uniform(0, np.pi))
    if kind == 0:
        n = float(rng.choice([3.0, 4.0]))
        q = float(rng.uniform(0.5, 1.0))
        flux = f_h * _sed(rng, "old", stretch, idx)
        return _Galaxy(kind, mag, r_e, n, q, sersic=[_Sersic(n, r_e, q, theta, 0.0, 0.0, flux)], bulge_flux=flux,
                       clump_flux=zero)
    if kind == 1:
        q = float(max(rng.uniform(0.15, 1.0), 0.15))
        bt = float(rng.uniform(0.0, 0.5))
        fc = float(rng.uniform(0.02, 0.12))
        has_bar = bool(rng.random() < 0.4)
        fbar = float(rng.uniform(0.05, 0.15)) if has_bar else 0.0
        fdisk = max(1.0 - bt - fc - fbar, 0.05)
        sed_disk = _sed(rng, "disk", stretch, idx)
        sed_old = _sed(rng, "old", stretch, idx)
        sed_young = _sed(rng, "young", stretch, idx)
        nb = float(rng.choice([2.0, 3.0, 4.0]))
        bulge = f_h * bt * sed_old
        g = _Galaxy(kind, mag, r_e, 1.0, q, bulge_flux=bulge, has_bar=has_bar)
        g.sersic.append(_Sersic(1.0, r_e, q, theta, 0.0, 0.0, f_h * fdisk * sed_disk))
        if bt > 0:
            g.sersic.append(_Sersic(nb, r_e * float(rng.uniform(0.15, 0.3)), min(1.0, q + 0.4), theta, 0.0, 0.0,
                                    bulge))
        if has_bar:
            bar_flux = f_h * fbar * 0.5 * (sed_old + sed_disk)
            g.sersic.append(_Sersic(0.5, r_e * float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.2, 0.35)),
                                    theta + float(rng.uniform(-1.2, 1.2)), 0.0, 0.0, bar_flux))
        n_clumps = int(rng.integers(2, 9))
        w = rng.uniform(0.3, 1.0, size=n_clumps)
        w = w / w.sum() * fc
        h = r_e / 1.6783
        if rng.random() < 0.65:
            m = int(rng.choice([2, 2, 3, 4]))
            pitch = float(np.deg2rad(rng.uniform(12.0, 28.0)))
            phase = float(rng.uniform(0, 2 * np.pi))
            amp_h = float(rng.uniform(0.2, 0.5))
            # arms host young stars: their contrast grows where the young SED outshines the disk's
            amp = np.minimum(amp_h * (1.0 + 0.35 * np.maximum(-2.5 * np.log10(sed_disk / sed_young), 0.0)), 0.95)
            g.arms.append(_Arms(r_e, q, theta, m, pitch, phase, f_h * fdisk * sed_disk * amp))
            rr = h * rng.uniform(0.6, 3.0, size=n_clumps)
            arm = rng.integers(0, m, size=n_clumps)
            phi = np.log(rr / h) / math.tan(pitch) - phase / m + 2 * np.pi * arm / m + rng.normal(0, 0.15, n_clumps)
        else:
            rr = h * rng.uniform(0.3, 2.5, size=n_clumps)
            phi = rng.uniform(0, 2 * np.pi, size=n_clumps)
        u = rr / math.sqrt(q) * np.cos(phi)
        v = rr * math.sqrt(q) * np.sin(phi)
        ct, st = math.cos(theta), math.sin(theta)
        for j in range(n_clumps):
            g.gauss.append(_Gauss(float(rng.uniform(0.02, 0.06)), float(ct * u[j] - st * v[j]),
                                  float(st * u[j] + ct * v[j]), f_h * w[j] * sed_young))
        g.clump_flux = f_h * fc * sed_young
        return g
    # irregular
    fc = float(rng.uniform(0.25, 0.55))
    sed_body = 0.5 * (_sed(rng, "disk", stretch, idx) + _sed(rng, "young", stretch, idx))
    sed_young = _sed(rng, "young", stretch, idx)
    g = _Galaxy(kind, mag, r_e, 1.0, float(rng.uniform(0.3, 0.9)), bulge_flux=zero)
    n_body = int(rng.integers(1, 4))
    wb = rng.uniform(0.4, 1.0, size=n_body)
    wb = wb / wb.sum() * (1.0 - fc)
    for j in range(n_body):
        off = rng.normal(0.0, 0.45 * r_e, size=2) if j else np.zeros(2)
        g.sersic.append(_Sersic(1.0, r_e * float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.25, 0.9)),
                                float(rng.uniform(0, np.pi)), float(off[0]), float(off[1]), f_h * wb[j] * sed_body))
    n_clumps = int(rng.integers(3, 11))
    w = rng.uniform(0.3, 1.0, size=n_clumps)
    w = w / w.sum() * fc
    pos = rng.normal(0.0, 0.7 * r_e, size=(n_clumps, 2))
    for j in range(n_clumps):
        g.gauss.append(_Gauss(float(rng.uniform(0.02, 0.07)), float(pos[j, 0]), float(pos[j, 1]),
                              f_h * w[j] * sed_young))
    g.clump_flux = f_h * fc * sed_young
    return g


# ------------------------------------------------------------------------------------------
# rendering


def _arms_image(grid: _Grid, arms: _Arms, x: float, y: float, scale: float) -> np.ndarray:
    """Unit-amplitude spiral modulation of an exponential disk on the padded grid (flux per px)."""
    dx, dy = grid.pxx - (x + grid.off), grid.pyy - (y + grid.off)
    ct, st = math.cos(arms.theta), math.sin(arms.theta)
    u = ct * dx + st * dy
    v = -st * dx + ct * dy
    q = arms.q
    r = np.sqrt(q * u * u + v * v / q) + 1e-6
    h = arms.hlr / 1.6783 / scale
    disk = np.exp(-r / h) / (2 * np.pi * h * h)
    phi = np.arctan2(v / math.sqrt(q), u * math.sqrt(q))
    wave = 0.5 * (1.0 + np.cos(arms.m * (phi - np.log(r / h) / math.tan(arms.pitch)) + arms.phase))
    mod = wave**3 / 0.3125 - 1.0
    return disk * mod * (1.0 - np.exp(-((r / (0.7 * h)) ** 2)))


def _profile(grid: _Grid, c: _Sersic, scale: float) -> np.ndarray:
    """Real Fourier transform of a centred elliptical Sersic component on the over-sampled grid."""
    a2, b2 = 1.0 / c.q, c.q
    ct, st = math.cos(c.theta), math.sin(c.theta)
    r = c.hlr / scale
    k2 = ((a2 * ct * ct + b2 * st * st) * grid.kxx2 + (2.0 * ct * st * (a2 - b2)) * grid.kxy
          + (a2 * st * st + b2 * ct * ct) * grid.kyy2) * (r * r)
    if c.n == 1.0:  # exponential: (1 + (k h)^2)^-3/2, h = r_e / 1.6783
        x = 1.0 + k2 * (1.0 / 1.6783**2)
        return 1.0 / (x * np.sqrt(x))
    if c.n == 0.5:  # Gaussian, sigma = r_e / 1.1774
        return np.exp(k2 * (-0.5 / 1.1774**2))
    return _lookup(_sersic_ktable(c.n), np.sqrt(k2), _Q_STEP)


def _phase(grid: _Grid, x: float, y: float) -> np.ndarray:
    return np.exp(-1j * (y + grid.off) * grid.ky)[:, None] * np.exp(-1j * (x + grid.off) * grid.kx)[None, :]


def _spectrum(grid: _Grid, comps_s, comps_g, comps_a, x0: float, y0: float, scale: float, B: int) -> np.ndarray:
    """Sum of the components' Fourier transforms, ``[B, 2P, P+1]`` complex (before the PSF)."""
    P = grid.pad
    spec = np.zeros((B,) + grid.kr.shape, dtype=np.complex128)
    if comps_g:
        xs = np.array([x0 + grid.off + c.dx / scale for c in comps_g])
        ys = np.array([y0 + grid.off + c.dy / scale for c in comps_g])
        sig = np.array([c.sigma / scale for c in comps_g])
        F = np.stack([c.flux for c in comps_g], axis=1)  # (B, C)
        ex = np.exp(-0.5 * (sig[:, None] * grid.kx[None]) ** 2 - 1j * xs[:, None] * grid.kx[None])  # (C, P+1)
        ey = np.exp(-0.5 * (sig[:, None] * grid.ky[None]) ** 2 - 1j * ys[:, None] * grid.ky[None])  # (C, 2P)
        spec += np.matmul(F[:, None, :] * ey.T[None], ex[None])
    groups: dict[tuple[float, float], np.ndarray] = {}
    for c in comps_s:  # components sharing a centre share one phase ramp
        prof = _profile(grid, c, scale)
        key = (c.dx, c.dy)
        if key in groups:
            groups[key] += c.flux[:, None, None] * prof[None]
        else:
            groups[key] = c.flux[:, None, None] * prof[None]
    for (dx, dy), real in groups.items():
        spec += real * _phase(grid, x0 + dx / scale, y0 + dy / scale)[None]
    for arms in comps_a:
        img = _arms_image(grid, arms, x0, y0, scale)
        small = np.fft.rfft2(img)  # (P, P/2+1) on the 1-px grid: |k| < pi
        if grid.ovs == 1:
            unit = small
        else:
            unit = np.zeros(grid.kr.shape, dtype=np.complex128)
            unit[grid.p_rows, : P // 2 + 1] = small
        spec += arms.flux[:, None, None] * unit[None]
    return spec


def _to_image(grid: _Grid, spec: np.ndarray) -> np.ndarray:
    """Fold an over-sampled spectrum onto the pixel grid (aliasing) and inverse-FFT: ``[B, size, size]``."""
    P = grid.pad
    if grid.ovs == 2:
        spec = spec[:, :, : P // 2 + 1] + np.conj(spec[:, grid.neg_rows, grid.fold_cols])
        spec = spec.reshape(spec.shape[0], 2, P, P // 2 + 1).sum(axis=1)
    img = np.fft.irfft2(spec, s=(P, P), axes=(-2, -1))
    o = grid.off
    return img[:, o: o + grid.size, o: o + grid.size]


def _spikes(grid: _Grid, xs: float, ys: float, theta: float, fwhm_px: np.ndarray, length_px: float) -> np.ndarray:
    """Four diffraction spikes per unit spike flux, ``[B, size, size]`` (flux per pixel)."""
    dx, dy = grid.xx - xs, grid.yy - ys
    out = np.zeros((len(fwhm_px),) + dx.shape)
    w = np.maximum(fwhm_px / 2.3548, 0.4)[:, None, None]
    for phi in (theta, theta + 0.5 * np.pi):
        s = dx * math.cos(phi) + dy * math.sin(phi)
        t = -dx * math.sin(phi) + dy * math.cos(phi)
        along = length_px / (np.pi * (length_px**2 + s * s))
        out += np.exp(-0.5 * (t[None] / w) ** 2) / (w * math.sqrt(2 * np.pi)) * along[None]
    return out


def _track(grid: _Grid, rng, x0: float, y0: float, length_px: float, width_px: float) -> np.ndarray:
    """A cosmic-ray residual: a sharp, un-convolved track through (x0, y0), peak 1 (``[size, size]``)."""
    a = rng.uniform(0, np.pi)
    dx, dy = grid.xx - x0, grid.yy - y0
    s = dx * math.cos(a) + dy * math.sin(a)
    t = -dx * math.sin(a) + dy * math.cos(a)
    shift = rng.uniform(-0.5, 0.5) * length_px
    img = np.exp(-0.5 * (t / max(width_px, 0.35)) ** 2) * (np.abs(s - shift) < 0.5 * length_px)
    img *= rng.uniform(0.5, 1.0, size=img.shape)
    return img


def _noise_sigma(optics: _Optics, depth: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky noise per stamp pixel (nJy) and its correlation length (stamp px) per band."""
    f_lim = 10.0 ** (-0.4 * (depth - _AB_NJY))
    area = np.pi * (0.5 * _APERTURE_DEPTH_ARCSEC) ** 2
    cell = np.maximum(optics.native, optics.mosaic)
    sigma_cell = f_lim / 5.0 * cell / math.sqrt(area)
    ratio = scale / cell
    return sigma_cell * ratio * np.minimum(1.0, ratio), cell / scale


def _correlate(white: np.ndarray, length: float) -> np.ndarray:
    """Box-correlate white noise over ``length`` px keeping the per-pixel variance (wrap-around)."""
    k = int(round(length))
    if k < 2:
        return white
    c = np.cumsum(np.pad(white, ((k, 0), (k, 0)), mode="wrap"), axis=0)
    c = c[k:] - c[:-k]
    c = np.cumsum(c, axis=1)
    c = c[:, k:] - c[:, :-k]
    return c / k


def _simulate_galaxy(i: int, cfg: SimConfig, seed: int, optics: _Optics, type_p: np.ndarray):
    """Render galaxy ``i`` in all bands: ``(images [B, size, size], catalogue columns)`` (votes come later)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    size = cfg.size
    B = len(optics.specs)
    idx = optics.sed_index
    kind = int(rng.choice(4, p=type_p))
    mag = _draw_mag(rng, cfg.mag_range[0], cfg.mag_range[1], cfg.lf_slope)
    gal = _make_galaxy(rng, kind, mag, idx)
    field_name = "cluster"
    if cfg.domain == "candels":
        field_name = str(rng.choice(list(CANDELS_DEPTHS)))
        depth = np.array([CANDELS_DEPTHS[field_name]]) + cfg.depth_offset
    else:
        depth = np.array([s.depth_ab for s in optics.specs]) + cfg.depth_offset
    fwhm = optics.fwhm
    fwhm_h = CANDELS_BAND.fwhm_arcsec if cfg.domain == "candels" else CLASH_BANDS["F160W"].fwhm_arcsec
    r_obs_h = math.sqrt(gal.r_e**2 + (0.5 * fwhm_h) ** 2)
    if cfg.framing == "petrosian":
        side = float(np.clip(cfg.petrosian_factor * 2.0 * r_obs_h, *cfg.side_range_arcsec))
        scale = side / size
    else:
        scale = optics.mosaic
    c = (size - 1) / 2.0
    x0, y0 = c + rng.uniform(-cfg.jitter_px, cfg.jitter_px), c + rng.uniform(-cfg.jitter_px, cfg.jitter_px)

    # unrelated faint neighbours in the outer stamp (rendered with the galaxy)
    half = 0.5 * size * scale  # arcsec
    extra_s, extra_g = [], []
    for _ in range(int(rng.poisson(cfg.neighbours)) if cfg.neighbours > 0 else 0):
        r = rng.uniform(0.55, 1.0) * half * math.sqrt(2)
        a = rng.uniform(0, 2 * np.pi)
        nx, ny = r * math.cos(a), r * math.sin(a)
        f = 10.0 ** (-0.4 * (mag + rng.uniform(1.0, 4.0) - _AB_NJY))
        sed = _sed(rng, str(rng.choice(["old", "disk", "young"])), float(rng.uniform(0.75, 1.25)), idx)
        if max(abs(nx), abs(ny)) > half * 1.1:
            continue
        if rng.random() < 0.3:
            extra_g.append(_Gauss(0.0, nx, ny, f * sed))
        else:
            extra_s.append(_Sersic(1.0, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.3, 1.0)),
                                   float(rng.uniform(0, np.pi)), nx, ny, f * sed))

    # the defect (its contamination is rendered apart, to weigh it against the galaxy)
    defect = "none"
    if rng.random() < cfg.defect_rate:
        defect = str(rng.choice(["cosmic_ray", "spikes", "edge", "blend"], p=[0.2, 0.2, 0.25, 0.35]))
    cont_s, cont_g = [], []
    star = None
    if defect == "blend":
        sep = rng.uniform(0.4, 1.2) * r_obs_h
        a = rng.uniform(0, 2 * np.pi)
        ratio = rng.uniform(0.3, 1.2)
        other = _make_galaxy(rng, int(rng.choice([0, 1, 3], p=[0.45, 0.45, 0.10])), mag - 2.5 * math.log10(ratio), idx)
        for comp in other.sersic + other.gauss:
            comp.dx += sep * math.cos(a)
            comp.dy += sep * math.sin(a)
        cont_s, cont_g = other.sersic, other.gauss
    elif defect == "spikes":
        theta_sp = float(rng.uniform(0, 0.5 * np.pi))
        d = rng.uniform(0.45, 0.9) * half
        e = rng.uniform(-0.4, 0.4) * r_obs_h
        sx = d * math.cos(theta_sp) - e * math.sin(theta_sp)
        sy = d * math.sin(theta_sp) + e * math.cos(theta_sp)
        f_star = 10.0 ** (-0.4 * (rng.uniform(15.0, 18.0) - _AB_NJY)) * _star_sed(rng, idx, float(rng.uniform(0.0, 0.7)))
        star = (sx, sy, theta_sp, f_star)
        extra_g.append(_Gauss(0.0, sx, sy, f_star))

    # a PSF sampled by >= 2.5 px has no power beyond the pixel Nyquist frequency worth folding back
    grid = _grid(size, 1 if fwhm.min() / scale >= 2.5 else 2)
    otf = _otf(grid, optics, scale)
    if extra_s or extra_g:  # render the galaxy alone for its photometry only when it has company
        model_gal = _to_image(grid, _spectrum(grid, gal.sersic, gal.gauss, gal.arms, x0, y0, scale, B) * otf)
        model = model_gal + _to_image(grid, _spectrum(grid, extra_s, extra_g, [], x0, y0, scale, B) * otf)
    else:
        model_gal = _to_image(grid, _spectrum(grid, gal.sersic, gal.gauss, gal.arms, x0, y0, scale, B) * otf)
        model = model_gal.copy()
    contam = None
    if cont_s or cont_g:
        contam = _to_image(grid, _spectrum(grid, cont_s, cont_g, [], x0, y0, scale, B) * otf)
    elif star is not None:
        sx, sy, theta_sp, f_star = star
        # each spike carries ~0.5% of the star's light at 800 nm, growing with wavelength (diffraction)
        k = 0.005 * np.array([s.pivot_nm for s in optics.specs]) / 800.0
        contam = (f_star * k)[:, None, None] * _spikes(grid, x0 + sx / scale, y0 + sy / scale, theta_sp,
                                                         fwhm / scale, 1.5 / scale)
    if contam is not None:
        model += contam

    # photometry of the galaxy: aperture radius 1.5 sqrt(r_e^2 + (FWHM/2)^2), at least 0.1"
    r_ap = np.maximum(1.5 * np.sqrt(gal.r_e**2 + (0.5 * fwhm) ** 2), 0.1)  # arcsec (B,)
    r2 = ((grid.xx - x0) ** 2 + (grid.yy - y0) ** 2) * scale**2
    ap = r2[None] <= (r_ap**2)[:, None, None]  # (B, size, size)
    n_ap = np.maximum(ap.sum(axis=(1, 2)), 1)
    f_ap = np.maximum(np.einsum("bij,bij->b", model_gal, ap), 0.0)
    f_lim = 10.0 ** (-0.4 * (depth - _AB_NJY))
    sky_ap = f_lim / 5.0 * np.sqrt(n_ap * scale**2 / (np.pi * (0.5 * _APERTURE_DEPTH_ARCSEC) ** 2))
    gain = np.array([s.exptime_s * 10.0 ** (0.4 * (s.zp_ab - _AB_NJY)) for s in optics.specs])  # e- per nJy
    snr = f_ap / np.sqrt(sky_ap**2 + f_ap / gain)
    weight = np.zeros(B)
    if contam is not None:
        weight = np.clip(1.5 * np.einsum("bij,bij->b", np.abs(contam), ap) / np.maximum(f_ap, 1e-30), 0.0, 0.95)

    sigma, corr = _noise_sigma(optics, depth, scale)
    if cfg.noise:
        poisson = np.maximum(model, 0.0) / gain[:, None, None]
        white = rng.standard_normal((B, size, size))
        if (corr < 1.5).all():
            img = model + np.sqrt(sigma[:, None, None] ** 2 + poisson) * white
        else:
            for b in range(B):
                white[b] = _correlate(white[b], corr[b])
            img = model + sigma[:, None, None] * white + np.sqrt(poisson) * rng.standard_normal((B, size, size))
    else:
        img = model

    if defect == "cosmic_ray":
        pw = np.array([s.cr_weight for s in optics.specs])
        hit = rng.random(B) < pw
        if not hit.any():
            hit[int(rng.choice(B, p=pw / pw.sum()))] = True
        for b in np.nonzero(hit)[0]:
            jx, jy = rng.normal(0, 0.3, size=2) * r_obs_h / scale
            tr = _track(grid, rng, x0 + jx, y0 + jy, float(rng.uniform(0.4, 1.2)) / scale,
                        optics.native[b] / scale / 2.3548)
            peak = rng.uniform(15.0, 60.0) * sigma[b]
            img[b] += peak * tr
            weight[b] = min(0.95, 1.5 * peak * float((tr * ap[b]).sum()) / max(f_ap[b], 1e-30))
    elif defect == "edge":
        if cfg.domain == "clash" and rng.random() < 0.6:
            cams = sorted({s.camera for s in optics.specs})
            cam = str(rng.choice(cams))
            bands_hit = np.array([s.camera == cam for s in optics.specs])
        else:
            bands_hit = np.ones(B, dtype=bool)
        a = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(-0.3, 1.2) * r_obs_h / scale
        outside = (grid.xx - x0) * math.cos(a) + (grid.yy - y0) * math.sin(a) > d
        img[bands_hit] = np.where(outside[None], 0.0, img[bands_hit])
        frac = (ap & outside[None]).sum(axis=(1, 2)) / n_ap
        weight = np.where(bands_hit, np.clip(0.2 * outside.any() + 2.0 * frac, 0.0, 1.0), 0.0)

    defect_b = np.where(weight > 0, defect, "none").astype("<U12")
    faint = snr < _SNR_FAINT
    defect_b = np.where((defect_b == "none") & faint, "faint", defect_b)
    true_type = np.where((weight >= 0.5) | faint, "unclassifiable", KINDS[kind])

    tot = np.maximum(_total_flux(gal), 1e-30)
    n_vot = int(rng.integers(cfg.voters[0], cfg.voters[1] + 1))
    rows = dict(
        galaxy=np.full(B, i), band=np.array([s.name for s in optics.specs]), kind=np.full(B, kind),
        intrinsic_type=np.full(B, KINDS[kind]), true_type=true_type, defect=defect_b, defect_weight=weight,
        mag=_AB_NJY - 2.5 * np.log10(tot), mag_f160w=np.full(B, mag), snr=snr, depth=depth,
        r_e_arcsec=np.full(B, gal.r_e), r_e_px=np.full(B, gal.r_e / scale), sersic_n=np.full(B, gal.n),
        axis_ratio=np.full(B, gal.q), bulge_frac=np.clip(gal.bulge_flux / tot, 0, 1),
        clump_frac=np.clip(gal.clump_flux / tot, 0, 1), has_arms=np.full(B, bool(gal.arms)),
        has_bar=np.full(B, gal.has_bar), fwhm_arcsec=fwhm, fwhm_px=fwhm / scale, pixel_scale=np.full(B, scale),
        x=np.full(B, x0), y=np.full(B, y0), field=np.full(B, field_name), n_voters=np.full(B, n_vot),
    )
    return img.astype(np.float32), rows


def _votes(parts: list[dict], cfg: SimConfig, seed: int) -> None:
    """Expected and sampled votes of all stamps (vectorised model; galaxy ``i``'s panel draws from
    ``SeedSequence(seed, spawn_key=(i, 1))``, so they too do not depend on ``n``)."""
    if not parts:
        return
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("kind", "snr", "r_e_arcsec", "fwhm_arcsec",
                                                               "clump_frac", "bulge_frac", "defect_weight")}
    p = vote_probabilities(cat["kind"], cat["snr"], cat["r_e_arcsec"] / cat["fwhm_arcsec"], cat["clump_frac"],
                           cat["bulge_frac"], cat["defect_weight"])
    start = 0
    for part in parts:
        B = len(part["band"])
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(part["galaxy"][0]), 1)))
        part["expected"] = p[start: start + B]
        part["votes"] = sample_votes(rng, part["expected"], part["n_voters"], cfg.vote_concentration)
        start += B


def _total_flux(gal: _Galaxy) -> np.ndarray:
    tot = 0.0
    for c in gal.sersic:
        tot = tot + c.flux
    for c in gal.gauss:
        tot = tot + c.flux
    return np.asarray(tot, dtype=float)


_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("galaxy", None, "galaxy index 0..n-1 within this simulation"),
    ("band", None, "filter of the stamp"),
    ("intrinsic_type", None, "physical kind: spheroid, disk, irregular or point_source"),
    ("true_type", None, "unclassifiable if defect_weight >= 0.5 or S/N < 3, else intrinsic_type"),
    ("defect", None, "none, faint (S/N < 3), cosmic_ray, spikes, edge or blend (affecting this band)"),
    ("defect_weight", None, "severity of the defect in this band, 0-1 (contaminating / galaxy aperture flux)"),
    ("mag", "mag", "total AB magnitude of the galaxy in this band"),
    ("mag_f160w", "mag", "total F160W AB magnitude (the selection magnitude)"),
    ("snr", None, "aperture S/N of the galaxy in this band (radius 1.5 sqrt(r_e^2 + (FWHM/2)^2))"),
    ("depth", "mag", "5-sigma point-source depth of the band in a 0.4 arcsec aperture (AB)"),
    ("r_e_arcsec", "arcsec", "half-light radius of the main component (0 for point sources)"),
    ("r_e_px", "pix", "half-light radius in stamp pixels"),
    ("sersic_n", None, "Sersic index of the main component (0 for point sources)"),
    ("axis_ratio", None, "axis ratio b/a of the main component"),
    ("bulge_frac", None, "fraction of the band's light in the bulge (spheroids: 1)"),
    ("clump_frac", None, "fraction of the band's light in star-forming clumps"),
    ("has_arms", None, "the disk has spiral arms"),
    ("has_bar", None, "the disk has a bar"),
    ("fwhm_arcsec", "arcsec", "PSF FWHM of the band (mosaic)"),
    ("fwhm_px", "pix", "PSF FWHM in stamp pixels"),
    ("pixel_scale", "arcsec / pix", "stamp pixel scale"),
    ("x", "pix", "0-based x (column) of the galaxy centre in the stamp"),
    ("y", "pix", "0-based y (row) of the galaxy centre in the stamp"),
    ("field", None, "CANDELS depth tier (deep, wide, ers); 'cluster' for CLASH"),
    ("n_voters", None, "size of the simulated panel of classifiers"),
)


def _make_table(parts: list[dict], cfg: SimConfig, seed: int, optics: _Optics) -> Table:
    t = Table()
    cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.array([]) for k in (parts[0] if parts else {})}
    n = sum(len(p["band"]) for p in parts)
    for name, unit, desc in _COLUMNS:
        data = cat.get(name, np.array([]))
        if name in ("galaxy", "n_voters"):
            data = np.asarray(data, dtype=np.int64)
        elif name in ("band", "intrinsic_type", "true_type", "defect", "field"):
            data = np.asarray(data, dtype=str) if n else np.array([], dtype="<U1")
        elif name in ("has_arms", "has_bar"):
            data = np.asarray(data, dtype=bool)
        else:
            data = np.asarray(data, dtype=np.float64)
        t[name] = Column(data, unit=unit, description=desc)
    votes = cat.get("votes", np.zeros((0, 5), dtype=np.int64)).reshape(-1, 5)
    expected = cat.get("expected", np.zeros((0, 5))).reshape(-1, 5)
    nv = np.maximum(votes.sum(axis=1, keepdims=True), 1)
    for j, c in enumerate(CLASSES):
        t[f"p_{c}"] = Column(votes[:, j] / nv[:, 0], description=f"fraction of the panel voting {c} (the target)")
    for j, c in enumerate(CLASSES):
        t[f"votes_{c}"] = Column(votes[:, j].astype(np.int64), description=f"number of votes for {c}")
    for j, c in enumerate(CLASSES):
        t[f"true_{c}"] = Column(expected[:, j], description=f"expected vote fraction for {c} (vote model)")
    # non-finite floats (vote_concentration=inf) as strings, so that the metadata stays valid JSON
    t.meta["config"] = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
                        for k, v in jsonable(cfg).items()}
    t.meta["seed"] = int(seed)
    t.meta["classes"] = list(CLASSES)
    t.meta["bands"] = [s.name for s in optics.specs]
    t.meta["sim_version"] = SIM_VERSION
    t.meta["mosaic_scale_arcsec"] = optics.mosaic
    t.meta["psf_fwhm_arcsec"] = {s.name: round(float(f), 4) for s, f in zip(optics.specs, optics.fwhm)}
    t.meta["image_units"] = "nJy / pix, sky subtracted, no-data = 0"
    t.meta["references"] = ["Perez-Carrasco et al. 2019, PASP 131, 108002", "Kartaltepe et al. 2015, ApJS 221, 11",
                            "Postman et al. 2012, ApJS 199, 25"]
    return t


def simulate(n: int, config: SimConfig = SimConfig(), seed: int = 0) -> SimResult:
    """Simulate ``n`` galaxies as single-band stamps with simulated votes.

    Parameters
    ----------
    n : int
        Number of galaxies (>= 0); the result has ``n * len(config.bands)`` stamps.
    config : SimConfig, optional
        Simulation parameters (validated).
    seed : int, optional
        Non-negative seed; galaxy ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.

    Returns
    -------
    SimResult
        ``images`` float32 ``[n * B, size, size]`` (nJy/px, galaxy-major: the ``B`` bands of galaxy 0
        in wavelength order, then galaxy 1, ...) and ``catalog``, one row per stamp, with columns
        ``galaxy, band, intrinsic_type, true_type, defect, defect_weight, mag, mag_f160w, snr, depth,
        r_e_arcsec, r_e_px, sersic_n, axis_ratio, bulge_frac, clump_frac, has_arms, has_bar,
        fwhm_arcsec, fwhm_px, pixel_scale, x, y, field, n_voters``, then ``p_<class>`` (sampled vote
        fractions, the target), ``votes_<class>`` (counts) and ``true_<class>`` (expected fractions)
        for the five :data:`CLASSES`.

    Raises
    ------
    ValueError
        For a negative ``n`` or ``seed`` or an invalid ``config``.

    Examples
    --------
    >>> res = simulate(2, SimConfig(domain="clash", size=24, bands=("F275W", "F814W")), seed=1)
    >>> res.images.shape, [str(b) for b in res.catalog["band"]]
    ((4, 24, 24), ['F275W', 'F814W', 'F275W', 'F814W'])
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
    optics = _optics(config.domain, tuple(config.bands))
    tf = np.asarray(config.type_fractions, dtype=float)
    type_p = tf / tf.sum()
    B = len(optics.specs)
    images = np.empty((n * B, config.size, config.size), dtype=np.float32)
    parts = []
    for i in range(n):
        images[i * B: (i + 1) * B], rows = _simulate_galaxy(i, config, seed, optics, type_p)
        parts.append(rows)
    _votes(parts, config, seed)
    cat = _make_table(parts, config, seed, optics)
    dt = time.perf_counter() - t0
    log.info("simulated %d galaxies (%d stamps) in %.2f s (%.0f stamps/s)", n, n * B, dt,
             n * B / dt if dt > 0 else float("inf"))
    return SimResult(images=images, catalog=cat)


# ------------------------------------------------------------------------------------------
# cache


def cache_key(n: int, config: SimConfig, seed: int) -> str:
    """The name of the cache entry of ``(n, config, seed, SIM_VERSION)`` (:func:`astrotl.cache.cache_key`)."""
    from astrotl.cache import cache_key as _key

    return _key("clash_sim", int(n), config, int(seed), SIM_VERSION, length=None)


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
    """
    from astrotl.cache import cached_arrays

    if not isinstance(config, SimConfig):
        raise ValueError(f"config={config!r} is invalid: must be a SimConfig")
    _validate(config)

    def build():
        res = simulate(n, config, seed)
        return {"images": res.images}, {"catalog": res.catalog}

    def check(arrays, tables):
        expected = (int(n) * len(config.bands), config.size, config.size)
        images = arrays["images"]
        if images.shape != expected or images.dtype != np.float32 or len(tables["catalog"]) != expected[0]:
            raise ValueError("cache entry does not match its key")

    arrays, tables = cached_arrays(cache_dir, cache_key(n, config, seed), build, check=check,
                                   what=f"{n} simulated CANDELS/CLASH galaxies")
    return SimResult(images=arrays["images"], catalog=tables["catalog"])
