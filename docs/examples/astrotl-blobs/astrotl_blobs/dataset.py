"""Two-band images of round and elongated Gaussian blobs with noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field

from astrotl import ComponentConfig, DatasetInfo, ImageDataset
from astrotl.errors import DataError

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2, "predict": 3}


class BlobConfig(ComponentConfig):
    n_train: int = Field(512, ge=1, description="training images")
    n_val: int = Field(128, ge=1, description="validation images")
    n_test: int = Field(256, ge=0, description="test images")
    size: int = Field(24, ge=8, le=256, description="image side in pixels")
    noise: float = Field(0.1, ge=0, description="Gaussian noise sigma (peak = 1)")
    seed: int = Field(0, description="simulation seed")


class BlobDataset(ImageDataset):
    """Simulated two-band round (class 'round') and elongated (class 'long') Gaussian blobs."""

    name = "blobs_sim"
    Config = BlobConfig

    def __init__(self, config: BlobConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        n = {"train": config.n_train, "val": config.n_val}.get(split, config.n_test)
        if config.noise > 10:
            raise DataError(f"noise={config.noise} drowns the blobs; use noise <= 10")
        rng = np.random.default_rng([config.seed, SPLIT_SEEDS[split]])
        s = config.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        label = rng.integers(0, 2, n)                      # 0 round, 1 long
        x0, y0 = rng.uniform(0.4 * s, 0.6 * s, (2, n))     # 0-based pixel centre
        sigma = rng.uniform(0.06 * s, 0.12 * s, n)
        q = np.where(label == 1, rng.uniform(0.3, 0.6, n), rng.uniform(0.85, 1.0, n))
        theta = rng.uniform(0, np.pi, n)
        dx, dy = xx[None] - x0[:, None, None], yy[None] - y0[:, None, None]
        c, si = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        u, v = dx * c + dy * si, (-dx * si + dy * c) / q[:, None, None]
        blob = np.exp(-0.5 * (u**2 + v**2) / sigma[:, None, None] ** 2)
        colour = np.array([1.0, 0.6], dtype=np.float32)     # band 'r' is fainter than 'g'
        images = colour[None, :, None, None] * blob[:, None] + rng.normal(0, config.noise, (n, 2, s, s))
        self._images = torch.from_numpy(images.astype(np.float32))
        self._labels = label.astype(np.int64)
        self._catalog = Table({"id": np.arange(n), "x": x0, "y": y0, "sigma": sigma, "axis_ratio": q})

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int):
        return {"image": self._images[index], "label": int(self._labels[index]), "index": index}

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=("g", "r"), classes=("round", "long"),
                           class_descriptions=("round blob", "elongated blob"), image_size=self.config.size)

    def catalog(self) -> Table:
        return self._catalog

    def labels(self) -> np.ndarray:
        return self._labels
