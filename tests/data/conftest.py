"""Fixtures for the data-in tests: tiny FITS mosaics and catalogues made in tmp_path, and the shared real data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import make_fits  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """``$ASTROTL_SHARED_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("ASTROTL_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


def require_shared(*parts: str) -> Path:
    """Path inside the shared data folder, or ``pytest.skip`` when it is not there."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data not found (set ASTROTL_SHARED_DATA or put it at ../shared/data)")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} not found")
    return path


@pytest.fixture
def mosaic(tmp_path) -> dict:
    """Five 120 x 100 band mosaics (HDU 'SCI', WCS, NaN corner) and an ECSV catalogue with labels."""
    images = make_fits.make_mosaic(tmp_path / "mosaic")
    catalog = make_fits.make_catalog(tmp_path / "catalog.ecsv")
    return {"dir": tmp_path, "images": {b: str(p) for b, p in images.items()}, "catalog": str(catalog)}


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"
