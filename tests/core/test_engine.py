"""End-to-end runs of tiny configs on CPU: outputs, run-directory rules, resume, DDP, weights provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

from testutils import run_cli_subprocess


def _finished(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_tiny_run_writes_a_complete_run_directory(cli, tiny_task, tmp_path):
    code, out, err = cli("run", tiny_task())
    assert code == 0, err
    run = tmp_path / "runs" / "tiny"
    assert "finished:" in out and str(run) in out
    for f in ("run.json", "config.resolved.yaml", "metrics.json", "metrics.ecsv", "predictions.ecsv", "history.ecsv",
              "report.md", "model.safetensors", "backbone.safetensors", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
              "plots/confusion_matrix.png", "plots/training_curves.png", "tables/confusion.ecsv", "tables/per_class.ecsv"):
        assert (run / f).is_file(), f
    assert _finished(run)["status"] == "finished"
    assert not list(run.rglob("*.tmp*")), "temporary files left behind"
    preds = Table.read(run / "predictions.ecsv")
    assert len(preds) == 40
    for col in ("id", "x", "y", "true_class", "pred_class", "p_1", "p_2", "p_3", "p_4", "subclass", "mag_F555W"):
        assert col in preds.colnames
    probs = np.vstack([preds[f"p_{c}"] for c in "1234"]).T
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert list(preds["pred_class"]) == [str(c + 1) for c in probs.argmax(axis=1)]
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    acc = np.mean(np.asarray(preds["true_class"]) == np.asarray(preds["pred_class"]))
    assert m["test_accuracy"] == pytest.approx(acc)
    for key in ("test_balanced_accuracy", "test_accuracy_class_1", "test_combined_1+2_accuracy", "best_val_loss"):
        assert key in m
    cm = Table.read(run / "tables" / "confusion.ecsv")
    assert int(sum(cm[f"pred_{c}"].sum() for c in "1234")) == 40
    # the saved config repeats the run exactly
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["data"]["n_train"] == 64 and resolved["task"]["augment"] == "d4"
    report = (run / "report.md").read_text()
    assert "overall accuracy" in report and "plots/confusion_matrix.png" in report


def test_same_seed_same_result(cli, tiny_task, tmp_path):
    a = tiny_task("a")
    b = tiny_task("b")
    assert cli("run", a)[0] == 0 and cli("run", b)[0] == 0
    pa = Table.read(tmp_path / "runs" / "a" / "predictions.ecsv")
    pb = Table.read(tmp_path / "runs" / "b" / "predictions.ecsv")
    assert np.allclose(pa["p_1"], pb["p_1"], atol=1e-5)


def test_finished_run_is_refused_then_overwritten_or_resumed(cli, tiny_task, tmp_path):
    p = tiny_task()
    assert cli("run", p)[0] == 0
    run = tmp_path / "runs" / "tiny"
    before = (run / "predictions.ecsv").read_bytes()
    code, _, err = cli("run", p)
    assert code == 2 and "already holds a finished run" in err and "--overwrite" in err and err.count("\n") == 1
    assert (run / "predictions.ecsv").read_bytes() == before, "a refused run must not touch the old outputs"
    code, _, err = cli("run", p, "--overwrite", "--set", "trainer.max_epochs=2")
    assert code == 0, err
    assert len(Table.read(run / "history.ecsv")) == 2
    code, _, err = cli("run", p, "--resume", "--set", "trainer.max_epochs=3")
    assert code == 0, err
    assert list(Table.read(run / "history.ecsv")["epoch"]) == [0, 1, 2]


def test_resume_with_a_different_config_is_refused(cli, tiny_task):
    p = tiny_task()
    assert cli("run", p)[0] == 0
    code, _, err = cli("run", p, "--resume", "--set", "data.n_train=80")
    assert code == 2 and "configuration differs" in err and "data" in err


def test_resume_without_a_run_is_refused(cli, tiny_task):
    code, _, err = cli("run", tiny_task(), "--resume")
    assert code == 2 and "nothing to resume" in err


def test_non_run_directory_is_never_deleted(cli, tiny_task, tmp_path):
    victim = tmp_path / "runs" / "tiny"
    victim.mkdir(parents=True)
    (victim / "thesis.tex").write_text("precious")
    code, _, err = cli("run", tiny_task(), "--overwrite")
    assert code == 2 and "not an astrotl run" in err
    assert (victim / "thesis.tex").read_text() == "precious"


def test_overwrite_and_resume_together_rejected(cli, tiny_task):
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive
        cli("run", tiny_task(), "--overwrite", "--resume")
    assert exc.value.code == 2


def test_auto_weights_offline_warns_and_records(cli, tiny_task, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("ASTROTL_WEIGHTS_DIR", str(tmp_path / "empty_weights"))
    with pytest.warns(Warning, match="RANDOM INITIALISATION"):
        code, _, err = cli("run", tiny_task(backbone={"weights": "auto"}))
    assert code == 0, err
    run = tmp_path / "runs" / "tiny"
    w = _finished(run)["weights"]
    assert w["source"] == "random" and "RANDOM INITIALISATION" in w["warning"]
    assert "RANDOM INITIALISATION" in json.loads((run / "metrics.json").read_text())["weights"]["warning"]
    assert "WARNING: RANDOM INITIALISATION" in (run / "report.md").read_text()


def test_imagenet_weights_missing_is_a_clear_error(cli, tiny_task, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("ASTROTL_WEIGHTS_DIR", raising=False)
    code, _, err = cli("run", tiny_task(backbone={"weights": "imagenet"}))
    assert code == 2
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "th") in err and "auto" in err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_exported_backbone_is_reusable_as_weights(cli, tiny_task, tmp_path):
    assert cli("run", tiny_task("first"))[0] == 0
    exported = tmp_path / "runs" / "first" / "backbone.safetensors"
    code, _, err = cli("run", tiny_task("second", backbone={"weights": str(exported)}))
    assert code == 0, err
    w = _finished(tmp_path / "runs" / "second")["weights"]
    from astrotl.io import sha256_file

    assert w["source"] == "file" and w["sha256"] == sha256_file(exported)


def test_vgg19_bn_backbone_runs(cli, tiny_task):
    code, _, err = cli("run", tiny_task(backbone={"name": "vgg19_bn"}, data={"size": 32, "n_train": 32, "n_val": 16, "n_test": 16}))
    assert code == 0, err


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tiny_task, tmp_path):
    p = tiny_task(data={"n_train": 256}, trainer={"max_epochs": 40, "early_stopping": {"enabled": False}})
    run = tmp_path / "runs" / "tiny"
    exe = Path(sys.executable).with_name("astrotl")
    proc = subprocess.Popen([str(exe), "run", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    size = -1
    while time.time() < deadline:
        if ckpt.is_file() and len(list(ckpt.parent.glob("*.ckpt"))) >= 2:
            time.sleep(0.5)
            if ckpt.stat().st_size == size:
                break
            size = ckpt.stat().st_size
        else:
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _finished(run)["status"] == "running"
    res = run_cli_subprocess("run", p)  # refused without --resume
    assert res.returncode == 2 and "unfinished run" in res.stderr
    res = run_cli_subprocess("run", p, "--resume", "--set", "trainer.max_epochs=4")
    assert res.returncode == 0, res.stderr
    st = _finished(run)
    assert st["status"] == "finished" and st["resumed"] is True
    epochs = list(Table.read(run / "history.ecsv")["epoch"])
    assert epochs == list(range(len(epochs))) and len(epochs) >= 2


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_task, tmp_path):
    p = tiny_task(trainer={"strategy": "ddp", "devices": 2, "accelerator": "cpu", "max_epochs": 2, "batch_size": 16,
                            "num_threads": 1})
    res = run_cli_subprocess("run", p, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    st = _finished(run)
    assert st["status"] == "finished" and st["world_size"] == 2 and st["strategy"] == "DDPStrategy"
    preds = Table.read(run / "predictions.ecsv")
    assert len(preds) == 40 and len(set(preds["id"])) == 40  # gathered from both ranks, padding removed
    assert res.stdout.count("finished:") == 1  # only rank 0 reports


def test_relative_output_dir_from_the_working_directory(cli, tiny_task, tmp_path, monkeypatch):
    """The default `output_dir: runs` is relative; the run must finish from any working directory."""
    monkeypatch.chdir(tmp_path)
    p = tiny_task()
    data = yaml.safe_load(p.read_text())
    data["output_dir"] = "relruns"
    p.write_text(yaml.safe_dump(data))
    code, out, err = cli("run", p)
    assert code == 0, err
    run = tmp_path / "relruns" / "tiny"
    assert _finished(run)["status"] == "finished"
    assert "`checkpoints/best.ckpt`" in (run / "report.md").read_text()
    assert (run / "predictions.ecsv").stat().st_mode & 0o044, "outputs must be readable by others (umask), not 0600"
