"""The 92 clumpy Galaxy Zoo: Hubble Stripe 82 galaxies of Mehta et al. (2021, ApJ 912, 49).

The shared folder ``gzh_s82_clumps`` holds ``clumps.csv`` (one row per clump: galaxy and
clump sky positions, offsets in arcsec east and north of the galaxy centre, ...) and
``images/objID<20-digit id>.jpg`` (424 x 424 RGB JPEGs, the GZ:Hubble subject images).
The JPEGs carry no WCS and their pixel scale (the Galaxy Zoo convention
``0.02 petroR90_r`` arcsec/px; petroR90 is not in the catalogue) is not recorded, so turning
clump sky positions into pixels needs a calibration. What can be done honestly:

* **Centre**: Galaxy Zoo cutouts are centred on the galaxy: pixel ``((W-1)/2, (H-1)/2)``.
* **Orientation**: north up, east left (``x = xc - dx_east / s``, ``y = yc - dy_north / s``
  in array coordinates, row 0 at the top). Established on all 92 galaxies, not assumed:
  (1) the parity of the JPEG's major axis against the catalogue's ``gal_theta`` (which is
  only defined modulo 90 deg) -- 62 % of 52 elongated galaxies agree within 10 deg with the
  mirror-free mapping against 21 % with the mirrored one; (2) the elongation of each
  galaxy's clump pattern against the JPEG major axis -- median misalignment 16 deg for
  north-up/east-left (or its 180 deg turn) against 74 deg for the 90 deg turns (42
  galaxies); (3) the mean high-pass image value (noise units) at the clump positions, with
  one global scale factor, picks north-up/east-left (0.69) over the 180 deg turn (0.44)
  and the six other mappings (<= 0.55); for 20 random rotations of the clump patterns it
  has mean 0.39 and maximum 0.52.
* **Scale**: only approximate. The prior is ``s = ALPHA x gal_sma / sma_jpeg`` (arcsec/px;
  ``sma_jpeg`` the second-moment semi-major axis of the central segment in the JPEG,
  ``ALPHA = 1.4`` fitted globally on the 92 galaxies: the JPEG's asinh stretch makes the
  light moments larger than in the linear FITS images that ``gal_sma`` comes from). A per
  galaxy refinement searches ``0.6-1.67 x`` the prior for the scale that puts the clumps
  on high-pass peaks, and accepts it only when the best score beats the 95th percentile
  of the same search with the clump pattern randomly rotated: 45 of the 92 galaxies pass
  (about 5 would by chance); their scales lie at 0.84-1.41 times the prior (16-84 %).
  The numbers are in ``docs/clumps.md``.

Positions derived this way are good for evaluation with a tolerance and for plots, not as
pixel-exact training boxes; every clump carries ``pos_err_px``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from astrotl.data import NormalizeConfig, list_collate, normalize_images
from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset
from astrotl.io import atomic_path

from .simulate import BANDS

__all__ = [
    "ALPHA",
    "CALIBRATION_VERSION",
    "S82ClumpsDataset",
    "calibrate_s82",
    "clump_pixels",
    "measure_host",
    "orientation_checks",
    "read_s82",
]

log = logging.getLogger(__name__)

#: Global factor between the JPEG's light moments and the catalogue's ``gal_sma`` (see module doc).
ALPHA = 1.4
#: Relative 1-sigma scale error of the prior (accepted refinements lie at 0.84-1.41 x the prior, 16-84 %).
PRIOR_REL_ERR = 0.25
#: Nominal relative scale error of an accepted refinement (the search grid step is 4 %).
REFINED_REL_ERR = 0.1
CALIBRATION_VERSION = "1"

_CSV_COLUMNS = ("image", "gal_id", "gal_ra", "gal_dec", "redshift", "gal_reff", "gal_sma", "gal_smb", "gal_theta",
                "psf_fwhm_r", "clump_id", "clump_ra", "clump_dec", "clump_dx_east_arcsec", "clump_dy_north_arcsec",
                "clump_distance_arcsec", "clump_prox_flag", "clump_mag_u", "clump_mag_r")


def _root(root: str | Path | None) -> Path:
    if root is None:
        raise DataError("data (gzh_s82): no folder given; set root to the gzh_s82_clumps folder "
                        "(clumps.csv + images/)")
    p = Path(root).expanduser()
    if not (p / "clumps.csv").is_file():
        raise DataError(f"data (gzh_s82): '{p / 'clumps.csv'}' does not exist; set root to the gzh_s82_clumps "
                        "folder that holds clumps.csv and images/")
    return p


def read_s82(root: str | Path) -> tuple[Table, Table]:
    """Read the Mehta et al. (2021) clump positions and the image list.

    Parameters
    ----------
    root : str or pathlib.Path
        The ``gzh_s82_clumps`` folder (``clumps.csv`` and ``images/``).

    Returns
    -------
    galaxies : astropy.table.Table
        One row per galaxy: ``gal_id, image`` (absolute path), ``ra, dec, redshift, gal_reff,
        gal_sma, gal_smb, gal_theta, psf_fwhm_r, n_clumps`` (sizes in arcsec).
    clumps : astropy.table.Table
        One row per clump: ``gal_id, galaxy`` (row of ``galaxies``), ``clump_id, ra, dec,
        dx_east_arcsec, dy_north_arcsec, distance_arcsec, prox_flag, mag_u, mag_r``.

    Raises
    ------
    astrotl.errors.DataError
        When the folder, the CSV, one of its columns or an image is missing.
    """
    p = _root(root)
    try:
        t = Table.read(p / "clumps.csv", format="ascii.csv")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"data (gzh_s82): cannot read '{p / 'clumps.csv'}' ({exc}); restore the file") from None
    missing = [c for c in _CSV_COLUMNS if c not in t.colnames]
    if missing:
        raise DataError(f"data (gzh_s82): '{p / 'clumps.csv'}' has no column {', '.join(missing)}; "
                        "expected the clumps.csv derived from GZH_S82_Clump_Catalog.fits")
    ids = np.asarray(t["gal_id"], dtype=np.int64)
    uniq, first = np.unique(ids, return_index=True)
    order = np.argsort(first)
    uniq, first = uniq[order], first[order]
    images = [p / str(t["image"][f]) for f in first]
    absent = [im for im in images if not im.is_file()]
    if absent:
        raise DataError(f"data (gzh_s82): {len(absent)} of {len(images)} images are missing (e.g. {absent[0]}); "
                        "unpack plots/clumpy_gals_S82.tar.gz of vihangmehta/GZH_S82_Clumps into images/")
    g = Table()
    g["gal_id"] = uniq
    g["image"] = [str(im) for im in images]
    for src, dst in (("gal_ra", "ra"), ("gal_dec", "dec"), ("redshift", "redshift"), ("gal_reff", "gal_reff"),
                     ("gal_sma", "gal_sma"), ("gal_smb", "gal_smb"), ("gal_theta", "gal_theta"),
                     ("psf_fwhm_r", "psf_fwhm_r")):
        g[dst] = np.asarray(t[src].filled(np.nan) if hasattr(t[src], "filled") else t[src], dtype=float)[first]
    row_of = {gid: k for k, gid in enumerate(uniq)}
    g["n_clumps"] = np.bincount([row_of[i] for i in ids], minlength=len(uniq))
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("gal_reff", "arcsec"), ("gal_sma", "arcsec"),
                       ("gal_smb", "arcsec"), ("gal_theta", "deg"), ("psf_fwhm_r", "arcsec")):
        g[name].unit = unit
    c = Table()
    c["gal_id"] = ids
    c["galaxy"] = np.array([row_of[i] for i in ids], dtype=np.int64)
    for src, dst in (("clump_id", "clump_id"), ("clump_ra", "ra"), ("clump_dec", "dec"),
                     ("clump_dx_east_arcsec", "dx_east_arcsec"), ("clump_dy_north_arcsec", "dy_north_arcsec"),
                     ("clump_distance_arcsec", "distance_arcsec"), ("clump_prox_flag", "prox_flag"),
                     ("clump_mag_u", "mag_u"), ("clump_mag_r", "mag_r")):
        c[dst] = np.asarray(t[src])
    return g, c


def _load_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"data (gzh_s82): cannot read image '{path}' ({exc}); replace it with the original JPEG") \
            from None


def measure_host(rgb: np.ndarray) -> dict[str, float]:
    """Second moments of the central object of a colour image.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``[H, W, 3]`` image (any linear or stretched scale).

    Returns
    -------
    dict
        ``xc, yc`` (0-based light centroid), ``sma, smb`` (second-moment semi-axes, px),
        ``pa_deg`` (major axis from +x towards +y, i.e. towards lower rows in a displayed
        JPEG), ``npix`` (segment area). NaNs when no segment covers the centre.
    """
    from photutils.segmentation import detect_sources

    lum = np.asarray(rgb, dtype=np.float64).mean(axis=2)
    bg = np.median(lum)
    sig = 1.4826 * np.median(np.abs(lum - bg)) or 1.0
    sm = ndi.gaussian_filter(lum - bg, 2.0)
    h, w = lum.shape
    nan = dict(xc=np.nan, yc=np.nan, sma=np.nan, smb=np.nan, pa_deg=np.nan, npix=0.0)
    seg = detect_sources(sm, sig, n_pixels=50)
    if seg is None:
        return nan
    lab = seg.data[int(round((h - 1) / 2)), int(round((w - 1) / 2))]
    if lab == 0:
        return nan
    m = seg.data == lab
    wgt = np.where(m, np.clip(lum - bg, 0, None), 0.0)
    f = wgt.sum()
    yy, xx = np.indices(lum.shape)
    xc, yc = (wgt * xx).sum() / f, (wgt * yy).sum() / f
    x2 = (wgt * (xx - xc) ** 2).sum() / f
    y2 = (wgt * (yy - yc) ** 2).sum() / f
    xy = (wgt * (xx - xc) * (yy - yc)).sum() / f
    root = math.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
    return dict(xc=float(xc), yc=float(yc), sma=math.sqrt(0.5 * (x2 + y2) + root),
                smb=math.sqrt(max(0.5 * (x2 + y2) - root, 0.0)),
                pa_deg=float(np.degrees(0.5 * np.arctan2(2 * xy, x2 - y2)) % 180.0), npix=float(m.sum()))


def clump_pixels(dx_east, dy_north, scale: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of sky offsets in a north-up, east-left cutout centred on the galaxy.

    Parameters
    ----------
    dx_east, dy_north : array_like
        Offsets from the galaxy centre in arcsec (east, north).
    scale : float
        Pixel scale, arcsec per pixel.
    shape : tuple of int
        ``(H, W)`` of the image; the centre is ``((W-1)/2, (H-1)/2)``.

    Returns
    -------
    x, y : numpy.ndarray
        0-based column and row (row 0 at the top, so north is towards smaller ``y``).
    """
    h, w = shape
    return ((w - 1) / 2.0 - np.asarray(dx_east, float) / scale,
            (h - 1) / 2.0 - np.asarray(dy_north, float) / scale)


