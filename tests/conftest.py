"""Shared fixtures: a session-wide simulation cache, tiny task files, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$ASTROTL_SHARED_DATA`` or ``<repo>/../shared/data`` if it exists, else None."""
    env = os.environ.get("ASTROTL_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


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


TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "phangs_clusters"},
    "data": {"name": "phangs_sim", "n_train": 64, "n_val": 32, "n_test": 40, "size": 16},
    "backbone": {"name": "resnet18", "weights": "none"},
    "head": {"name": "linear"},
    "optim": {"lr": 0.003, "scheduler": "none"},
    "trainer": {"max_epochs": 1, "batch_size": 32, "accelerator": "cpu", "devices": 1,
                "progress_bar": False, "logger": "none"},
}


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


def run_cli_subprocess(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run the installed ``astrotl`` console script in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    exe = Path(sys.executable).with_name("astrotl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "astrotl"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)
