"""Simulated PHANGS-HST cluster-candidate cutouts as an :class:`astrotl.ImageDataset`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator

from astrotl.data import NormalizeConfig, normalize_images
from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset

from .simulate import BANDS, CLASS_NAMES, SimConfig, simulate_cached

log = logging.getLogger(__name__)

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "predict": 3}


class PhangsSimConfig(ComponentConfig):
    n_train: int = Field(3000, ge=1, description="training cutouts")
    n_val: int = Field(500, ge=1, description="validation cutouts")
    n_test: int = Field(1000, ge=0, description="test cutouts")
    seed: int = Field(0, description="simulation seed (independent of the run seed, so an ensemble sees the same data)")
    size: int = Field(32, ge=8, le=512, description="cutout side in pixels (WFC3/UVIS 0.04 arcsec/px)")
    class_fractions: tuple[float, float, float, float] = Field(
        (0.25, 0.25, 0.25, 0.25), description="relative numbers of classes 1, 2, 3, 4")
    mag_range: tuple[float, float] = Field((20.5, 24.5), description="F555W Vega magnitude range")
    crowding: float = Field(1.0, ge=0, description="mean number of unrelated neighbours per cutout")
    background: float = Field(1.0, ge=0, description="scale of the host-galaxy background")
    sky: float = Field(1.0, ge=0, description="scale of the sky level")
    psf_fwhm_px: float = Field(2.1, gt=0.5, lt=6, description="F555W PSF FWHM in pixels")
    normalize: NormalizeConfig = NormalizeConfig()

    @model_validator(mode="after")
    def _check(self):
        if self.mag_range[0] >= self.mag_range[1]:
            raise ValueError(f"mag_range must be (bright, faint) with bright < faint, got {list(self.mag_range)}")
        if any(f < 0 for f in self.class_fractions) or sum(self.class_fractions) <= 0:
            raise ValueError(f"class_fractions must be >= 0 and not all 0, got {list(self.class_fractions)}")
        return self

    def sim_config(self) -> SimConfig:
        return SimConfig(size=self.size, class_fractions=tuple(self.class_fractions), mag_range=tuple(self.mag_range),
                         crowding=self.crowding, background=self.background, sky=self.sky, psf_fwhm_px=self.psf_fwhm_px)


class PhangsSimDataset(ImageDataset):
    """Simulated HST WFC3/UVIS five-band cutouts of PHANGS-HST cluster candidates (classes 1-4)."""

    name = "phangs_sim"
    Config = PhangsSimConfig

    def __init__(self, config: PhangsSimConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        n = {"train": config.n_train, "val": config.n_val, "test": config.n_test, "predict": config.n_test}[split]
        sim_seed = int(np.random.SeedSequence([config.seed, SPLIT_OFFSETS[split]]).generate_state(1)[0])
        self._catalog = Table({"id": np.array([], dtype=int)})
        if n == 0:
            self._images = torch.zeros((0, len(BANDS), config.size, config.size))
            self._labels = np.zeros(0, dtype=np.int64)
            return
        try:
            result = simulate_cached(n, config.sim_config(), sim_seed, Path(cache_dir) / "phangs_sim")
        except ValueError as exc:
            raise DataError(f"data (phangs_sim): {exc}") from None
        self._catalog = result.catalog
        self._labels = np.asarray(result.catalog["cls"], dtype=np.int64) - 1
        self._images = torch.from_numpy(normalize_images(result.images, config.normalize))

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int):
        return {"image": self._images[index], "label": int(self._labels[index]), "index": index}

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=BANDS, classes=tuple(str(c) for c in CLASS_NAMES),
                           class_descriptions=tuple(CLASS_NAMES.values()), image_size=self.config.size)

    def catalog(self) -> Table:
        return self._catalog

    def labels(self) -> np.ndarray:
        return self._labels

    def raw_images(self) -> torch.Tensor:
        """The normalised image stack ``[N, 5, size, size]`` (for plots)."""
        return self._images
