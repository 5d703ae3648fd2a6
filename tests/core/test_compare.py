"""``astrotl compare``: grids of runs on the core's tiny two-class data (16 px, 1 epoch), locally in parallel,
through submitit's debug and local executors, resumed after a kill, with failed cells retried; every bad
input is one line, exit 2 and nothing written; the paired comparison and the ensemble on hand-made tables."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402

from astrotl.compare import (CellJob, CellSpec, evaluate_ensemble, make_executor, make_plan,  # noqa: E402
                             paired_comparison, parse_grid_option, parse_seeds, summarise)
from astrotl.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("classes"), n=64, size=16, seed=0)


@pytest.fixture(scope="module")
def regs():
    from astrotl.plugins import load_registries

    return load_registries()


def _task(tmp_path: Path, data_root: Path, compare: dict | None = None, name: str = "core", **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", "augment": "none"},
        "data": {"name": "image_folder", "root": str(data_root), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"lr": 0.003, "scheduler": "none"},
        "trainer": {"max_epochs": 1, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1, "early_stopping": {"enabled": False}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    if compare is not None:
        cfg["compare"] = compare
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- parsing and planning (no training) -------------------------------------------------------------


def test_grid_and_seed_options_parse_as_yaml_values():
    assert parse_grid_option("optim.lr=1e-3,3e-4") == ("optim.lr", [0.001, 0.0003])
    assert parse_grid_option("train_subset.size=100,null") == ("train_subset.size", [100, None])
    assert parse_grid_option("backbone.weights=none,run:runs/gz1_pretrain") == \
        ("backbone.weights", ["none", "run:runs/gz1_pretrain"])
    assert parse_grid_option("data.class_fractions=[0.5,0.5],[0.25,0.75]")[1] == [[0.5, 0.5], [0.25, 0.75]]
    assert parse_grid_option("optim.lr=") == ("optim.lr", [])
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"--grid 'optim.lr' is not of the form key=v1,v2"):
        parse_grid_option("optim.lr")
    with pytest.raises(ConfigError, match=r"--seeds 'a,b' is not a comma-separated list of integers"):
        parse_seeds("a,b")


def test_plan_names_cells_from_values_and_divides_threads(tmp_path, classes_dir, regs):
    p = _task(tmp_path, classes_dir, compare={"grid": {"backbone.weights": {"random": "none", "auto": "auto"},
                                                       "train_subset.size": [8, 16]}, "seeds": [0, 1]},
              trainer={"num_threads": None})
    plan = make_plan(p, regs, workers=2)
    assert [c.name for c in plan.cells][:3] == ["weights-random__size-8__seed-0", "weights-random__size-8__seed-1",
                                                "weights-random__size-16__seed-0"]
    assert len(plan.cells) == 8 and all(c.state == "run" for c in plan.cells)
    cores = len(os.sched_getaffinity(0))
    assert plan.workers == 2 and plan.threads == max(1, cores // 2)
    cfg = plan.cells[2].config
    assert cfg.run.train_subset.size == 16 and cfg.run.seed == 0 and cfg.run.trainer.num_threads == plan.threads
    assert cfg.run.output_dir == str((plan.out / "cells").resolve()) and cfg.run.name == plan.cells[2].name
    assert cfg.run.compare is None  # a cell is an ordinary run
    assert not plan.out.exists()  # planning writes nothing
    # seed_keys: each seed also draws its own training subset
    plan = make_plan(p, regs, grid=["train_subset.size=8"], seeds="3")
    assert plan.cells[0].config.run.seed == 3 and plan.cells[0].config.run.train_subset.seed == 0
    p2 = _task(tmp_path, classes_dir, name="sk", compare={"seeds": [4], "seed_keys": ["seed", "train_subset.seed"]})
    assert make_plan(p2, regs).cells[0].config.run.train_subset.seed == 4


def test_every_task_type_plans_a_grid(tmp_path, classes_dir, regs, monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("ASTROTL_SMOKE_DATA", str(tmp_path / "nodata"))  # planning reads no data
    out = tmp_path / "o"
    soft = make_plan(repo / "tasks/smoke/soft_labels_tiny.yaml", regs, seeds="0,1", out=out, ensemble="seed",
                     grid=["task.loss=cross_entropy,dirichlet_multinomial"])
    losses = [c.config.component("task")[1].loss for c in soft.cells]
    assert losses == ["cross_entropy"] * 2 + ["dirichlet_multinomial"] * 2
    det = make_plan(repo / "tasks/smoke/detection_tiny.yaml", regs, grid=["task.match_iou=0.3,0.5"], out=out)
    assert [c.config.component("task")[1].match_iou for c in det.cells] == [0.3, 0.5]
    with pytest.raises(ConfigError, match="detection task with many rows per image: drop ensemble"):
        make_plan(repo / "tasks/smoke/detection_tiny.yaml", regs, out=out, ensemble="seed")
    stages = [{"name": "pretrain"}, {"name": "finetune", "backbone": {"weights": "stage:pretrain"}}]
    p = _task(tmp_path, classes_dir, name="staged", stages=stages)
    plan = make_plan(p, regs, grid=["stages.finetune.optim.lr=0.01,0.001", "trainer.max_epochs=1,2"], out=out)
    c = plan.cells[1]
    assert [st.run.optim.lr for st in c.config.stages] == [0.003, 0.01]  # only the fine-tuning stage changes
    assert [st.run.trainer.max_epochs for st in c.config.stages] == [2, 2]  # a top-level key reaches every stage
    assert c.name == "lr-0.01__max_epochs-2__seed-0"
    with pytest.raises(ConfigError, match="names stage 'fine'.*did you mean 'finetune'"):
        make_plan(p, regs, grid=["stages.fine.optim.lr=0.1"], out=out)
    assert not out.exists()


def test_unavailable_weights_are_skipped_with_a_note_in_the_dry_run(cli, tmp_path, classes_dir):
    missing = tmp_path / "runs" / "gz1_pretrain"
    grid = {"backbone.weights": {"random": "none", "gz1": f"run:{missing}"}}
    p = _task(tmp_path, classes_dir, compare={"grid": grid})
    code, out, err = cli("compare", p, "--dry-run")
    assert code == 0, err
    assert "weights-random__seed-0  will run (fresh)" in out
    assert re.search(r"weights-gz1__seed-0  skipped: weights unavailable: run directory .*gz1_pretrain' does not exist"
                     r".*astrotl run tasks/gz1_pretrain.yaml", out)
    assert "1 to run, 0 finished, 0 failed, 1 skipped" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,compare,match", [
    (["--grid", "trainer.max_epoch=1,2"], None,
     r"compare.grid: unknown key 'trainer.max_epoch' \(did you mean 'trainer.max_epochs'\?\)"),
    (["--grid", "optim.lr="], None, r"compare.grid: axis 'optim.lr' has no values"),
    ([], {"grid": {"train_subset.size": []}}, r"compare.grid: axis 'train_subset.size' has no values"),
    (["--grid", "optim.lr=0.001,-1"], None,
     r"compare cell 'lr--1__seed-0' \(optim.lr=-1\) is invalid, so no cell was run: .*bad value -1 for 'optim.lr'"),
    (["--grid", "backbone.name=resnet18,resnet81"], None,
     r"compare cell 'name-resnet81__seed-0' .* is invalid.*resnet81"),
    (["--grid", "name=a,b"], None, r"compare.grid: 'name' cannot be varied"),
    (["--grid", "seed=1,2"], None, r"'seed' is set from compare.seeds"),
    (["--seeds", "0,0"], None, r"seed 0 is given twice"),
    (["--ensemble", "optim.lrr"], {"grid": {"optim.lr": [0.1, 0.2]}},
     r"compare.ensemble.over: 'optim.lrr' \(did you mean 'optim.lr'\?\) is neither 'seed' nor a grid key"),
    ([], {"grdi": {}}, r"unknown key 'compare.grdi' \(did you mean 'grid'\?\)"),
    (["--executor", "slurm"], None, r"compare.executor: slurm runs cells through submitit, which is not installed"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(cli, tmp_path, classes_dir, monkeypatch, args, compare,
                                                          match):
    if "slurm" in args:
        monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    p = _task(tmp_path, classes_dir, compare=compare)
    before = _tree(tmp_path)
    code, out, err = cli("compare", p, *args)
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert _tree(tmp_path) == before and out == ""


def test_out_folder_that_is_not_a_compare_folder_is_refused(cli, tmp_path, classes_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = cli("compare", _task(tmp_path, classes_dir), "--out", out)
    assert code == 2 and "is not an astrotl compare folder" in err and err.count("\n") == 1
    assert _tree(out) == ["notes.txt"]


def test_slurm_executor_gets_the_resources_of_the_compare_block(cli, tmp_path, classes_dir, regs, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    code, _, err = cli("compare", _task(tmp_path, classes_dir, name="noslurm"), "--executor", "slurm")
    assert code == 2 and "this machine has no SLURM commands (sbatch, srun)" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    fake = tmp_path / "bin"  # submitit's SLURM executor wants to see srun; nothing is submitted here
    fake.mkdir()
    for tool in ("srun", "sbatch"):
        (fake / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    p = _task(tmp_path, classes_dir, compare={
        "grid": {"optim.lr": [0.1, 0.2]}, "executor": "slurm",
        "slurm": {"partition": "gpu", "time": "02:30:00", "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
                  "array_parallelism": 4, "setup": ["module load cuda"]}}, trainer={"num_threads": None})
    plan = make_plan(p, regs)
    assert plan.executor == "slurm" and plan.threads == 8
    assert all(c.config.run.trainer.num_threads == 8 for c in plan.cells)
    ex = make_executor(plan, tmp_path / "sub")
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 150 and params["gpus_per_node"] == 1
    assert params["cpus_per_task"] == 8 and params["mem"] == "32GB" and params["array_parallelism"] == 4
    assert params["setup"] == ["module load cuda"]
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=150" in script and "module load cuda" in script


def test_cell_job_requeues_as_a_resume_of_the_same_cell():
    from submitit.helpers import Checkpointable, DelayedSubmission

    spec = CellSpec(name="c", config={}, source=None, path="/x/cells/c", mode="fresh")
    job = CellJob()
    assert isinstance(job, Checkpointable)
    again = job.checkpoint(spec)
    assert isinstance(again, DelayedSubmission) and again.function is job
    assert again.args[0].mode == "resume" and again.args[0].path == spec.path and spec.mode == "fresh"


# -- statistics on hand-made tables ----------------------------------------------------------------


def test_paired_comparison_on_a_hand_made_summary():
    from scipy import stats

    rows = []
    acc = {("random", 100): [0.50, 0.52, 0.49, 0.51], ("gz1", 100): [0.55, 0.56, 0.50, 0.58],
           ("random", 300): [0.70, 0.71, 0.69, 0.72], ("gz1", 300): [0.72, 0.70, 0.73, 0.75]}
    for (init, size), vals in acc.items():
        for seed, v in enumerate(vals):
            rows.append((init, str(size), seed, "finished", v))
    rows.append(("gz1", "300", 4, "finished", 0.99))  # no partner with seed 4: not paired
    rows.append(("random", "300", 4, "failed", float("nan")))
    cells = Table(rows=rows, names=("init", "size", "seed", "status", "test_accuracy"))
    t = paired_comparison(cells, ["init", "size"], "test_accuracy", higher_is_better=True)
    by = {(r["axis"], r["where"]): r for r in t}
    r100 = by[("init", "size=100")]
    assert r100["a"] == "random" and r100["b"] == "gz1" and r100["n_pairs"] == 4
    d = np.array(acc[("random", 100)]) - np.array(acc[("gz1", 100)])
    assert r100["mean_diff"] == pytest.approx(d.mean()) and r100["std_diff"] == pytest.approx(d.std(ddof=1))
    assert r100["p_ttest"] == pytest.approx(stats.ttest_rel(acc[("random", 100)], acc[("gz1", 100)]).pvalue)
    assert r100["p_sign"] == pytest.approx(stats.binomtest(0, 4).pvalue) and r100["b_higher"] == 4
    assert r100["better"] == "gz1"
    pooled = by[("init", "all")]
    assert pooled["n_pairs"] == 8 and pooled["better"] == "gz1"
    d300 = np.array(acc[("random", 300)]) - np.array(acc[("gz1", 300)])
    assert pooled["mean_diff"] == pytest.approx(np.concatenate([d, d300]).mean())
    assert pooled["a_higher"] == 1 and pooled["b_higher"] == 7
    assert by[("size", "init=random")]["better"] == "300" and by[("size", "init=random")]["n_pairs"] == 4
    # lower is better (a loss): the same differences make 'random' the better one
    t2 = paired_comparison(cells, ["init", "size"], "test_accuracy", higher_is_better=False)
    assert {(r["axis"], r["where"]): r["better"] for r in t2}[("init", "size=100")] == "random"


def test_summary_is_mean_and_std_over_finished_seeds():
    cells = Table(rows=[("a", 0, "finished", 0.5, ""), ("a", 1, "finished", 0.7, ""), ("a", 2, "failed", np.nan, "x"),
                        ("b", 0, "skipped", np.nan, "weights unavailable")],
                  names=("init", "seed", "status", "test_accuracy", "note"))
    s = summarise(cells, ["init"])
    a = s[0]
    assert a["n_cells"] == 3 and a["n_finished"] == 2 and a["n_failed"] == 1
    assert a["test_accuracy_mean"] == pytest.approx(0.6)
    assert a["test_accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s[1]["n_skipped"] == 1 and np.isnan(s[1]["test_accuracy_mean"]) and "weights unavailable" in s[1]["notes"]


def test_ensemble_evaluation_against_its_members():
    from astrotl.ensemble import combine_predictions

    truth = ["1", "2", "3", "4", "1", "2"]
    members = {"s0": ["1", "2", "3", "4", "2", "2"],   # 5/6
               "s1": ["1", "3", "3", "4", "1", "1"],   # 4/6
               "s2": ["2", "2", "3", "1", "1", "2"]}   # 4/6
    tables = [Table({"id": np.arange(6), "true_class": truth, "pred_class": v}) for v in members.values()]
    ens = combine_predictions(tables, list(members), numeric_stats=True)
    ev = evaluate_ensemble(ens, list(members))
    assert ev["accuracy_mode"] == pytest.approx(6 / 6)  # the mode is right everywhere
    assert ev["member_accuracy_mean"] == pytest.approx(np.mean([5 / 6, 4 / 6, 4 / 6]))
    assert ev["member_accuracy_min"] == pytest.approx(4 / 6) and ev["member_accuracy_max"] == pytest.approx(5 / 6)
    assert ev["gain_over_members"] == pytest.approx(1 - np.mean([5 / 6, 4 / 6, 4 / 6]))
    assert ev["unanimous_fraction"] == pytest.approx(1 / 6) and ev["accuracy_unanimous"] == 1.0  # only id 2
    assert ev["accuracy_split"] == 1.0 and ev["quality_factor_mean"] == pytest.approx((5 * 2 / 3 + 1) / 6)


def test_weights_that_fell_back_to_random_are_noted(tmp_path):
    from astrotl.compare import _weights_note

    def cell(path: Path, weights: dict, stages: list[str] | None = None) -> Path:
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps({"status": "finished", "weights": weights}))
        if stages:
            (path / "config.resolved.yaml").write_text(yaml.safe_dump({"stages": [{"name": n} for n in stages]}))
        return path

    warn = "RANDOM INITIALISATION: weights: auto found no ImageNet weights offline"
    assert _weights_note(cell(tmp_path / "a", {"requested": "auto", "source": "random", "warning": warn})) == \
        ("auto", "random", warn)
    req, src, note = _weights_note(cell(tmp_path / "b", {"requested": "imagenet", "source": "random"}))
    assert note == "weights 'imagenet' were requested but the backbone was randomly initialised"
    assert _weights_note(cell(tmp_path / "c", {"requested": "none", "source": "random"}))[2] == ""
    root = cell(tmp_path / "d", {}, stages=["pre", "fine"])
    cell(root / "stages" / "pre", {"requested": "auto", "source": "random", "warning": warn})
    cell(root / "stages" / "fine", {"requested": "run:/x/stages/pre", "source": "run"})
    req, src, note = _weights_note(root)
    assert src == "random / run" and note == f"stage pre: {warn}"


# -- end to end ------------------------------------------------------------------------------------


def test_grid_through_submitit_debug_with_ensembles_skips_and_resume(cli, tmp_path, classes_dir):
    missing = tmp_path / "runs" / "gz1_pretrain"
    p = _task(tmp_path, classes_dir, compare={
        "grid": {"backbone.weights": {"random": "none", "gz1": f"run:{missing}"}, "train_subset.size": [8, 16]},
        "seeds": [0, 1], "executor": "debug", "ensemble": True, "out": str(tmp_path / "cmp")})
    code, out, err = cli("compare", p)
    assert code == 0, err
    assert "compared 8 cells: 4 finished, 4 skipped, 0 failed" in out
    cmp_dir = tmp_path / "cmp"
    cells = Table.read(cmp_dir / "cells.ecsv")
    fin = cells[cells["status"] == "finished"]
    assert len(fin) == 4 and set(fin["backbone.weights"]) == {"random"}
    for r in fin:  # every cell is an ordinary run directory
        run = cmp_dir / r["path"]
        assert _status(run)["status"] == "finished"
        m = json.loads((run / "metrics.json").read_text())["metrics"]
        assert m["n_train"] == int(r["train_subset.size"]) and r["test_accuracy"] == pytest.approx(m["test_accuracy"])
    skipped = cells[cells["status"] == "skipped"]
    assert len(skipped) == 4 and all("astrotl run tasks/gz1_pretrain.yaml" in n for n in skipped["note"])
    assert not any((cmp_dir / "cells" / c).exists() for c in skipped["cell"])
    s = Table.read(cmp_dir / "summary.ecsv")
    row = s[(s["backbone.weights"] == "random") & (s["train_subset.size"] == "16")][0]
    vals = fin[fin["train_subset.size"] == "16"]["test_accuracy"]
    assert row["test_accuracy_mean"] == pytest.approx(np.mean(vals)) and row["n_finished"] == 2
    assert row["test_accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
    paired = Table.read(cmp_dir / "paired.ecsv")
    assert list(paired["axis"]) == ["train_subset.size"] and paired["n_pairs"][0] == 2
    assert (cmp_dir / "learning_curve.png").stat().st_size > 1000
    ens = Table.read(cmp_dir / "ensembles.ecsv")
    assert set(ens["group"]) == {"weights-random__size-8", "weights-random__size-16"}
    for r in ens:
        members = fin[(fin["train_subset.size"] == r["group"].rsplit("-", 1)[1])]
        # each member's accuracy recomputed from the ensemble table equals the member's own test accuracy
        assert r["member_accuracy_mean"] == pytest.approx(np.mean(members["test_accuracy"]))
        table = Table.read(cmp_dir / r["file"])
        mode_acc = np.mean(np.asarray(table["class_mode"]).astype(str) == np.asarray(table["true_class"]).astype(str))
        assert r["accuracy_mode"] == pytest.approx(mode_acc) and r["n_members"] == 2
        assert {"class_mode", "quality_factor", "class_s0", "class_s1"} <= set(table.colnames)
    report = (cmp_dir / "report.md").read_text()
    assert "## Results: test accuracy (higher is better)" in report and "![test accuracy against" in report
    assert "## Ensembles (seed)" in report and "## Paired comparisons" in report
    assert "weights unavailable" in report and "gz1_pretrain" in report
    page = (cmp_dir / "index.html").read_text()
    for r in fin:
        assert f'href="{r["path"]}/report.md"' in page
    # run again: nothing is rerun
    mtimes = {r["cell"]: (cmp_dir / r["path"] / "run.json").stat().st_mtime_ns for r in fin}
    code, out, err = cli("compare", p)
    assert code == 0 and "4 finished, 4 skipped" in out, err
    assert mtimes == {r["cell"]: (cmp_dir / r["path"] / "run.json").stat().st_mtime_ns for r in fin}
    # a finished cell whose configuration changed is not silently mixed in
    code, _, err = cli("compare", p, "--set", "optim.lr=0.01")
    assert code == 2 and "finished with another configuration (optim.lr changed since)" in err


def test_failed_cells_are_reported_and_rerun_only_with_retry_failed(cli, tmp_path, classes_dir):
    p = _task(tmp_path, classes_dir, compare={"grid": {"data.labels": {"ok": "labels.csv", "late": "later.csv"}},
                                              "executor": "debug"})
    code, out, err = cli("compare", p)
    assert code == 1 and "1 finished, 0 skipped, 1 failed" in out
    assert err.count("\n") == 1 and "labels-late__seed-0" in err and "--retry-failed" in err
    cmp_dir = tmp_path / "runs" / "core_compare"
    report = (cmp_dir / "report.md").read_text()
    assert re.search(r"labels-late__seed-0` \(failed\): .*later.csv", report)
    ok = cmp_dir / "cells" / "labels-ok__seed-0"
    mtime = (ok / "run.json").stat().st_mtime_ns
    (classes_dir / "later.csv").write_text((classes_dir / "labels.csv").read_text())
    try:
        code, out, err = cli("compare", p)
        assert code == 1 and "1 failed" in out  # failed cells are not retried without asking
        code, out, err = cli("compare", p, "--retry-failed")
        assert code == 0 and "2 finished, 0 skipped, 0 failed" in out, err
    finally:
        (classes_dir / "later.csv").unlink()
    assert (ok / "run.json").stat().st_mtime_ns == mtime
    assert _status(cmp_dir / "cells" / "labels-late__seed-0")["status"] == "finished"


@pytest.mark.slow
def test_grid_in_parallel_worker_processes(cli, tmp_path, classes_dir):
    p = _task(tmp_path, classes_dir, compare={"grid": {"optim.lr": [0.003, 0.001]}, "seeds": [0, 1]},
              trainer={"num_threads": None})
    code, out, err = cli("compare", p, "--workers", "2")
    assert code == 0, err
    assert "compared 4 cells: 4 finished" in out
    cmp_dir = tmp_path / "runs" / "core_compare"
    state = json.loads((cmp_dir / "compare.json").read_text())
    assert state["executor"] == "processes" and state["workers"] == 2
    cores = len(os.sched_getaffinity(0))
    spans = []
    for name in state["cells"]:
        run = cmp_dir / "cells" / name
        cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
        assert cfg["trainer"]["num_threads"] == max(1, cores // 2) and cfg["trainer"]["progress_bar"] is False
        assert "epoch 1/1" in (cmp_dir / "logs" / f"{name}.log").read_text()
        st = _status(run)
        spans.append((time.mktime(time.strptime(st["started"][:19], "%Y-%m-%dT%H:%M:%S")),
                      time.mktime(time.strptime(st["ended"][:19], "%Y-%m-%dT%H:%M:%S"))))
    spans.sort()
    assert spans[1][0] <= spans[0][1]  # two cells ran at the same time


@pytest.mark.slow
def test_grid_through_submitit_local_executor(cli, tmp_path, classes_dir):
    p = _task(tmp_path, classes_dir, compare={"grid": {"optim.lr": [0.003, 0.001]}, "executor": "local",
                                              "workers": 2})
    code, out, err = cli("compare", p)
    assert code == 0, err
    assert "compared 2 cells: 2 finished" in out
    cmp_dir = tmp_path / "runs" / "core_compare"
    state = json.loads((cmp_dir / "compare.json").read_text())
    jobs = {rec["job_id"] for rec in state["cells"].values()}
    assert len(jobs) == 2 and all((cmp_dir / "submitit" / j).is_dir() for j in jobs)
    for name in state["cells"]:
        assert _status(cmp_dir / "cells" / name)["status"] == "finished"


@pytest.mark.slow
def test_killed_grid_resumes_and_keeps_finished_cells(cli, tmp_path, classes_dir):
    p = _task(tmp_path, classes_dir, compare={"grid": {"optim.lr": [0.003, 0.002, 0.001]}, "workers": 1},
              trainer={"max_epochs": 2})
    exe = Path(sys.executable).with_name("astrotl")
    proc = subprocess.Popen([str(exe), "compare", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "runs" / "core_compare" / "cells"
    first = None
    deadline = time.time() + 600
    while first is None and time.time() < deadline and proc.poll() is None:
        for f in cells.glob("*/run.json") if cells.is_dir() else []:
            try:
                if json.loads(f.read_text()).get("status") == "finished":
                    first = f.parent
            except ValueError:
                pass
        time.sleep(0.5)
    assert first is not None and proc.poll() is None, "the first cell did not finish while the grid ran"
    workers = _children(proc.pid)
    assert workers, "the grid has no worker process"
    proc.send_signal(signal.SIGKILL)  # the grid's process dies at once; its worker follows (PDEATHSIG)
    proc.wait()
    deadline = time.time() + 120
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the grid"
    states = {f.parent.name: json.loads(f.read_text())["status"] for f in cells.glob("*/run.json")}
    assert "running" not in states.values() and list(states.values()).count("finished") < 3, states
    mtime = (first / "run.json").stat().st_mtime_ns
    code, out, err = cli("compare", p)
    assert code == 0, err
    assert "compared 3 cells: 3 finished" in out
    assert (first / "run.json").stat().st_mtime_ns == mtime  # the finished cell was not run again
    for f in cells.glob("*/run.json"):
        assert json.loads(f.read_text())["status"] == "finished"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _job_pids(folder: Path) -> list[int]:
    """Processes running a submitit task (``python -m submitit.core._submit <folder>``) of this grid."""
    out = []
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = f.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and str(folder) in cmd:
            out.append(int(f.parent.name))
    return out


@pytest.mark.slow
def test_submitit_requeue_resumes_the_cell(cli, tmp_path, classes_dir):
    """A SLURM time limit, as submitit's local executor plays it: SIGUSR2 to the job -> CellJob.checkpoint ->
    the job is requeued as a resume of the same cell and continues from its last checkpoint."""
    import threading

    p = _task(tmp_path, classes_dir, compare={"executor": "local"}, trainer={"max_epochs": 12})
    cmp_dir = tmp_path / "runs" / "core_compare"
    ckpt = cmp_dir / "cells" / "seed-0" / "checkpoints" / "last.ckpt"
    sent: list[int] = []

    def interrupt():
        deadline = time.time() + 600
        while time.time() < deadline and not ckpt.is_file():
            time.sleep(0.1)
        for pid in _job_pids(cmp_dir / "submitit"):
            os.kill(pid, signal.SIGUSR2)
            sent.append(pid)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    code, out, err = cli("compare", p)
    t.join(timeout=10)
    assert sent, "no submitit job to interrupt"
    assert code == 0 and "compared 1 cells: 1 finished" in out, err
    st = _status(cmp_dir / "cells" / "seed-0")
    assert st["status"] == "finished" and st["resumed"] is True and st.get("signal") == "requeue"
    m = json.loads((cmp_dir / "cells" / "seed-0" / "metrics.json").read_text())["metrics"]
    assert m["epochs_trained"] == 12
    logs = "".join(f.read_text() for f in (cmp_dir / "submitit").rglob("*.out"))
    assert "Requeued job" in logs or "requeue" in logs.lower()


@pytest.mark.slow
def test_multi_stage_and_soft_label_grids_end_to_end(cli, tmp_path, classes_dir, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from make_soft_labels import make as make_soft

    stages = [{"name": "pretrain"}, {"name": "finetune", "backbone": {"weights": "stage:pretrain"}}]
    p = _task(tmp_path, classes_dir, name="staged", stages=stages, compare={
        "grid": {"stages.finetune.train_subset.size": [8, 16]}, "executor": "debug",
        "curve_x": "stages.finetune.train_subset.size"})
    code, out, err = cli("compare", p)
    assert code == 0 and "2 finished" in out, err
    cmp_dir = tmp_path / "runs" / "staged_compare"
    cells = Table.read(cmp_dir / "cells.ecsv")
    for r in cells:
        m = json.loads((cmp_dir / r["path"] / "stages" / "finetune" / "metrics.json").read_text())["metrics"]
        assert r["test_accuracy"] == pytest.approx(m["test_accuracy"])
        assert m["n_train"] == int(r["stages.finetune.train_subset.size"])
    assert (cmp_dir / "learning_curve.png").is_file()
    # soft labels: the headline is rmse, lower is better
    monkeypatch.setenv("ASTROTL_SMOKE_DATA", str(make_soft(tmp_path / "soft").parent))
    repo = Path(__file__).resolve().parents[2]
    code, out, err = cli("compare", repo / "tasks/smoke/soft_labels_tiny.yaml", "--executor", "debug", "--seeds", "0,1",
                         "--out", tmp_path / "soft_cmp", "--ensemble", "--set", "trainer.num_threads=1")
    assert code == 0 and "2 finished" in out, err
    report = (tmp_path / "soft_cmp" / "report.md").read_text()
    assert "## Results: test rmse (lower is better)" in report
    ens = Table.read(tmp_path / "soft_cmp" / "ensembles.ecsv")
    assert ens["n_members"][0] == 2 and 0 <= ens["accuracy_mode"][0] <= 1


@pytest.mark.slow
def test_slurm_job_array_path_with_a_stand_in_cluster(cli, tmp_path, classes_dir, monkeypatch):
    """The slurm branch (one map_array job array, records, collection) with submitit's debug executor standing in
    for the cluster: sbatch cannot run here."""
    import submitit

    import astrotl.compare as cmp

    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("srun", "sbatch"):
        (fake / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    arrays = []

    class StandIn(submitit.AutoExecutor):
        def map_array(self, fn, *iterables):
            arrays.append(len(iterables[0]))
            return super().map_array(fn, *iterables)

    monkeypatch.setattr(cmp, "make_executor", lambda plan, folder: StandIn(folder=str(folder / "%j"), cluster="debug"))
    p = _task(tmp_path, classes_dir, compare={"seeds": [0, 1], "executor": "slurm"})
    code, out, err = cli("compare", p)
    assert code == 0 and "compared 2 cells: 2 finished" in out, err
    assert arrays == [2]  # one job array for both cells
    state = json.loads((tmp_path / "runs" / "core_compare" / "compare.json").read_text())
    assert state["executor"] == "slurm" and all(rec["job_id"].startswith("DEBUG_") for rec in state["cells"].values())


def test_paired_verdict_claims_a_winner_only_when_significant():
    from astrotl.compare import _verdict

    assert _verdict({"better": "gz1", "mean_diff": 0.055, "p_ttest": 0.007}) == "gz1 better by 0.055"
    assert _verdict({"better": "gz1", "mean_diff": -0.028, "p_ttest": 0.13}) == \
        "not significant (gz1 ahead by 0.028, p = 0.13)"
    assert _verdict({"better": "b", "mean_diff": 0.1, "p_ttest": float("nan")}) == "too few pairs to tell (b ahead by 0.100)"
    assert _verdict({"better": "neither", "mean_diff": 0.0, "p_ttest": float("nan")}) == "no difference"
