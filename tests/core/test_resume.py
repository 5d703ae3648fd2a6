"""A run killed (SIGKILL) at any point and resumed with --resume ends exactly as the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

from testutils import run_cli_subprocess

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402

KILLRUN = Path(__file__).parent / "killrun.py"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = make(root / "data", n=96, size=16, seed=3)

    def task(name: str) -> Path:
        cfg = {
            "name": name, "seed": 7, "output_dir": str(root / "runs"),
            "task": {"name": "classification", "augment": "d4"},
            "data": {"name": "image_folder", "root": str(data), "id_col": "id", "file_pattern": "images/{id}.png",
                     "color": "grayscale", "split_fractions": [0.5, 0.25, 0.25]},
            "backbone": {"name": "resnet18", "weights": "none"},
            "head": {"name": "linear", "dropout": 0.3},
            "optim": {"lr": 0.003, "scheduler": "cosine"},
            "trainer": {"max_epochs": 4, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                        "logger": "none", "early_stopping": {"enabled": False}, "num_threads": 1},
        }
        p = root / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return p

    res = run_cli_subprocess("run", task("uninterrupted"), "--set", "name=uninterrupted")
    assert res.returncode == 0, res.stderr[-2000:]
    return root, task


def _outputs(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    test = {k: v for k, v in metrics.items() if k.startswith(("test_", "best_"))}
    preds = Table.read(run / "predictions.ecsv")
    hist = Table.read(run / "history.ecsv")
    return test, preds, hist


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid_epoch", "after_checkpoint", "final_write"])
def test_killed_and_resumed_equals_uninterrupted(setup, point):
    root, task = setup
    p = task(point)
    proc = subprocess.run([sys.executable, str(KILLRUN), str(p), point], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed, not finished
    run = root / "runs" / point
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    res = run_cli_subprocess("run", p, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    want_m, want_p, want_h = _outputs(root / "runs" / "uninterrupted")
    got_m, got_p, got_h = _outputs(run)
    assert got_m == pytest.approx(want_m, rel=1e-6, abs=1e-9), (point, got_m, want_m)
    assert list(got_p["pred_class"]) == list(want_p["pred_class"])
    np.testing.assert_allclose(np.asarray(got_p["p_round"]), np.asarray(want_p["p_round"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_h["val_loss"]), np.asarray(want_h["val_loss"]), rtol=1e-5, atol=1e-6)
    assert not [f for f in run.rglob(".*") if ".tmp" in f.name], "temporary files left behind"