def _highpass_z(rgb: np.ndarray) -> np.ndarray:
    lum = np.asarray(rgb, dtype=np.float64).mean(axis=2)
    hp = ndi.gaussian_filter(lum, 1.5) - ndi.gaussian_filter(lum, 6.0)
    noise = 1.4826 * np.median(np.abs(hp - np.median(hp))) or 1.0
    return hp / noise


_FACTORS = np.exp(np.linspace(np.log(0.6), np.log(1.0 / 0.6), 25))


def _profile(z: np.ndarray, e: np.ndarray, n: np.ndarray, s0: float) -> np.ndarray:
    out = np.empty(len(_FACTORS))
    for k, f in enumerate(_FACTORS):
        x, y = clump_pixels(e, n, s0 * f, z.shape)
        out[k] = ndi.map_coordinates(z, [y, x], order=1, mode="constant", cval=0.0).mean()
    return out


def calibrate_s82(galaxies: Table, clumps: Table, *, refine: bool = True, n_null: int = 30,
                  seed: int = 0) -> tuple[Table, Table]:
    """Pixel calibration of the S82 JPEGs (see the module docstring for the method).

    Parameters
    ----------
    galaxies, clumps : astropy.table.Table
        As returned by :func:`read_s82` (any subset of galaxies with their clumps).
    refine : bool
        Try the per-galaxy scale refinement (else the prior scale for all).
    n_null : int
        Random rotations of the clump pattern for the refinement's null distribution.
    seed : int
        Seed of those rotations.

    Returns
    -------
    galaxies : astropy.table.Table
        A copy with ``x_center, y_center, sma_jpeg, smb_jpeg, pa_jpeg_deg, scale_prior,
        scale, scale_rel_err, refined, score, null_p95`` added (scales in arcsec/px).
    clumps : astropy.table.Table
        A copy with ``x, y`` (0-based JPEG pixels) and ``pos_err_px`` added.
    """
    g = galaxies.copy()
    c = clumps.copy()
    rng = np.random.default_rng(seed)
    cols = {k: np.full(len(g), np.nan) for k in ("x_center", "y_center", "sma_jpeg", "smb_jpeg", "pa_jpeg_deg",
                                                  "scale_prior", "scale", "scale_rel_err", "score", "null_p95")}
    refined = np.zeros(len(g), dtype=bool)
    cx, cy, err = np.full(len(c), np.nan), np.full(len(c), np.nan), np.full(len(c), np.nan)
    gal_of = np.asarray(c["galaxy"])
    for k in range(len(g)):
        rgb = _load_rgb(g["image"][k])
        h, w = rgb.shape[:2]
        host = measure_host(rgb)
        cols["x_center"][k], cols["y_center"][k] = (w - 1) / 2.0, (h - 1) / 2.0
        cols["sma_jpeg"][k], cols["smb_jpeg"][k], cols["pa_jpeg_deg"][k] = host["sma"], host["smb"], host["pa_deg"]
        s0 = ALPHA * float(g["gal_sma"][k]) / host["sma"] if np.isfinite(host["sma"]) and host["sma"] > 0 else np.nan
        if not np.isfinite(s0):  # no central segment: fall back on the Galaxy Zoo convention, ~0.04 R_eff
            s0 = 0.04 * float(g["gal_reff"][k])
        cols["scale_prior"][k] = s0
        sel = np.nonzero(gal_of == k)[0]
        e = np.asarray(c["dx_east_arcsec"][sel], float)
        n = np.asarray(c["dy_north_arcsec"][sel], float)
        s, rel = s0, PRIOR_REL_ERR
        if refine and len(sel):
            z = _highpass_z(rgb)
            prof = _profile(z, e, n, s0)
            best = int(np.argmax(prof))
            null = []
            for a in rng.uniform(0.5, 2 * np.pi - 0.5, n_null):
                ca, sa = math.cos(a), math.sin(a)
                null.append(_profile(z, ca * e - sa * n, sa * e + ca * n, s0).max())
            p95 = float(np.percentile(null, 95))
            cols["score"][k], cols["null_p95"][k] = float(prof[best]), p95
            if prof[best] > p95:
                s, rel = s0 * float(_FACTORS[best]), REFINED_REL_ERR
                refined[k] = True
        cols["scale"][k], cols["scale_rel_err"][k] = s, rel
        x, y = clump_pixels(e, n, s, (h, w))
        cx[sel], cy[sel] = x, y
        err[sel] = rel * np.hypot(e, n) / s
    for name, v in cols.items():
        g[name] = v
    g["refined"] = refined
    for name in ("scale_prior", "scale"):
        g[name].unit = "arcsec / pix"
    g.meta["calibration"] = ("north up, east left, centred; scale = ALPHA * gal_sma / sma_jpeg "
                             f"(ALPHA={ALPHA}), refined per galaxy when significant")
    c["x"], c["y"], c["pos_err_px"] = cx, cy, err
    for name in ("x", "y", "pos_err_px"):
        c[name].unit = "pix"
    return g, c


