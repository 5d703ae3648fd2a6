"""The run directory: what a run writes, and the rules for reusing one.

``runs/<name>/`` holds::

    run.json               status (running / finished / failed / interrupted), timings, versions, weights provenance
    config.resolved.yaml   the full configuration with every default, to repeat the run exactly
    metrics.json           all metrics (flat), plus metrics.ecsv (name, value)
    predictions.ecsv       one row per test sample: catalogue columns + true / predicted class + probabilities
    tables/*.ecsv          confusion matrix, per-class scores, binned accuracies, ...
    history.ecsv           per-epoch training and validation metrics
    plots/*.png            confusion matrix, training curves, task plots
    checkpoints/           Lightning checkpoints (best.ckpt, last.ckpt) for --resume
    model.safetensors      trained weights (backbone + head) with metadata
    backbone.safetensors   the fine-tuned backbone alone: `weights: runs/<name>/backbone.safetensors`
    report.md              a short human-readable summary linking the above
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .io import write_json

RUN_FILE = "run.json"


class RunDirectory:
    """A run's output directory and its status file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def tables(self) -> Path:
        return self.path / "tables"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def status(self) -> dict[str, Any] | None:
        f = self.path / RUN_FILE
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": "unreadable"}

    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Raise :class:`RunDirError` if this directory may not be used as asked. Changes nothing."""
        if overwrite and resume:
            raise RunDirError("--overwrite and --resume contradict each other; choose one")
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"output path '{p}' exists and is a file; choose another name or output_dir")
        exists = p.is_dir() and any(p.iterdir())
        if resume:
            if not exists:
                raise RunDirError(f"nothing to resume: '{p}' does not exist or is empty; run without --resume")
            if not self.last_checkpoint.is_file():
                raise RunDirError(f"nothing to resume in '{p}': no checkpoints/last.ckpt (the run stopped before its "
                                  f"first epoch ended); start again with --overwrite")
            return
        if not exists:
            return
        st = self.status()
        if st is None:
            raise RunDirError(f"output directory '{p}' is not empty and is not an astrotl run; choose another "
                              f"name (--set name=...) or output_dir, astrotl will not delete it")
        if overwrite:
            return
        state = st.get("status", "unknown")
        if state == "finished":
            raise RunDirError(f"'{p}' already holds a finished run; use --overwrite to replace it, --resume to "
                              f"re-evaluate it, or --set name=<new name>")
        raise RunDirError(f"'{p}' holds an unfinished run (status: {state}); continue it with --resume or start "
                          f"again with --overwrite")

    def prepare(self, *, overwrite: bool, resume: bool) -> None:
        """Create (or clear with ``overwrite``) the directory after :meth:`check` passed."""
        self.check(overwrite=overwrite, resume=resume)
        if overwrite and self.path.is_dir():
            shutil.rmtree(self.path)
        for d in (self.path, self.checkpoints, self.plots, self.tables):
            d.mkdir(parents=True, exist_ok=True)

    def write_status(self, **fields: Any) -> None:
        current = self.status() or {}
        current.update(fields)
        write_json(self.path / RUN_FILE, current)
