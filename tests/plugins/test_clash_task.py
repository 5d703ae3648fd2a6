"""The CLASH plugin's task (clash_morphology), its task files, the shift augmentation it uses and the
label-efficiency grid (``astrotl compare tasks/clash_label_efficiency.yaml``), end to end on tiny simulated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.data import random_shift
from astrotl.tasks.soft_labels import SoftLabelsTask, SoftLabelsTaskConfig, soft_label_scores
from astrotl_clash.simulate import CLASH_BANDS, CLASSES
from astrotl_clash.task import ClashMorphologyTask, ClashMorphologyTaskConfig, band_order, stamp_mean_rmse
from testutils import REPO

TINY_BANDS = ["F160W", "F275W", "F606W"]  # deliberately not in wavelength order
TRAINER = {"max_epochs": 1, "batch_size": 16, "num_threads": 1, "logger": "none", "progress_bar": False,
           "accelerator": "cpu", "devices": 1}


def _shrunk(tmp_path: Path, name: str, *, pre=(24, 8, 8), target=(6, 3, 3)) -> Path:
    """tasks/clash_morphology.yaml with tiny stages (stage sizes live in the stages list, which --set cannot reach)."""
    d = yaml.safe_load((REPO / "tasks" / "clash_morphology.yaml").read_text())
    d["name"] = name
    d["output_dir"] = str(tmp_path / "runs")
    d["data"]["size"] = 16
    d["trainer"].update(TRAINER)
    d["stages"][0]["data"].update(n_train=pre[0], n_val=pre[1], n_test=pre[2])
    d["stages"][-1]["data"].update(n_train=target[0], n_val=target[1], n_test=target[2], bands=TINY_BANDS)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


# ---------------------------------------------------------------------- shift augmentation (soft_labels)


def test_random_shift_moves_by_whole_pixels_within_the_limit_and_repeats_edges():
    x = torch.arange(4 * 2 * 20 * 20, dtype=torch.float32).reshape(4, 2, 20, 20)
    y = random_shift(x, 0.1, torch.Generator().manual_seed(1))  # up to 2 px
    assert y.shape == x.shape
    found = []
    for i in range(4):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i, :, max(dy, 0): 20 + min(dy, 0), max(dx, 0): 20 + min(dx, 0)],
                                x[i, :, max(-dy, 0): 20 + min(-dy, 0), max(-dx, 0): 20 + min(-dx, 0)])]
        assert len(match) == 1, match
        dy, dx = match[0]
        found.append((dy, dx))
        if dy > 0:  # rows shifted in at the top repeat the image's first row (edges repeated)
            assert torch.equal(y[i, :, :dy], y[i, :, dy: dy + 1].expand(-1, dy, -1))
        if dx < 0:  # columns shifted in at the right repeat its last column
            assert torch.equal(y[i, :, :, 20 + dx:], y[i, :, :, 19 + dx: 20 + dx].expand(-1, -1, -dx))
    assert any(s != (0, 0) for s in found)
    again = random_shift(x, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(y, again)  # seeded: a resumed run draws the same shifts
    assert torch.equal(random_shift(x, 0.0), x)


def test_soft_labels_max_shift_is_applied_after_the_rotation_and_validated():
    from pydantic import ValidationError

    from astrotl.interfaces import DatasetInfo

    info = DatasetInfo(bands=("flux",), targets=("a", "b"))
    img = torch.zeros(8, 1, 12, 12)
    img[:, :, 5:7, 5:7] = 1.0
    plain = SoftLabelsTask(SoftLabelsTaskConfig(augment="none"), info)
    assert torch.equal(plain.batch_augment({"image": img.clone()}, torch.Generator().manual_seed(0))["image"], img)
    shifted = SoftLabelsTask(SoftLabelsTaskConfig(augment="none", max_shift=0.25), info)
    out = shifted.batch_augment({"image": img.clone()}, torch.Generator().manual_seed(0))["image"]
    assert not torch.equal(out, img) and torch.allclose(out.sum(dim=(1, 2, 3)), img.sum(dim=(1, 2, 3)))
    with pytest.raises(ValidationError, match="max_shift"):
        SoftLabelsTaskConfig(max_shift=0.6)


# ---------------------------------------------------------------------- task pieces


def test_band_order_and_stamp_mean_rmse():
    assert band_order(["F160W", "F225W", "F814W", "F110W"]) == ["F225W", "F814W", "F110W", "F160W"]
    assert band_order(list(CLASH_BANDS)[::-1]) == list(CLASH_BANDS)
    rng = np.random.default_rng(0)
    t = rng.dirichlet(np.ones(5), size=50)
    p = rng.dirichlet(np.ones(5), size=50)
    # the mean of per-stamp RMSEs never exceeds the RMSE over all stamps and classes (Jensen)
    assert stamp_mean_rmse(t, p) < soft_label_scores(t, p)["rmse"]
    assert stamp_mean_rmse(t, t) == 0.0


def test_task_defaults_are_the_papers():
    cfg = ClashMorphologyTaskConfig()
    assert cfg.loss == "rmse" and cfg.rmse_by == ["band"]
    assert ClashMorphologyTask.kind == "soft_labels" and ClashMorphologyTask.headline_metric == "rmse"


def test_task_files_validate(cli):
    for name, stages in (("clash_morphology", "candels, clash"), ("clash_paper", "candels, clash")):
        code, out, err = cli("validate", REPO / "tasks" / f"{name}.yaml")
        assert code == 0, err
        assert f"task clash_morphology, data clash_sim" in out and f"stages {stages}" in out
    for name in ("clash_pretrain", "clash_label_efficiency"):  # single runs: the pre-training, the compare grid
        code, out, err = cli("validate", REPO / "tasks" / f"{name}.yaml")
        assert code == 0, err
        assert "task clash_morphology, data clash_sim" in out and "stages" not in out
    paper = yaml.safe_load((REPO / "tasks" / "clash_paper.yaml").read_text())
    assert paper["data"]["size"] == 80 and paper["task"]["loss"] == "rmse" and paper["task"]["max_shift"] == 0.05
    assert paper["optim"] == {**paper["optim"], "optimizer": "adam", "lr": 5.0e-5}


# ---------------------------------------------------------------------- the two-stage task end to end


def test_two_stage_task_end_to_end(cli, tmp_path):
    p = _shrunk(tmp_path, "clash2")
    code, out, err = cli("run", p)
    assert code == 0, err
    assert "final stage 'clash': test RMSE" in out
    run = tmp_path / "runs" / "clash2"
    ft = run / "stages" / "clash"
    st = json.loads((ft / "run.json").read_text())
    assert st["status"] == "finished" and st["weights"]["source"] != "random"
    cfg = yaml.safe_load((ft / "config.resolved.yaml").read_text())
    assert cfg["backbone"]["weights"] == f"run:{(run / 'stages' / 'candels').resolve()}"
    m = json.loads((ft / "metrics.json").read_text())["metrics"]
    assert m["n_test"] == 9 and m["n_galaxies"] == 3 and m["n_bands"] == 3
    assert 0 < m["test_rmse_stamp_mean"] <= m["test_rmse"] < 1
    assert 0 < m["test_rmse_vote_noise"] < 1 and 0 < m["test_rmse_vs_expected"] < 1
    assert all(f"test_mae_{c}" in m for c in ("spheroid", "disk", "irregular", "point_source", "unclassifiable"))
    # per band: one row per band, in wavelength order, with the per-class RMSE
    by_band = Table.read(ft / "tables" / "rmse_by_band.ecsv")
    assert list(by_band["band"]) == ["F275W", "F606W", "F160W"] and list(by_band["n"]) == [3, 3, 3]
    assert {"pivot_nm", "rmse_spheroid", "rmse_unclassifiable", "mean_true_disk"} <= set(by_band.colnames)
    preds = Table.read(ft / "predictions.ecsv")
    for row in by_band:
        sel = preds[preds["band"] == row["band"]]
        t = np.stack([np.asarray(sel[f"true_{c}"], float) for c in CLASSES], axis=1)
        q = np.stack([np.asarray(sel[f"p_{c}"], float) for c in CLASSES], axis=1)
        assert row["rmse"] == pytest.approx(float(np.sqrt(np.mean((q - t) ** 2))), rel=1e-6)
    # the catalogue: one row per (galaxy, band) with the five probabilities summing to 1
    cat = Table.read(ft / "tables" / "catalogue.ecsv")
    assert len(cat) == 9 and len(set(zip(cat["galaxy_id"], cat["band"]))) == 9
    probs = np.stack([np.asarray(cat[f"p_{c}"], float) for c in CLASSES], axis=1)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for png in ("predicted_vs_true", "rmse_by_band", "rmse_band_class", "residuals"):
        assert (ft / "plots" / f"{png}.png").stat().st_size > 1000
    report = (ft / "report.md").read_text()
    assert "sqrt( 1/(N K) sum_i sum_k (p_ik - t_ik)^2 )" in report and "0.0991" in report
    assert "vote-noise floor" in report and "| F275W |" in report
    assert (run / "report.md").is_file() and (run / "stages.ecsv").is_file()


# ---------------------------------------------------------------------- label efficiency (astrotl compare)


def _tiny(source: str, tmp_path: Path, **data) -> dict:
    d = yaml.safe_load((REPO / "tasks" / source).read_text())
    d["output_dir"] = str(tmp_path / "runs")
    d["data"].update(size=16, **data)
    d["trainer"].update(TRAINER)
    return d


def _le_files(tmp_path: Path, **compare) -> tuple[Path, Path]:
    """The repository's pre-training and label-efficiency files, shrunk: 16 + 6 + 4 CANDELS-like galaxies; a pool
    of 5 CLASH-like training galaxies (2 validation, 3 test) in three bands."""
    pre = _tiny("clash_pretrain.yaml", tmp_path, n_train=16, n_val=6, n_test=4)
    le = _tiny("clash_label_efficiency.yaml", tmp_path, n_train=5, n_val=2, n_test=3, bands=TINY_BANDS)
    le["trainer"]["min_steps"] = 2  # 2 galaxies x 3 bands = 6 stamps: 1 step per epoch -> 2 epochs
    le["compare"]["grid"]["backbone.weights"]["finetuned"] = f"run:{tmp_path / 'runs' / 'clash_pretrain'}"
    le["compare"].update(out=str(tmp_path / "le"), **compare)
    paths = tmp_path / "clash_pretrain.yaml", tmp_path / "clash_label_efficiency.yaml"
    for path, d in zip(paths, (pre, le)):
        path.write_text(yaml.safe_dump(d, sort_keys=False))
    return paths


def test_label_efficiency_grid_pairs_the_modes_by_seed():
    le = yaml.safe_load((REPO / "tasks" / "clash_label_efficiency.yaml").read_text())
    pre = yaml.safe_load((REPO / "tasks" / "clash_pretrain.yaml").read_text())
    grid = le["compare"]["grid"]
    assert grid["backbone.weights"] == {"finetuned": "run:runs/clash_pretrain", "scratch": "none"}
    assert grid["train_subset.size"] == [10, 25, 50, 100] and le["data"]["n_train"] >= 100
    assert le["train_subset"]["unit"] == "groups" and le["compare"]["seed_keys"] == ["seed", "train_subset.seed"]
    assert le["data"]["domain"] == "clash" and pre["data"]["domain"] == "candels"
    for key in ("task", "backbone", "head"):  # the same network and loss in both steps
        assert pre[key] == le[key], key
    assert pre["data"]["size"] == le["data"]["size"] and le["trainer"]["min_steps"] == 100
    assert le["trainer"]["early_stopping"]["enabled"] is False  # early stopping would undo the floor on small subsets


@pytest.mark.slow
def test_label_efficiency_tiny_grid_end_to_end(cli, tmp_path):
    pre_file, le_file = _le_files(tmp_path, seeds=[0, 1], executor="debug")
    args = ("compare", le_file, "--grid", "train_subset.size=2,4")
    # without the pre-training the fine-tuned cells are skipped, with a reason; nothing runs in a dry run
    code, out, err = cli(*args, "--dry-run")
    assert code == 0, err
    assert out.count("skipped: weights unavailable") == 4 and "8 cells (4 to run" in out
    code, out, err = cli("run", pre_file)
    assert code == 0, err
    code, out, err = cli(*args)
    assert code == 0, err
    out_dir = tmp_path / "le"
    cells = Table.read(out_dir / "cells.ecsv")
    assert len(cells) == 8 and set(cells["status"]) == {"finished"}
    pre = (tmp_path / "runs" / "clash_pretrain").resolve()
    for seed in (0, 1):
        ft = out_dir / "cells" / f"weights-finetuned__size-4__seed-{seed}"
        sc = out_dir / "cells" / f"weights-scratch__size-4__seed-{seed}"
        ft_cfg = yaml.safe_load((ft / "config.resolved.yaml").read_text())
        sc_cfg = yaml.safe_load((sc / "config.resolved.yaml").read_text())
        assert Path(ft_cfg["backbone"]["weights"][4:]).resolve() == pre and sc_cfg["backbone"]["weights"] == "none"
        # both modes of one seed train on the same galaxies (the subset seed is the run seed)
        assert ft_cfg["train_subset"] == {"size": 4, "unit": "groups", "seed": seed, "stratify": True} \
            == sc_cfg["train_subset"]
        assert json.loads((ft / "run.json").read_text())["weights"]["source"] != "random"
    small = out_dir / "cells" / "weights-scratch__size-2__seed-0"
    assert len(Table.read(small / "predictions.ecsv")) == 9  # 3 test galaxies x 3 bands
    assert len(Table.read(small / "history.ecsv")) == 2  # trainer.min_steps: 2 steps of one batch
    summary = Table.read(out_dir / "summary.ecsv")
    assert len(summary) == 4 and {"test_rmse_mean", "test_rmse_std", "test_rmse_n"} <= set(summary.colnames)
    paired = Table.read(out_dir / "paired.ecsv")  # fine-tuned vs scratch at each size (2 seeds), and pooled
    modes = paired[paired["axis"] == "backbone.weights"]
    assert len(modes) == 3 and set(modes["a"]) == {"finetuned"} and set(modes["b"]) == {"scratch"}
    assert list(modes["n_pairs"]) == [2, 2, 4]
    assert (out_dir / "learning_curve.png").stat().st_size > 1000
    assert "train_subset.size" in (out_dir / "report.md").read_text()
    # rerunning keeps the finished cells untouched
    stamp = (small / "run.json").stat().st_mtime_ns
    code, out, err = cli(*args)
    assert code == 0, err
    assert (small / "run.json").stat().st_mtime_ns == stamp
    # a size larger than the pool fails that cell, with the reason in the report, and the exit code says so
    code, out, err = cli(*args[:2], "--grid", "train_subset.size=99", "--grid", "backbone.weights=none",
                         "--seeds", "0", "--out", tmp_path / "le_big")
    assert code == 1
    assert "train_subset.size=99 but the training split has only 5" in (tmp_path / "le_big" / "report.md").read_text()


@pytest.mark.parametrize("args,match", [
    (["--grid", "train_subset.size=0,10"], r"'weights-finetuned__size-0__seed-0' \(backbone.weights=finetuned, "
                                           r"train_subset.size=0\) is invalid.*train_subset.size"),
    (["--grid", "train_subset.sise=10"], r"unknown key 'train_subset.sise' \(did you mean 'train_subset.size'\?\)"),
    (["--set", "trainer.min_steps=-1"], r"trainer.min_steps"),
    (["--seeds", "0,x"], r"--seeds '0,x' is not a comma-separated list of integers"),
])
def test_label_efficiency_bad_input_is_one_line_exit_2(cli, tmp_path, args, match):
    import re

    _, le_file = _le_files(tmp_path)
    code, out, err = cli("compare", le_file, *args)
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not (tmp_path / "le").exists()  # nothing ran, nothing written


def test_docstring_examples():
    import doctest

    from astrotl.tasks import soft_labels
    from astrotl_clash import task

    for module in (task, soft_labels):
        assert doctest.testmod(module).failed == 0, module.__name__
