"""Fixtures for the data-in tests: tiny FITS mosaics and catalogues made in tmp_path, and the shared real data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import make_fits  # noqa: E402

from data_helpers import REPO, require_shared, shared_data_dir  # noqa: E402,F401


@pytest.fixture
def mosaic(tmp_path) -> dict:
    """Five 120 x 100 band mosaics (HDU 'SCI', WCS, NaN corner) and an ECSV catalogue with labels."""
    images = make_fits.make_mosaic(tmp_path / "mosaic")
    catalog = make_fits.make_catalog(tmp_path / "catalog.ecsv")
    return {"dir": tmp_path, "images": {b: str(p) for b, p in images.items()}, "catalog": str(catalog)}


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"
