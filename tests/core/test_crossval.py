"""Stable model selection: k-fold cross-validation (astrotl.crossval) and weight averaging (astrotl.averaging)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.crossval import PooledDataset, fold_assignment
from astrotl.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402


# -- folds ------------------------------------------------------------------------------------------


def test_folds_are_stratified_balanced_seeded_and_keep_groups_whole():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 10)
    f = fold_assignment(labels, k=5, seed=3)
    assert sorted(np.bincount(f).tolist()) == [16] * 5
    for c in (0, 1, 2):
        counts = np.bincount(f[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1, c
    assert np.array_equal(f, fold_assignment(labels, k=5, seed=3))
    assert not np.array_equal(f, fold_assignment(labels, k=5, seed=4))
    groups = np.repeat(np.arange(20), 4)
    g = fold_assignment(labels, k=4, seed=0, groups=groups)
    for grp in range(20):
        assert len(set(g[groups == grp])) == 1
    assert sorted(np.bincount(g).tolist()) == [20] * 4
    with pytest.raises(ConfigError, match="cv.k=5 folds but .* only 3 samples"):
        fold_assignment(np.array([0, 1, 0]), k=5)


class _Part(torch.utils.data.Dataset):
    def __init__(self, labels, name):
        self._labels, self.name = np.asarray(labels), name

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return {"image": torch.zeros(1, 2, 2), "label": int(self._labels[i]), "index": i, "src": self.name}

    def labels(self):
        return self._labels

    def votes(self):
        return self._labels * 10.0

    def catalog(self):
        return Table({"id": [f"{self.name}{i}" for i in range(len(self))]})


def test_pooled_dataset_concatenates_samples_catalogue_and_per_sample_arrays():
    p = PooledDataset([_Part([0, 1, 1], "t"), _Part([2, 0], "v")])
    assert len(p) == 5 and p[3]["src"] == "v" and p[3]["index"] == 3 and p[3]["label"] == 2
    assert p.labels().tolist() == [0, 1, 1, 2, 0] and p.votes().tolist() == [0, 10, 10, 20, 0]
    assert list(p.catalog()["id"]) == ["t0", "t1", "t2", "v0", "v1"]
    assert p.groups is None  # the parts have no groups


# -- weight averaging -------------------------------------------------------------------------------


class _Lin(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)
        self.snapshots = []

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def on_train_epoch_end(self):
        # before the averaging callback (Lightning calls the module's hook after the callbacks' hooks in
        # recent versions, so record from the raw parameters held by the optimiser)
        self.snapshots.append(self.lin.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks, epochs=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(32, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = _Lin()
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, loader)
    return model


def test_swa_averages_the_last_epochs_and_ema_smooths():
    from astrotl.averaging import SWAEpochAveraging, averaging_callbacks
    from astrotl.config import TrainerConfig

    raw = _fit([])
    swa = _fit([SWAEpochAveraging(start_epoch=2)])
    # same training trajectory; the final weights are the mean of the epoch-end weights of epochs 2 and 3
    expect = torch.stack(raw.snapshots[2:]).mean(0)
    assert torch.allclose(swa.lin.weight, expect, atol=1e-6)
    assert not torch.allclose(swa.lin.weight, raw.lin.weight, atol=1e-4)
    cbs = averaging_callbacks(TrainerConfig(ema=0.9, max_epochs=4))
    ema = _fit(cbs)
    assert not torch.allclose(ema.lin.weight, raw.lin.weight, atol=1e-4)
    assert averaging_callbacks(TrainerConfig()) == []
    assert averaging_callbacks(TrainerConfig(swa={"start": 0.75}, max_epochs=8))[0].start_epoch == 5
    with pytest.raises(ConfigError, match="trainer.ema and trainer.swa are both set"):
        averaging_callbacks(TrainerConfig(ema=0.9, swa={"start": 0.5}))


# -- cross-validation end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("classes_cv"), n=48, size=16, seed=3)


def _write(tmp_path: Path, data_root: Path, name: str, **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", "augment": "none"},
        "data": {"name": "image_folder", "root": str(data_root), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "extra_columns": ["group"], "group_col": "group", "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "optim": {"lr": 0.003, "scheduler": "none"},
        "trainer": {"max_epochs": 1, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1, "ema": 0.5},
    }
    cfg.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_cv_runs_folds_ensemble_and_refit(cli, tmp_path, classes_dir):
    p = _write(tmp_path, classes_dir, "cv", cv={"k": 2, "keep": "ensemble", "refit": True})
    code, out, err = cli("run", p)
    assert code == 0, err
    assert "2-fold CV: test accuracy" in out and "ensemble of 2" in out and "refit on all labels" in out
    run = tmp_path / "runs" / "cv"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    for i in ("0", "1"):
        fold = run / "folds" / i
        st = json.loads((fold / "run.json").read_text())
        assert st["status"] == "finished"
        m = json.loads((fold / "metrics.json").read_text())["metrics"]
        assert m["n_train"] + m["n_val"] == 36 and m["n_test"] == 12  # train + val pooled (24 + 12), test apart
        assert "cv" not in yaml.safe_load((fold / "config.resolved.yaml").read_text())
    m = json.loads((run / "metrics.json").read_text())
    s = m["metrics"]
    accs = [m["folds"][i]["test_accuracy"] for i in ("0", "1")]
    assert s["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert s["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    assert "ensemble_test_accuracy" in s and "refit_test_accuracy" in s
    refit = json.loads((run / "refit" / "metrics.json").read_text())["metrics"]
    assert refit["n_train"] == 36
    table = Table.read(run / "cv.ecsv")
    assert list(table["fold"]) == ["0", "1"] and "test_accuracy" in table.colnames
    preds = Table.read(run / "predictions.ecsv")
    f0, f1 = (Table.read(run / "folds" / i / "predictions.ecsv") for i in ("0", "1"))
    assert np.allclose(preds["p_long"], (np.asarray(f0["p_long"]) + np.asarray(f1["p_long"])) / 2)
    assert "| **mean +- std** |" in (run / "report.md").read_text()
    # the run's model is the refit's: predict and weights: run:<cv run> work on the cross-validation run
    code, out, err = cli("predict", run, "--split", "test", "--out", tmp_path / "p.ecsv")
    assert code == 0, err
    assert (run / "backbone.safetensors").is_file()
    # resume skips finished folds
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "status": "interrupted"}))
    mtime = (run / "folds" / "0" / "model.safetensors").stat().st_mtime_ns
    code, out, err = cli("run", p, "--resume")
    assert code == 0, err
    assert (run / "folds" / "0" / "model.safetensors").stat().st_mtime_ns == mtime


def test_cv_test_fold_tests_every_sample_once(cli, tmp_path, classes_dir):
    p = _write(tmp_path, classes_dir, "cvt", cv={"k": 3, "test": "fold", "seed": 1})
    code, out, err = cli("run", p)
    assert code == 0, err
    assert "3-fold CV (each fold tested once): test accuracy" in out and "pooled out-of-fold (48): " in out
    run = tmp_path / "runs" / "cvt"
    m = json.loads((run / "metrics.json").read_text())
    s = m["metrics"]
    tested, groups_of = [], {}
    labels = Table.read(classes_dir / "labels.csv", format="ascii.csv")
    group = dict(zip(labels["id"].astype(str), labels["group"].astype(str)))
    for i in ("0", "1", "2"):
        f = m["folds"][i]
        assert f["n_train"] + f["n_val"] + f["n_test"] == 48  # all three splits pooled (24 + 12 + 12)
        preds = Table.read(run / "folds" / i / "predictions.ecsv")
        assert len(preds) == f["n_test"]
        tested += [str(x) for x in preds["id"]]
        for x in preds["id"]:
            groups_of.setdefault(group[str(x)], set()).add(i)
    assert sorted(tested) == sorted(labels["id"].astype(str))  # every sample tested exactly once
    assert all(len(v) == 1 for v in groups_of.values())  # groups whole: all images of an object in one test fold
    pooled = Table.read(run / "predictions.ecsv")
    assert len(pooled) == 48 and sorted(set(pooled["fold"])) == [0, 1, 2]
    acc = float(np.mean(pooled["pred_class"] == pooled["true_class"]))
    assert s["pooled_test_accuracy"] == pytest.approx(acc) and s["pooled_n_test"] == 48
    accs = [m["folds"][i]["test_accuracy"] for i in ("0", "1", "2")]
    assert s["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    report = (run / "report.md").read_text()
    assert "every sample is tested once" in report and "**Pooled out-of-fold** (48 samples" in report
    # fold i validates on fold i + 1: its validation samples are the next fold's test samples
    v0 = json.loads((run / "folds" / "0" / "metrics.json").read_text())["metrics"]["n_val"]
    assert v0 == m["folds"]["1"]["n_test"]


def test_cv_errors_are_one_line(cli, tmp_path, classes_dir):
    p = _write(tmp_path, classes_dir, "bad", cv={"k": 2}, stages=[{"name": "a"}])
    code, _, err = cli("run", p)
    assert code == 2 and "'cv' and 'stages' cannot be combined" in err and err.count("\n") == 1
    p = _write(tmp_path, classes_dir, "bad2", cv={"k": 40})
    code, _, err = cli("run", p)
    assert code == 2 and "cv.k=40 folds but" in err and err.count("\n") == 1
    p = _write(tmp_path, classes_dir, "bad3", cv={"k": 1})
    code, _, err = cli("run", p)
    assert code == 2 and "cv.k" in err
    for cv, match in (({"k": 2, "test": "fold"}, "cv.test: fold needs k >= 3"),
                      ({"k": 3, "test": "fold", "refit": True}, "no common test split"),
                      ({"k": 3, "test": "fold", "keep": "ensemble"}, "no common test split")):
        p = _write(tmp_path, classes_dir, "bad5", cv=cv)
        code, _, err = cli("run", p)
        assert code == 2 and match in err and err.count("\n") == 1 and err.startswith("astrotl: error: "), err
        assert not (tmp_path / "runs" / "bad5").exists()
    p = _write(tmp_path, classes_dir, "bad4", trainer={"ema": 0.9, "swa": {"start": 0.5}})
    code, _, err = cli("run", p)
    assert code == 2 and "trainer.ema and trainer.swa are both set" in err
    assert not (tmp_path / "runs" / "bad4").exists()
