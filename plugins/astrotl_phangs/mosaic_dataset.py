"""``phangs_mosaic``: cutouts from a painted five-band PHANGS-HST-like mosaic, read like real data.

The data set paints a mosaic with :func:`astrotl_phangs.mosaic.paint_mosaic` (cached under
``cache_dir/phangs_mosaic/<key>``; a second run reuses the files) and then hands the FITS files
and the candidate catalogue to :class:`astrotl.datasets.CatalogCutoutDataset`, so every stamp is
cut from the FITS mosaics through their WCS exactly as for a real PHANGS-HST field (same NaN
handling, edge flags, normalisation, splits).

YAML::

    data:
      name: phangs_mosaic
      n_sources: 3000          # catalogue rows (incl. ~3 % redundant false peaks, class 4.9)
      shape: [3000, 3000]      # mosaic (ny, nx), 0.04"/px
      seed: 0
      size: 32                 # stamp side
      drop_redundant: true     # leave 4.9 rows out (the PHANGS pipeline removes them after classifying)
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from astropy.table import Table
from pydantic import Field, model_validator

from astrotl.data import NormalizeConfig
from astrotl.datasets.common import FlagName
from astrotl.datasets.cutouts import CatalogCutoutConfig, CatalogCutoutDataset
from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset
from astrotl.io import atomic_path

from .mosaic import MIN_SIDE, MosaicConfigError, paint_mosaic
from .simulate import BANDS, CLASS_NAMES, SimConfig

log = logging.getLogger(__name__)

EXTRA_COLUMNS = ["subclass", "subclass_drawn", "log_age", "ebv", "fwhm_px", "background", "r_gal", "edge_dist",
                 "redundant"]


class PhangsMosaicConfig(ComponentConfig):
    """Options of :class:`PhangsMosaicDataset`."""

    n_sources: int = Field(3000, ge=1, description="candidates in the catalogue (incl. spurious_fraction false peaks)")
    shape: tuple[int, int] = Field((3000, 3000), description="mosaic (ny, nx) in pixels (0.04 arcsec/px)")
    seed: int = Field(0, ge=0, description="simulation seed (independent of the run seed)")
    class_fractions: tuple[float, float, float, float] = Field(
        (0.25, 0.25, 0.25, 0.25), description="relative numbers of classes 1, 2, 3, 4")
    mag_range: tuple[float, float] = Field((20.5, 24.5), description="F555W Vega magnitude range of the candidates")
    crowding: float = Field(1.0, ge=0, description="objects per 32x32 px incl. uncatalogued faint ones")
    background: float = Field(1.0, ge=0, description="scale of the galaxy light (disk, bulge, arms)")
    sky: float = Field(1.0, ge=0, description="scale of the sky level")
    psf_fwhm_px: float = Field(2.1, gt=0.8, lt=6, description="F555W PSF FWHM in pixels")
    spurious_fraction: float = Field(0.03, ge=0, le=0.3, description="share of rows that are false peaks (-> 4.9)")
    ra: float = Field(24.174, ge=0, lt=360, description="RA of the mosaic centre, deg (NGC 628)")
    dec: float = Field(15.784, gt=-90, lt=90, description="Dec of the mosaic centre, deg")
    size: int = Field(32, ge=8, le=512, description="stamp side in pixels")
    coords: Literal["sky", "pixel"] = Field("sky", description="cut at ra/dec through the WCS (as real data) or x/y")
    drop_redundant: bool = Field(True, description="leave out redundant candidates (class 4.9)")
    drop_flagged: list[FlagName] = Field(default_factory=list, description="drop rows with these catalog_cutouts flags")
    split_fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, val, test fractions")
    split_seed: int = Field(0, description="seed of the split")
    stratify: bool = Field(True, description="keep class proportions in every split")
    cache: Literal["none", "npy"] = Field("npy", description="npy: extract each split's stamps once (fast epochs)")
    normalize: NormalizeConfig = NormalizeConfig()

    @model_validator(mode="after")
    def _check(self):
        ny, nx = self.shape
        need = max(MIN_SIDE, 4 * self.size)
        if min(ny, nx) < need:
            raise ValueError(f"shape {list(self.shape)} is too small for the stamp size {self.size}: each side must "
                             f"be >= {need} px (64 and 4 x size)")
        if self.n_sources > ny * nx // 400:
            raise ValueError(f"n_sources={self.n_sources} is too many for a {ny} x {nx} mosaic: at most "
                             f"{ny * nx // 400}")
        if self.mag_range[0] >= self.mag_range[1]:
            raise ValueError(f"mag_range must be (bright, faint) with bright < faint, got {list(self.mag_range)}")
        if any(f < 0 for f in self.class_fractions) or sum(self.class_fractions) <= 0:
            raise ValueError(f"class_fractions must be >= 0 and not all 0, got {list(self.class_fractions)}")
        if any(f < 0 for f in self.split_fractions) or sum(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be >= 0 and not all 0, got {list(self.split_fractions)}")
        return self

    def sim_config(self) -> SimConfig:
        return SimConfig(size=32, class_fractions=tuple(self.class_fractions), mag_range=tuple(self.mag_range),
                         crowding=self.crowding, background=self.background, sky=self.sky,
                         psf_fwhm_px=self.psf_fwhm_px)


class PhangsMosaicDataset(ImageDataset):
    """Cutouts from a painted five-band PHANGS-HST-like mosaic with WCS, read through catalog_cutouts (classes 1-4)."""

    name = "phangs_mosaic"
    Config = PhangsMosaicConfig

    def __init__(self, config: PhangsMosaicConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        c = config
        root = Path(cache_dir) / "phangs_mosaic"
        try:
            sim_cfg = c.sim_config()
            from .mosaic import _key  # same key as paint_mosaic uses for its files

            sub = _key(n=c.n_sources, shape=list(c.shape), seed=c.seed, sim=asdict(sim_cfg), ra=c.ra, dec=c.dec,
                       spurious=c.spurious_fraction)[:16]
            self.mosaic = paint_mosaic(root / sub, n_sources=c.n_sources, shape=tuple(c.shape), config=sim_cfg,
                                       seed=c.seed, ra=c.ra, dec=c.dec, spurious_fraction=c.spurious_fraction)
        except (MosaicConfigError, ValueError) as exc:
            raise DataError(f"data (phangs_mosaic): {exc}") from None
        catalog = self.mosaic.catalog_path
        if c.drop_redundant:
            catalog = self._without_redundant()
        inner = CatalogCutoutConfig(**self.mosaic.cutout_config(
            catalog=str(catalog), coords=c.coords, extra_columns=list(EXTRA_COLUMNS), size=c.size,
            drop_flagged=list(c.drop_flagged), split_fractions=tuple(c.split_fractions), split_seed=c.split_seed,
            stratify=c.stratify, cache=c.cache, normalize=c.normalize))
        self.inner = CatalogCutoutDataset(inner, split=split, seed=seed, cache_dir=cache_dir)

    def _without_redundant(self) -> Path:
        path = self.mosaic.out_dir / "candidates_no_redundant.ecsv"
        src = self.mosaic.catalog_path
        if path.is_file() and path.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            return path
        t = self.mosaic.catalog
        kept = t[~t["redundant"].astype(bool)]
        with atomic_path(path) as tmp:
            kept.write(tmp, format="ascii.ecsv", overwrite=True)
        return path

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.inner[index]

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=BANDS, classes=tuple(str(k) for k in CLASS_NAMES),
                           class_descriptions=tuple(CLASS_NAMES.values()), image_size=self.config.size,
                           extra={"images": {b: str(p) for b, p in self.mosaic.images.items()},
                                  "catalog": str(self.mosaic.catalog_path)})

    def catalog(self) -> Table:
        """Per-sample metadata from :meth:`CatalogCutoutDataset.catalog`: id, x, y, ra, dec, class, magnitudes,
        sub-class, age, reddening, redundancy and the cutout flags."""
        return self.inner.catalog()

    def labels(self):
        return self.inner.labels()

    def flags(self) -> Table:
        return self.inner.flags()

    def raw_cutout(self, index: int, **kw):
        return self.inner.raw_cutout(index, **kw)
