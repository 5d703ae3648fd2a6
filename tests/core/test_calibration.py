"""Temperature scaling, expected calibration error and reliability diagrams (astrotl.calibration), and the
classification task's use of them (fitted on validation, stored with the model, applied by predict)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.calibration import expected_calibration_error, fit_temperature, nll, reliability_plot, reliability_table

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402


def _toy(n=3000, k=4, seed=0):
    """Logits whose calibrated probabilities are softmax(2 z) (unit Gaussian noise around 2 x one-hot)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    z = 2.0 * torch.nn.functional.one_hot(labels, k).float() + torch.randn(n, k, generator=g)
    return z, labels


@pytest.mark.parametrize("scale,expect", [(6.0, 3.0), (0.5, 0.25)])
def test_temperature_scaling_lowers_the_nll_of_a_miscalibrated_toy(scale, expect):
    z, y = _toy()

    def probs_at(t):
        return torch.softmax(scale * z / t, dim=1)

    t = fit_temperature(probs_at, y)
    assert t == pytest.approx(expect, rel=0.2)  # over-confident (6x): T ~ 3; under-confident (0.5x): T ~ 0.25
    before, after = probs_at(1.0), probs_at(t)
    assert nll(after, y) < nll(before, y) - 0.05
    assert expected_calibration_error(after.numpy(), y.numpy()) < 0.5 * expected_calibration_error(before.numpy(), y.numpy())
    assert nll(after, y) <= nll(torch.softmax(2 * z, 1), y) + 0.01  # as good as the true posterior


def test_calibrated_probabilities_have_a_small_ece_and_the_table_counts_every_sample():
    z, y = _toy(n=5000, seed=1)
    p = torch.softmax(2 * z, 1).numpy()
    assert expected_calibration_error(p, y.numpy()) < 0.03
    t = reliability_table(p, y.numpy(), n_bins=10)
    assert int(np.sum(t["n"])) == 5000 and len(t) == 10
    conf = np.array([0.95, 0.95, 0.95, 0.95])
    assert expected_calibration_error(None, None, confidence=conf, correct=[1, 1, 0, 0]) == pytest.approx(0.45)


def test_no_labels_leave_the_temperature_at_one(tmp_path):
    assert fit_temperature(lambda t: torch.ones(0, 3) / 3, torch.zeros(0, dtype=torch.long)) == 1.0
    assert np.isnan(nll(np.zeros((0, 3)), np.zeros(0, dtype=int)))
    out = reliability_plot({"a": reliability_table(np.array([[0.7, 0.3]]), np.array([0]))}, tmp_path / "r.png")
    assert out.is_file() and out.stat().st_size > 1000


def _task(**cfg):
    from astrotl.interfaces import DatasetInfo
    from astrotl.tasks.classification import ClassificationTask

    return ClassificationTask(ClassificationTask.Config(**cfg), DatasetInfo(bands=("L",), classes=("a", "b", "c")))


class _Scaled(torch.nn.Module):
    """Returns ``scale x`` the stored logits of each sample (found by its first pixel)."""

    def __init__(self, logits, scale):
        super().__init__()
        self.logits = logits
        self.scale = scale
        self.lin = torch.nn.Linear(1, 1)  # a parameter, for the device

    def forward(self, x):
        return self.scale * self.logits[x[:, 0, 0, 0].long()]


def test_task_calibrate_fits_the_temperature_buffer_and_predict_uses_it():
    z, y = _toy(n=400, k=3, seed=2)
    task = _task(calibration="temperature")
    model = task.build_model(torch.nn.Identity(), _Scaled(z, 5.0))
    assert float(model.temperature) == 1.0
    images = torch.arange(400, dtype=torch.float32)[:, None, None, None].expand(400, 1, 2, 2)
    loader = [{"image": images[i:i + 100], "label": y[i:i + 100], "index": torch.arange(i, i + 100)}
              for i in range(0, 400, 100)]
    info = task.calibrate(model, loader)
    assert 1.5 < info["temperature"] < 4.0 and float(model.temperature) == pytest.approx(info["temperature"])
    assert info["val_nll_after"] < info["val_nll_before"] and info["val_ece_after"] < info["val_ece_before"]
    rows = task.predict_batch(model, loader[0])
    p = np.array([[r["p_a"], r["p_b"], r["p_c"]] for r in rows])
    expect = torch.softmax(5.0 * z[:100] / info["temperature"], 1).numpy()
    assert np.allclose(p, expect, atol=1e-5)
    raw = torch.softmax(5.0 * z[:100], 1).numpy()
    assert np.allclose([r["pred_prob_raw"] for r in rows], raw.max(1), atol=1e-5)
    # too few labelled validation samples: skipped, temperature unchanged
    small = [{"image": images[:5], "label": y[:5], "index": torch.arange(5)}]
    task2 = _task(calibration="temperature")
    model2 = task2.build_model(torch.nn.Identity(), _Scaled(z, 5.0))
    assert task2.calibrate(model2, small)["skipped"] and float(model2.temperature) == 1.0
    assert _task().calibrate(model2, loader) is None  # calibration: none


