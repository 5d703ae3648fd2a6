"""Fixtures for the core tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty, private weights dir / torch hub / HF cache; downloads not allowed."""
    d = {"weights": tmp_path / "wdir", "torch": tmp_path / "torch", "hf": tmp_path / "hf"}
    d["weights"].mkdir()
    monkeypatch.setenv("ASTROTL_WEIGHTS_DIR", str(d["weights"]))
    monkeypatch.setenv("TORCH_HOME", str(d["torch"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(d["hf"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ASTROTL_ALLOW_DOWNLOAD", raising=False)
    return d
