"""Helpers for the data-in tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testutils import REPO, shared_data_dir  # noqa: E402,F401 -- one definition for all test folders


def require_shared(*parts: str) -> Path:
    """Path inside the shared data folder, or ``pytest.skip`` when it is not there."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data not found (set ASTROTL_SHARED_DATA or put it at ../shared/data)")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} not found")
    return path