def test_a_model_saved_without_temperature_loads_with_temperature_one():
    task = _task()
    model = task.build_model(torch.nn.Identity(), torch.nn.Linear(4, 3))
    state = {k: v for k, v in model.state_dict().items() if k != "temperature"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected and float(model.temperature) == 1.0
    model.temperature.fill_(2.5)
    fresh = task.build_model(torch.nn.Identity(), torch.nn.Linear(4, 3))
    fresh.load_state_dict(model.state_dict())
    assert float(fresh.temperature) == 2.5


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("classes_cal"), n=96, size=16, seed=2)


def test_run_writes_calibrated_predictions_reliability_diagram_and_predict_applies_it(cli, tmp_path, classes_dir):
    cfg = {
        "name": "cal", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", "calibration": "temperature"},
        "data": {"name": "image_folder", "root": str(classes_dir), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "optim": {"lr": 0.003, "scheduler": "none"},
        "trainer": {"max_epochs": 2, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
    }
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = cli("run", path)
    assert code == 0, err
    run = tmp_path / "runs" / "cal"
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    t = m["test_temperature"]
    assert t != 1.0 and "test_ece" in m and "test_ece_uncalibrated" in m and "test_nll" in m
    assert (run / "plots" / "reliability.png").is_file() and (run / "tables" / "reliability.ecsv").is_file()
    report = (run / "report.md").read_text()
    assert f"calibration: temperature {t:.3f} fitted on 24 validation samples" in report
    preds = Table.read(run / "predictions.ecsv")
    assert {"pred_prob_raw", "pred_class_raw"} <= set(preds.colnames)
    from safetensors.torch import load_file

    assert float(load_file(str(run / "model.safetensors"))["temperature"]) == pytest.approx(t)
    code, out, err = cli("predict", run, "--split", "test", "--out", tmp_path / "p.ecsv")
    assert code == 0, err
    again = Table.read(tmp_path / "p.ecsv")
    assert np.allclose(np.asarray(again["p_long"]), np.asarray(preds["p_long"]), atol=1e-5)


# -- logit adjustment (task.logit_adjustment): imbalance corrected in the loss, balanced decisions ----------


def _imbalanced_fit(**task_keys):
    """Logistic regression on two overlapping 1-D Gaussians (9:1), trained through the task's loss; returns
    the balanced accuracy of argmax of the model's logits on a balanced test sample."""
    from astrotl.interfaces import DatasetInfo
    from astrotl.tasks.classification import ClassificationTask, ClassificationTaskConfig

    g = torch.Generator().manual_seed(0)
    n0, n1 = 1800, 200
    x = torch.cat([torch.randn(n0, 1, generator=g), 1.5 + torch.randn(n1, 1, generator=g)])
    y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
    task = ClassificationTask(ClassificationTaskConfig(augment="none", **task_keys),
                              DatasetInfo(bands=["x"], classes=["a", "b"], image_size=1))
    task.set_class_counts(np.bincount(y.numpy()))
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(400):
        loss, _ = task.training_loss(lambda img: model(img), {"image": x, "label": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = torch.cat([torch.randn(5000, 1, generator=g), 1.5 + torch.randn(5000, 1, generator=g)])
    yt = torch.cat([torch.zeros(5000, dtype=torch.long), torch.ones(5000, dtype=torch.long)])
    with torch.no_grad():
        pred = model(xt).argmax(1)
    recalls = [float((pred[yt == c] == c).float().mean()) for c in (0, 1)]
    return float(np.mean(recalls)), recalls


def test_logit_adjustment_gives_the_balanced_decision_rule():
    plain, plain_recalls = _imbalanced_fit()
    adjusted, adjusted_recalls = _imbalanced_fit(logit_adjustment=1.0)
    # plain cross-entropy learns the 9:1 prior: the rare class is mostly missed
    assert plain_recalls[1] < 0.4
    # the adjusted logits put the boundary half-way (x = 0.75): both recalls ~ Phi(0.75) = 0.77
    assert adjusted_recalls == pytest.approx([0.773, 0.773], abs=0.04)
    assert adjusted > plain + 0.1


def test_logit_adjustment_and_class_weights_are_not_combined():
    from pydantic import ValidationError

    from astrotl.tasks.classification import ClassificationTaskConfig

    with pytest.raises(ValidationError, match="both correct for class imbalance"):
        ClassificationTaskConfig(class_weights="balanced", logit_adjustment=1.0)


def test_class_weights_with_label_smoothing_weight_each_sample_by_its_own_class():
    """Without smoothing: torch's weighted cross-entropy. With smoothing and strong weights (1 : 100), fitting the
    logits of one majority-class sample still gives that class (p = 1 - s + s/K): torch's own weighting of the
    smoothed target would put 0.92 on the rare class."""
    from astrotl.tasks.classification import weighted_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 3, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    w = torch.tensor([1.0, 5.0, 20.0])
    torch.testing.assert_close(weighted_cross_entropy(logits, target, w, 0.0),
                               torch.nn.functional.cross_entropy(logits, target, weight=w))
    torch.testing.assert_close(weighted_cross_entropy(logits, target, None, 0.1),
                               torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1))
    weight = torch.tensor([1.0, 100.0])
    fitted = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.Adam([fitted], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        weighted_cross_entropy(fitted, torch.tensor([0]), weight, 0.2).backward()
        opt.step()
    p = torch.softmax(fitted.detach(), 1)[0]
    assert abs(float(p[0]) - 0.9) < 0.01  # 1 - 0.2 + 0.2 / 2


# -- deferred re-weighting (task.class_weights_from) ------------------------------------------------------


def test_deferred_class_weights_switch_on_at_their_epoch():
    """Unweighted before round(class_weights_from * max_epochs), the class-weighted loss from then on (also when
    the engine calls set_progress again after a resume)."""
    from astrotl.interfaces import DatasetInfo
    from astrotl.tasks.classification import ClassificationTask, ClassificationTaskConfig

    info = DatasetInfo(bands=["x"], classes=["a", "b"], image_size=1)
    task = ClassificationTask(ClassificationTaskConfig(augment="none", class_weights="balanced",
                                                       class_weights_from=0.67), info)
    task.set_class_counts(np.array([9, 1]))
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.2], [0.0, 1.0], [1.0, -1.0]])
    batch = {"image": logits, "label": torch.tensor([0, 0, 1, 0])}
    plain = torch.nn.functional.cross_entropy(logits, batch["label"])
    weighted = torch.nn.functional.cross_entropy(logits, batch["label"], weight=torch.tensor([10 / 18, 10 / 2]))
    seen = []
    for epoch in range(15):
        task.set_progress(epoch, 15)
        seen.append(float(task.training_loss(lambda x: x, batch)[0]))
    assert seen[:10] == pytest.approx([float(plain)] * 10) and seen[10:] == pytest.approx([float(weighted)] * 5)
    task.set_progress(3, 15)  # a resumed run starts again before the switch
    assert float(task.training_loss(lambda x: x, batch)[0]) == pytest.approx(float(plain))
    always = ClassificationTask(ClassificationTaskConfig(augment="none", class_weights="balanced"), info)
    always.set_class_counts(np.array([9, 1]))
    assert float(always.training_loss(lambda x: x, batch)[0]) == pytest.approx(float(weighted))  # no set_progress needed


def test_deferred_class_weights_need_class_weights(cli, tmp_path):
    from pydantic import ValidationError

    from astrotl.tasks.classification import ClassificationTaskConfig
    from testutils import TINY

    cfg = dict(TINY, task={"name": "phangs_clusters", "class_weights_from": 0.5}, output_dir=str(tmp_path / "runs"))
    (tmp_path / "drw.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = cli("run", tmp_path / "drw.yaml")
    assert code == 2 and not (tmp_path / "runs").exists()
    assert "class_weights_from defers class weights, but class_weights is none" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValidationError, match="less than 1"):
        ClassificationTaskConfig(class_weights="balanced", class_weights_from=1.0)


def test_the_engine_reports_training_progress_to_the_task(cli, tmp_path, monkeypatch):
    from astrotl.tasks.classification import ClassificationTask
    from testutils import TINY

    calls = []
    original = ClassificationTask.set_progress
    monkeypatch.setattr(ClassificationTask, "set_progress",
                        lambda self, epoch, max_epochs: (calls.append((epoch, max_epochs)), original(self, epoch, max_epochs)))
    cfg = dict(TINY, task={"name": "phangs_clusters", "class_weights": "balanced", "class_weights_from": 0.5},
               output_dir=str(tmp_path / "runs"), trainer={**TINY["trainer"], "max_epochs": 3})
    (tmp_path / "drw.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = cli("-q", "run", tmp_path / "drw.yaml")
    assert code == 0, err
    assert calls == [(0, 3), (1, 3), (2, 3)]