_MAPPINGS = {  # (east, north) offsets -> (dx, dy) in array pixels (row 0 at the top)
    "north up, east left": lambda e, n: (-e, -n),
    "north down, east right": lambda e, n: (e, n),
    "east down, north left": lambda e, n: (-n, e),
    "east up, north right": lambda e, n: (n, -e),
    "north up, east right (mirrored)": lambda e, n: (e, -n),
    "north down, east left (mirrored)": lambda e, n: (-e, n),
    "east up, north left (mirrored)": lambda e, n: (-n, -e),
    "east down, north right (mirrored)": lambda e, n: (n, e),
}


def orientation_checks(galaxies: Table, clumps: Table, min_ellipticity: float = 0.3) -> Table:
    """The two shape tests behind the north-up, east-left orientation of the S82 JPEGs.

    Parameters
    ----------
    galaxies, clumps : astropy.table.Table
        The output of :func:`calibrate_s82` (needs ``sma_jpeg, smb_jpeg, pa_jpeg_deg``).
    min_ellipticity : float
        Galaxies rounder than this (in the JPEG, and in the catalogue for test 1) are skipped.

    Returns
    -------
    astropy.table.Table
        One row per candidate mapping: ``parity_n``, ``parity_frac_within_10deg`` (the
        JPEG major axis against ``gal_theta``, which is defined modulo 90 deg, so only
        mirrored / not mirrored is testable) and ``align_n``, ``align_median_deg`` (the
        clump pattern's long axis against the JPEG major axis, galaxies with >= 4 clumps).
    """
    e_img = 1 - np.asarray(galaxies["smb_jpeg"], float) / np.asarray(galaxies["sma_jpeg"], float)
    e_cat = 1 - np.asarray(galaxies["gal_smb"], float) / np.asarray(galaxies["gal_sma"], float)
    pa = np.asarray(galaxies["pa_jpeg_deg"], float)
    th_img = (pa + 45.0) % 90.0 - 45.0
    th_cat = np.asarray(galaxies["gal_theta"], float)  # 0.5 arctan(2xy / (x2 - y2)) in a y-up FITS frame
    ok1 = (e_img > min_ellipticity) & np.isfinite(e_cat) & (e_cat > min_ellipticity)
    rows = []
    for name, f in _MAPPINGS.items():
        mirrored = "mirrored" in name
        # a y-up FITS frame shown with row 0 at the top is mirrored once already
        sgn = 1.0 if mirrored else -1.0
        d1 = (th_img - sgn * th_cat + 45.0) % 90.0 - 45.0
        d2 = []
        for k in range(len(galaxies)):
            sel = np.asarray(clumps["galaxy"]) == k
            if sel.sum() < 4 or not e_img[k] > min_ellipticity:
                continue
            x, y = f(np.asarray(clumps["dx_east_arcsec"][sel], float), np.asarray(clumps["dy_north_arcsec"][sel], float))
            x, y = x - x.mean(), y - y.mean()
            pa_c = np.degrees(0.5 * np.arctan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean())) % 180.0
            d2.append((pa_c - pa[k] + 90.0) % 180.0 - 90.0)
        rows.append(dict(mapping=name, parity_n=int(ok1.sum()),
                         parity_frac_within_10deg=float(np.mean(np.abs(d1[ok1]) < 10)) if ok1.any() else np.nan,
                         align_n=len(d2), align_median_deg=float(np.median(np.abs(d2))) if d2 else np.nan))
    return Table(rows=rows)


