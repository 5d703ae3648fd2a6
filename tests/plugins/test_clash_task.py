"""The CLASH plugin's task (clash_morphology), its task files, the shift augmentation it uses and the
clash-label-efficiency command, end to end on tiny simulated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.tasks.soft_labels import SoftLabelsTask, SoftLabelsTaskConfig, random_shift, soft_label_scores
from astrotl_clash.label_efficiency import MARKER, markdown, summarise
from astrotl_clash.simulate import CLASH_BANDS, CLASSES
from astrotl_clash.task import ClashMorphologyTask, ClashMorphologyTaskConfig, band_order, stamp_mean_rmse
from testutils import REPO

TINY_BANDS = ["F160W", "F275W", "F606W"]  # deliberately not in wavelength order
TRAINER = {"max_epochs": 1, "batch_size": 16, "num_threads": 1, "logger": "none", "progress_bar": False,
           "accelerator": "cpu", "devices": 1}


def _shrunk(tmp_path: Path, name: str, *, source: str = "tasks/clash_morphology.yaml", pre=(24, 8, 8),
            target=(6, 3, 3)) -> Path:
    """The repository's task file with tiny stages (stage sizes live in the stages list, which --set cannot reach)."""
    d = yaml.safe_load((REPO / source).read_text())
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
    for name, stages in (("clash_morphology", "candels, clash"), ("clash_paper", "candels, clash"),
                         ("clash_label_efficiency", "candels, clash")):
        code, out, err = cli("validate", REPO / "tasks" / f"{name}.yaml")
        assert code == 0, err
        assert f"task clash_morphology, data clash_sim" in out and f"stages {stages}" in out
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


# ---------------------------------------------------------------------- label efficiency


def _le_task(tmp_path: Path) -> Path:
    return _shrunk(tmp_path, "le", source="tasks/clash_label_efficiency.yaml", pre=(16, 6, 4), target=(5, 2, 3))


@pytest.mark.slow
def test_label_efficiency_tiny_grid_and_resume(cli, tmp_path):
    task = _le_task(tmp_path)
    out_dir = tmp_path / "le_out"
    args = ["clash-label-efficiency", out_dir, "--task", task, "--min-steps", "0", "--sizes", "2", "4",
            "--seeds", "0", "1", "--epochs", "1", "--pretrain-epochs", "1"]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "| galaxies | fine-tuned RMSE" in out and "| 2 |" in out and "| 4 |" in out
    cells = Table.read(out_dir / "label_efficiency_cells.ecsv")
    assert len(cells) == 8 and set(cells["mode"]) == {"finetune", "scratch"}
    assert sorted(set(cells["size"])) == [2, 4] and np.isfinite(np.asarray(cells["rmse"], float)).all()
    assert list(cells["n_train_stamps"][cells["size"] == 2]) == [6] * 4  # 2 galaxies x 3 bands
    ft = yaml.safe_load((out_dir / "cells" / "finetune_n4_seed1" / "config.resolved.yaml").read_text())
    sc = yaml.safe_load((out_dir / "cells" / "scratch_n4_seed1" / "config.resolved.yaml").read_text())
    assert ft["backbone"]["weights"] == f"run:{(out_dir / 'pretrain').resolve()}" and sc["backbone"]["weights"] == "none"
    assert ft["train_subset"] == {"size": 4, "unit": "groups", "seed": 1, "stratify": True} == sc["train_subset"]
    assert "backbone and head from the pre-training run" in ft["description"] and "fresh head" in sc["description"]
    # the fine-tuned cell started from the pre-trained head: after one short epoch it is still close to it
    from safetensors.torch import load_file

    pre = load_file(str(out_dir / "pretrain" / "model.safetensors"))
    cell = load_file(str(out_dir / "cells" / "finetune_n4_seed1" / "model.safetensors"))
    scratch = load_file(str(out_dir / "cells" / "scratch_n4_seed1" / "model.safetensors"))
    head = [k for k in cell if k.endswith(".weight") and cell[k].ndim == 2 and cell[k].shape[0] == 5][-1]
    assert (cell[head] - pre[head]).abs().mean() < 0.5 * (scratch[head] - pre[head]).abs().mean()
    assert len(Table.read(out_dir / "cells" / "finetune_n2_seed0" / "predictions.ecsv")) == 9  # 3 test galaxies x 3
    summary = Table.read(out_dir / "label_efficiency.ecsv")
    assert len(summary) == 4 and list(summary["n_seeds"]) == [2] * 4
    assert (out_dir / "label_efficiency.png").stat().st_size > 1000
    assert "fine-tuned" in (out_dir / "label_efficiency.md").read_text()
    # rerun after one cell failed: the finished runs are skipped, the failed cell runs again
    stamp = (out_dir / "cells" / "finetune_n2_seed0" / "run.json").stat().st_mtime_ns
    pre_stamp = (out_dir / "pretrain" / "run.json").stat().st_mtime_ns
    failed = out_dir / "cells" / "scratch_n4_seed1" / "run.json"
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "status": "failed"}))
    code, out2, err = cli(*args)
    assert code == 0, err
    assert (out_dir / "cells" / "finetune_n2_seed0" / "run.json").stat().st_mtime_ns == stamp
    assert (out_dir / "pretrain" / "run.json").stat().st_mtime_ns == pre_stamp
    assert json.loads(failed.read_text())["status"] == "finished"
    assert len(Table.read(out_dir / "label_efficiency_cells.ecsv")) == 8
    # the same folder with other settings is refused, not silently mixed
    code, _, err = cli(*args[:-4], "--epochs", "2", "--pretrain-epochs", "1")
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1
    assert "another configuration" in err and "trainer" in err


