"""Shared fixtures: a session-wide simulation cache, tiny task files, a CLI runner."""

from __future__ import annotations

import os

from pathlib import Path

import pytest
import yaml

from testutils import REPO, TINY, run_cli_subprocess, shared_data_dir  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """All tests share one simulation cache so each tiny data set is simulated once per session."""
    cache = os.environ.get("ASTROTL_TEST_CACHE") or str(tmp_path_factory.mktemp("astrotl_cache"))
    old = os.environ.get("ASTROTL_CACHE_DIR")
    os.environ["ASTROTL_CACHE_DIR"] = cache
    yield Path(cache)
    if old is None:
        os.environ.pop("ASTROTL_CACHE_DIR", None)
    else:
        os.environ["ASTROTL_CACHE_DIR"] = old


@pytest.fixture
def tiny_task(tmp_path):
    """Write a tiny PHANGS task file into tmp_path; keyword overrides are merged per section."""

    def make(name: str = "tiny", **sections) -> Path:
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
        cfg["name"] = name
        cfg["output_dir"] = str(tmp_path / "runs")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make


@pytest.fixture
def cli(capsys):
    """Run ``astrotl`` in-process: returns (exit code, stdout, stderr)."""
    from astrotl.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