# --------------------------------------------------------------------------------------
# data set


#: Host ellipse of a galaxy: this many times its second-moment semi-axes in the JPEG (holds all 543 clumps).
HOST_ELLIPSE_SCALE = 3.0


class S82ClumpsConfig(ComponentConfig):
    root: str | None = Field(None, description="the gzh_s82_clumps folder (clumps.csv + images/)")
    refine: bool = Field(True, description="per-galaxy scale refinement (else the prior scale)")
    refined_only: bool = Field(False, description="keep only galaxies whose refinement was significant")
    box_fwhm: float = Field(1.5, gt=0, description="box half-side in units of the galaxy's r-band PSF FWHM")
    classes: list[str] = Field(["clump"], min_length=1, description="classes the data set declares (every box is "
                                                                      "label 0, the first); e.g. [clump, odd_clump] to "
                                                                      "evaluate a two-class model")
    pixel_scale: float | None = Field(None, gt=0, description="resample each JPEG to this many arcsec/px with its "
                                                              "calibrated scale (0.396: SDSS and clumps_sim); null: "
                                                              "keep the JPEG pixels")
    crop: int | None = Field(None, ge=16, description="central crop (px, after resampling), zero-padded where the "
                                                      "image is smaller; null: whole image")
    normalize: NormalizeConfig | None = Field(None, description="per-band normalisation of the 0-255 JPEG values "
                                                                "(e.g. {background: image_median, scale: image}); "
                                                                "null: divide by 255")

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} lists a class twice")
        if self.normalize is not None and self.normalize.scale == "dataset":
            raise ValueError("normalize.scale: dataset is not available for gzh_s82 (an evaluation set); use image "
                             "or none")
        return self