@pytest.mark.parametrize("extra,match", [
    (["--sizes", "2", "99"], r"--sizes 99 is larger than the 5 galaxies in the training split of stage 'clash'.*"
                             r"--target-set data.n_train=99"),
    (["--sizes", "0"], "at least 1 galaxy"),
    (["--sizes", "2", "2"], "repeats a size"),
    (["--seeds", "-1"], "seeds must be >= 0"),
    (["--epochs", "0"], "at least 1 epoch"),
    (["--set", "data.bogus=1"], "unknown key 'data.bogus'"),
    (["--target-set", "data.n_train=3", "--sizes", "4"], "larger than the 3 galaxies"),
])
def test_label_efficiency_bad_inputs_are_one_line_errors(cli, tmp_path, extra, match):
    import re

    out_dir = tmp_path / "bad_out"
    code, out, err = cli("clash-label-efficiency", out_dir, "--task", _le_task(tmp_path), *extra)
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not (out_dir / "pretrain").exists()  # nothing ran


def test_label_efficiency_plan_min_steps_and_head(tmp_path):
    from astrotl.errors import ConfigError
    from astrotl.plugins import load_registries
    from astrotl_clash.label_efficiency import plan, steps_per_epoch

    task = _le_task(tmp_path)  # target: 5 training galaxies x 3 bands, batch 16 -> 1 step per epoch
    reg = load_registries()
    pre, cells = plan(task, tmp_path / "o", reg, sizes=[2, 5], seeds=[0], epochs=1, min_steps=3)
    assert pre.run.name == "pretrain" and len(cells) == 4
    assert [c["config"].run.trainer.max_epochs for c in cells] == [3, 3, 3, 3]
    assert [c["n_train"] for c in cells] == [6, 6, 15, 15]
    assert [c["head_from_pretrain"] for c in cells] == [True, False, True, False]
    _, cells = plan(task, tmp_path / "o", reg, sizes=[2], seeds=[0], epochs=4, min_steps=0)
    assert cells[0]["config"].run.trainer.max_epochs == 4
    assert steps_per_epoch(600, 16) == 37 and steps_per_epoch(16, 16) == 1 and steps_per_epoch(17, 16) == 1
    with pytest.raises(ConfigError, match="--min-steps -1"):
        plan(task, tmp_path / "o", reg, sizes=[2], seeds=[0], min_steps=-1)


def test_label_efficiency_refuses_task_without_stages_and_foreign_folders(cli, tmp_path):
    d = yaml.safe_load((REPO / "tasks" / "clash_label_efficiency.yaml").read_text())
    stage = d.pop("stages")[-1]
    d["data"].update(stage["data"])
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(d))
    code, _, err = cli("clash-label-efficiency", tmp_path / "o1", "--task", single)
    assert code == 2 and "has 0 stage(s)" in err and err.count("\n") == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = cli("clash-label-efficiency", foreign, "--task", _le_task(tmp_path))
    assert code == 2 and "did not write" in err and MARKER in err
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    code, _, err = cli("clash-label-efficiency", tmp_path / "o2", "--task", tmp_path / "missing.yaml")
    assert code == 2 and "does not exist" in err


def test_summary_statistics_and_markdown():
    rows = [("finetune", 10, 0, 0.20), ("finetune", 10, 1, 0.22), ("finetune", 10, 2, 0.24),
            ("scratch", 10, 0, 0.30), ("scratch", 10, 1, 0.27), ("scratch", 10, 2, 0.30),
            ("finetune", 20, 0, 0.18), ("scratch", 20, 0, 0.19)]
    cells = Table(rows=rows, names=("mode", "size", "seed", "rmse"))
    s = summarise(cells)
    ft10 = s[(s["mode"] == "finetune") & (s["size"] == 10)][0]
    assert ft10["rmse_mean"] == pytest.approx(0.22) and ft10["rmse_std"] == pytest.approx(0.02)
    assert ft10["rmse_min"] == pytest.approx(0.20) and ft10["rmse_max"] == pytest.approx(0.24)
    assert ft10["gain_mean"] == pytest.approx((0.10 + 0.05 + 0.06) / 3) and ft10["n_pairs"] == 3
    one = s[(s["mode"] == "scratch") & (s["size"] == 20)][0]
    assert one["n_seeds"] == 1 and np.isnan(one["rmse_std"]) and one["gain_mean"] == pytest.approx(0.01)
    md = markdown(s)
    assert "| 10 | 0.2200 ± 0.0200 | 0.2900 ± 0.0173 | 0.0700 ± 0.0265 | 3 |" in md
    assert "| 20 | 0.1800 | 0.1900 | 0.0100 | 1 |" in md


def test_docstring_examples():
    import doctest

    from astrotl.tasks import soft_labels
    from astrotl_clash import label_efficiency, task

    for module in (task, label_efficiency, soft_labels):
        assert doctest.testmod(module).failed == 0, module.__name__
