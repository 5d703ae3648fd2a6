"""Helpers shared by the test folders (a uniquely named module: `conftest` is ambiguous across folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$ASTROTL_SHARED_DATA`` or ``<repo>/../shared/data`` if it exists, else None."""
    env = os.environ.get("ASTROTL_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


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


def run_cli_subprocess(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run the installed ``astrotl`` console script in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    exe = Path(sys.executable).with_name("astrotl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "astrotl"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)