class S82ClumpsDataset(ImageDataset):
    """The 92 clumpy GZ:Hubble Stripe 82 galaxies (Mehta+21) with calibrated, approximate clump boxes."""

    name = "gzh_s82"
    Config = S82ClumpsConfig
    collate_fn = staticmethod(list_collate)

    def __init__(self, config: S82ClumpsConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        root = _root(config.root)
        gal, cl = read_s82(root)
        gal, cl = self._calibrated(root, gal, cl, Path(cache_dir) / "gzh_s82", refine=config.refine)
        if config.refined_only:
            keep = np.nonzero(np.asarray(gal["refined"]))[0]
            remap = {int(k): j for j, k in enumerate(keep)}
            cl = cl[np.isin(np.asarray(cl["galaxy"]), keep)]
            cl["galaxy"] = [remap[int(k)] for k in cl["galaxy"]]
            gal = gal[keep]
        gal["id"] = np.arange(len(gal))
        gal.columns.move_to_end("id", last=False)
        self._gal, self._cl = gal, cl
        self._targets = []
        self._mag_r = []
        for k in range(len(gal)):
            sel = cl[np.asarray(cl["galaxy"]) == k]
            hw = config.box_fwhm * float(gal["psf_fwhm_r"][k]) / float(gal["scale"][k])
            x, y = np.asarray(sel["x"], float), np.asarray(sel["y"], float)
            boxes = np.stack([x - hw, y - hw, x + hw, y + hw], axis=1) if len(sel) else np.zeros((0, 4))
            self._targets.append(boxes)
            self._mag_r.append(np.asarray(sel["mag_r"], dtype=np.float32))

    @staticmethod
    def _calibrated(root: Path, gal: Table, cl: Table, cache: Path, refine: bool) -> tuple[Table, Table]:
        stat = (root / "clumps.csv").stat()
        key = hashlib.sha256(json.dumps([str(root.resolve()), stat.st_size, int(stat.st_mtime), ALPHA, bool(refine),
                                         CALIBRATION_VERSION]).encode()).hexdigest()[:16]
        gp, cp = cache / f"{key}.galaxies.ecsv", cache / f"{key}.clumps.ecsv"
        if gp.is_file() and cp.is_file():
            try:
                return Table.read(gp, format="ascii.ecsv"), Table.read(cp, format="ascii.ecsv")
            except Exception as exc:  # noqa: BLE001 - regenerate a damaged cache entry
                log.warning("recomputing the S82 calibration (%s)", exc)
        g, c = calibrate_s82(gal, cl, refine=refine)
        for t, p in ((g, gp), (c, cp)):
            buf = io.StringIO()
            t.write(buf, format="ascii.ecsv")
            with atomic_path(p) as tmp:
                tmp.write_text(buf.getvalue())
        return g, c

    def __len__(self) -> int:
        return len(self._gal)

    def frame(self, index: int) -> tuple[float, float, float, int, int]:
        """``(zoom, x0, y0, width, height)``: JPEG pixel ``(x, y)`` maps to ``(x + 0.5) * zoom - 0.5 - x0`` (and
        ``y`` alike) in the served image of ``width`` x ``height`` px (``pixel_scale`` and ``crop``)."""
        c = self.config
        g = self._gal[index]
        size = 424
        zoom = float(g["scale"]) / c.pixel_scale if c.pixel_scale is not None else 1.0
        n = int(round(size * zoom)) if c.pixel_scale is not None else size
        zoom = n / size
        if c.crop is None:
            return zoom, 0.0, 0.0, n, n
        xc = (float(g["x_center"]) + 0.5) * zoom - 0.5
        yc = (float(g["y_center"]) + 0.5) * zoom - 0.5
        return zoom, float(round(xc - (c.crop - 1) / 2.0)), float(round(yc - (c.crop - 1) / 2.0)), c.crop, c.crop

    def wcs(self, index: int):
        """The calibrated TAN WCS of the served image ``index`` (north up, east left; approximate scale)."""
        from astropy.wcs import WCS

        g = self._gal[index]
        zoom, x0, y0, _, _ = self.frame(index)
        s = float(g["scale"]) / zoom / 3600.0
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [float(g["ra"]), float(g["dec"])]
        w.wcs.crpix = [(float(g["x_center"]) + 0.5) * zoom - 0.5 - x0 + 1.0,
                       (float(g["y_center"]) + 0.5) * zoom - 0.5 - y0 + 1.0]
        w.wcs.cd = [[-s, 0.0], [0.0, -s]]  # row 0 at the top: north towards smaller y, east towards smaller x
        return w

    def host_ellipse(self, index: int) -> tuple[float, float, float, float, float]:
        """``(x, y, a, b, theta_deg)`` in the served image: 3 x the JPEG's second-moment axes of the galaxy."""
        g = self._gal[index]
        zoom, x0, y0, _, _ = self.frame(index)
        return ((float(g["x_center"]) + 0.5) * zoom - 0.5 - x0, (float(g["y_center"]) + 0.5) * zoom - 0.5 - y0,
                HOST_ELLIPSE_SCALE * float(g["sma_jpeg"]) * zoom, HOST_ELLIPSE_SCALE * float(g["smb_jpeg"]) * zoom,
                float(g["pa_jpeg_deg"]))

    def __getitem__(self, index: int):
        c = self.config
        rgb = _load_rgb(self._gal["image"][index])
        img = np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)  # (g, r, i), 0-255
        zoom, x0, y0, w, h = self.frame(index)
        if c.pixel_scale is not None and img.shape[1] != int(round(img.shape[1] * zoom)):
            n = int(round(img.shape[1] * zoom))
            img = torch.nn.functional.interpolate(torch.from_numpy(img)[None], size=(n, n), mode="bilinear",
                                                  antialias=True, align_corners=False)[0].numpy()
        img = normalize_images(img[None], c.normalize)[0] if c.normalize is not None else img / 255.0
        if c.crop is not None:
            out = np.zeros((img.shape[0], h, w), dtype=np.float32)
            ix0, iy0 = int(x0), int(y0)
            sx0, sy0 = max(ix0, 0), max(iy0, 0)
            sx1, sy1 = min(ix0 + w, img.shape[2]), min(iy0 + h, img.shape[1])
            if sx1 > sx0 and sy1 > sy0:
                out[:, sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = img[:, sy0:sy1, sx0:sx1]
            img = out
        boxes = (self._targets[index] + 0.5) * zoom - 0.5 - np.array([x0, y0, x0, y0])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx >= -0.5) & (cx <= w - 0.5) & (cy >= -0.5) & (cy <= h - 0.5)  # crops lose outer clumps
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h - 1)
        ok = inside & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                "boxes": torch.as_tensor(boxes[ok], dtype=torch.float32),
                "labels": torch.zeros(int(ok.sum()), dtype=torch.int64), "index": index,
                "host_ellipse": torch.tensor(self.host_ellipse(index), dtype=torch.float64),
                "wcs": self.wcs(index), "box_meta": {"mag_r": torch.from_numpy(self._mag_r[index][ok])}}

    def info(self) -> DatasetInfo:
        c = self.config
        desc = ("clump (Mehta+21 algorithmic + curated; approximate pixel position)",)
        desc += tuple(f"{name} (no box of this class here)" for name in c.classes[1:])
        return DatasetInfo(bands=BANDS, classes=tuple(c.classes), class_descriptions=desc,
                           image_size=c.crop if c.crop is not None else (424 if c.pixel_scale is None else None))

    def catalog(self) -> Table:
        """One row per galaxy with its calibration (``scale``, ``refined``, ...)."""
        return self._gal

    def clumps(self) -> Table:
        """One row per clump with ``x, y, pos_err_px`` (``galaxy`` is the sample index)."""
        return self._cl
