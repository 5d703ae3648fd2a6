"""``trainer.min_steps``: a small training split (e.g. a small ``train_subset``) still gets that many optimiser steps."""

from __future__ import annotations

import json

import pytest
from astropy.table import Table

from astrotl.config import TrainerConfig
from astrotl.engine import epochs_for_min_steps


@pytest.mark.parametrize("n_train, kwargs, expected", [
    (60, {}, 34),                                        # 60 // 16 = 3 steps per epoch -> ceil(100 / 3)
    (600, {}, 6),                                        # 37 steps per epoch: max_epochs already gives more
    (10, {}, 100),                                       # fewer samples than a batch: one (partial) batch per epoch
    (60, {"min_steps": 0}, 6),                           # off
    (60, {"accumulate_grad_batches": 3}, 100),           # one optimiser step per epoch
    (600, {"limit_train_batches": 5}, 20),
    (600, {"limit_train_batches": 0.5}, 6),              # 18 steps per epoch
])
def test_epochs_for_min_steps(n_train, kwargs, expected):
    t = TrainerConfig(**{"max_epochs": 6, "batch_size": 16, "min_steps": 100, **kwargs})
    assert epochs_for_min_steps(t, n_train) == expected


def test_epochs_for_min_steps_counts_batches_per_process():
    t = TrainerConfig(max_epochs=1, batch_size=16, min_steps=12)
    assert epochs_for_min_steps(t, 64) == 3          # 4 steps per epoch
    assert epochs_for_min_steps(t, 64, world_size=2) == 6  # 2 steps per epoch on each of two processes


def test_min_steps_raises_the_epochs_of_a_small_subset(cli, tiny_task, tmp_path):
    task = tiny_task("ms", trainer={"max_epochs": 1, "min_steps": 3},
                     train_subset={"size": 20, "unit": "samples"})  # 20 samples < batch 32: 1 step per epoch
    code, out, err = cli("run", task)
    assert code == 0, err
    run = tmp_path / "runs" / "ms"
    assert len(Table.read(run / "history.ecsv")) == 3
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_negative_min_steps_is_a_one_line_error(cli, tiny_task):
    code, out, err = cli("run", tiny_task("bad", trainer={"min_steps": -1}))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("astrotl: error:") and "min_steps" in lines[0]
