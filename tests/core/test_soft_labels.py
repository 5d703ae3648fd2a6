"""The soft_labels task: losses, metric definitions, data checks, the image_folder data side, an end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import MaskedColumn, Table

from astrotl.datasets import ImageFolderDataset
from astrotl.datasets.common import LabelSplitConfig, assign_targets, check_target_rows
from astrotl.errors import ConfigError, DataError
from astrotl.interfaces import DatasetInfo, ImageDataset
from astrotl.tasks.soft_labels import (SoftLabelsTask, calibration_error, concentrations, dirichlet_multinomial_nll,
                                       mse_loss, reliability_table, rmse_loss, soft_cross_entropy, soft_label_scores)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NAMES = ["smooth", "disk", "artifact"]


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_soft_labels", HERE / "data" / "make_soft_labels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def soft_folder(tmp_path_factory) -> Path:
    """The tiny seeded soft-label image folder (16 objects x 3 bands, PNG + labels.csv)."""
    out = tmp_path_factory.mktemp("soft_folder")
    _load_maker().make(out, galaxies=16, seed=0)
    return out


def _folder_cfg(root: Path, **over) -> ImageFolderDataset.Config:
    kw = dict(root=str(root), id_col="id", file_pattern="images/{id}.png",
              target_cols=["frac_smooth", "frac_disk", "frac_artifact"], target_names=NAMES, count_col="n_votes",
              group_col="galaxy", extra_columns=["galaxy", "band"], split_fractions=(0.5, 0.25, 0.25))
    kw.update(over)
    return ImageFolderDataset.Config(**kw)


def _task(**cfg) -> SoftLabelsTask:
    return SoftLabelsTask(SoftLabelsTask.Config(**cfg), DatasetInfo(bands=("R", "G", "B"), targets=tuple(NAMES)))


# -- losses --------------------------------------------------------------------------------------------------

def test_soft_cross_entropy_hand_values_and_minimum_at_the_targets():
    t = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    assert float(soft_cross_entropy(torch.zeros(2, 2), t)) == pytest.approx(math.log(2))
    z = torch.log(t).clone().requires_grad_(True)  # softmax(log t) = t: the minimum, zero gradient
    loss = soft_cross_entropy(z, t)
    loss.backward()
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-6)
    entropy = -(0.5 * math.log(0.5) * 2 + 0.2 * math.log(0.2) + 0.8 * math.log(0.8)) / 2
    assert float(loss.detach()) == pytest.approx(entropy, rel=1e-5)


def test_mse_and_rmse_losses_zero_for_perfect_predictions_with_finite_gradients():
    t = torch.tensor([[0.1, 0.3, 0.6], [1.0, 0.0, 0.0]])
    p = t.clone().requires_grad_(True)
    assert float(mse_loss(p, t).detach()) == 0.0
    r = rmse_loss(p, t)
    assert float(r.detach()) == pytest.approx(0.0, abs=1e-5)
    r.backward()
    assert torch.isfinite(p.grad).all()
    q = torch.tensor([[0.2, 0.3, 0.5], [0.8, 0.2, 0.0]])
    # sqrt(mean over N*K): (0.01 + 0 + 0.01 + 0.04 + 0.04 + 0) / 6
    assert float(rmse_loss(q, t)) == pytest.approx(math.sqrt(0.1 / 6), rel=1e-5)
    assert float(mse_loss(q, t)) == pytest.approx(0.1 / 6, rel=1e-5)


def test_dirichlet_multinomial_hand_value_and_scipy():
    # alpha = (1, 1): every split of N votes between two answers is equally likely, P = 1 / (N + 1)
    nll = dirichlet_multinomial_nll(torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 7.0]]))
    assert float(nll[0]) == pytest.approx(math.log(11), rel=1e-5)
    from scipy.stats import dirichlet_multinomial

    alpha = np.array([2.5, 0.7, 4.0])
    votes = np.array([5, 1, 9])
    ours = float(dirichlet_multinomial_nll(torch.tensor(alpha[None]), torch.tensor(votes[None], dtype=torch.float32))[0])
    assert ours == pytest.approx(-dirichlet_multinomial.logpmf(votes, alpha, votes.sum()), rel=1e-4)


def test_dirichlet_multinomial_lower_for_the_right_concentrations():
    votes = torch.tensor([[18.0, 2.0], [1.0, 19.0]])
    right = torch.tensor([[9.0, 1.0], [0.5, 9.5]]) * 4
    wrong = right.flip(dims=(1,))
    assert (dirichlet_multinomial_nll(right, votes) < dirichlet_multinomial_nll(wrong, votes)).all()
    # a sample without votes contributes nothing
    assert float(dirichlet_multinomial_nll(right, torch.zeros(2, 2)).abs().max()) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "rmse", "dirichlet_multinomial"])
def test_every_loss_has_finite_gradients_even_for_extreme_outputs(loss):
    task = _task(loss=loss)
    outputs = torch.tensor([[50.0, -50.0, 0.0], [0.0, 0.0, 0.0], [-30.0, 30.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    batch = {"target": target, "votes": torch.round(target * 20)}
    value = task.loss_from_outputs(outputs, batch)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(outputs.grad).all()
    probs = task.probabilities(outputs.detach())
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5) and (probs >= 0).all()


def test_concentrations_respect_the_offset():
    z = torch.linspace(-40, 40, 9)[None]
    for kind in ("softplus", "exp"):
        a = concentrations(z, kind, 1.0)
        assert (a >= 1.0).all() and torch.isfinite(a).all()


# -- metric definitions --------------------------------------------------------------------------------------

def test_scores_on_a_hand_computed_example():
    t = np.array([[1.0, 0.0], [0.5, 0.5], [0.3, 0.7]])
    p = np.array([[0.8, 0.2], [0.5, 0.5], [0.6, 0.4]])
    s = soft_label_scores(t, p)
    # squared errors: .04 .04 | 0 0 | .09 .09 -> mean over N*K = 0.26 / 6
    assert s["rmse"] == pytest.approx(math.sqrt(0.26 / 6))
    assert s["mse"] == pytest.approx(0.26 / 6)
    assert s["mae"] == pytest.approx((0.2 + 0.2 + 0.3 + 0.3) / 6)
    kl = [math.log(1 / 0.8), 0.0, 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)]
    assert s["kl"] == pytest.approx(np.mean(kl))  # 0 ln 0 = 0
    assert s["accuracy"] == pytest.approx(2 / 3)  # the tie (0.5, 0.5) counts as class 0 on both sides
    assert np.allclose(s["rmse_per_class"], np.sqrt([(0.04 + 0 + 0.09) / 3] * 2))
    assert np.allclose(s["bias_per_class"], [(-0.2 + 0 + 0.3) / 3, (0.2 + 0 - 0.3) / 3])
    perfect = soft_label_scores(t, t)
    assert perfect["rmse"] == 0 and perfect["kl"] == pytest.approx(0, abs=1e-6) and perfect["accuracy"] == 1


def test_validation_metric_collection_matches_the_test_definitions():
    task = _task()
    metrics = task.make_metrics()
    rng = np.random.default_rng(1)
    t = rng.dirichlet([1, 1, 1], size=20).astype(np.float32)
    p = rng.dirichlet([2, 2, 2], size=20).astype(np.float32)
    for sl in (slice(0, 7), slice(7, 20)):  # two batches
        task.update_metrics(metrics, torch.from_numpy(p[sl]), {"target": torch.from_numpy(t[sl])})
    got = {k: float(v) for k, v in metrics.compute().items()}
    want = soft_label_scores(t, p)
    assert set(got) == {"rmse", "mae", "kl", "accuracy"}
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_reliability_table_and_calibration_error():
    t = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    rel = reliability_table(t, p, ["a", "b"], n_bins=2)
    a = rel[rel["target"] == "a"]
    assert list(a["n"]) == [2, 2]
    assert list(a["mean_pred"]) == pytest.approx([0.25, 0.75]) and list(a["mean_true"]) == pytest.approx([0.0, 1.0])
    assert calibration_error(rel) == pytest.approx(0.25)
    assert calibration_error(reliability_table(t, t, ["a", "b"], 2)) == pytest.approx(0.0)


def _predictions(t: np.ndarray, p: np.ndarray, band: list[str]) -> Table:
    tab = Table({"id": [f"o{i}" for i in range(len(t))], "band": band})
    for j, n in enumerate(NAMES):
        tab[f"true_{n}"] = t[:, j]
        tab[f"p_{n}"] = p[:, j]
    return tab


def test_evaluate_metrics_tables_grouping_and_headline():
    t = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [0.4, 0.4, 0.2]])
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    preds = _predictions(t, p, ["F435W", "F606W", "F435W", "F606W"])
    task = _task(rmse_by=["band"], reliability_bins=4)
    metrics, tables = task.evaluate(preds, Table())
    want = soft_label_scores(t, p)
    assert metrics["n_evaluated"] == 4 and metrics["rmse"] == pytest.approx(want["rmse"])
    assert metrics["rmse_disk"] == pytest.approx(want["rmse_per_class"][1])
    assert {"per_target", "reliability", "rmse_by_band"} <= set(tables)
    by = tables["rmse_by_band"]
    assert list(by["band"]) == ["F435W", "F606W"] and list(by["n"]) == [2, 2]
    assert by["rmse"][0] == pytest.approx(soft_label_scores(t[[0, 2]], p[[0, 2]])["rmse"])
    assert task.headline({k: v for k, v in metrics.items()}) == f"test RMSE {want['rmse']:.4f} (4 samples)"
    assert "sqrt(mean over all N x K" in task.report(preds, metrics, tables)


def test_evaluate_skips_samples_without_targets_or_predictions():
    t = np.array([[1.0, 0.0, 0.0], [np.nan] * 3, [0.0, 1.0, 0.0]])
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]])
    preds = _predictions(t, p, ["a", "a", "b"])
    preds["p_smooth"] = MaskedColumn(preds["p_smooth"], mask=[False, False, True])  # a sample with no prediction row
    metrics, _ = _task().evaluate(preds, Table())
    assert metrics["n_evaluated"] == 1
    assert metrics["rmse"] == pytest.approx(soft_label_scores(t[:1], p[:1])["rmse"])
    metrics, tables = _task().evaluate(Table({"id": ["x"], "p_smooth": [0.2], "p_disk": [0.5], "p_artifact": [0.3]}),
                                       Table())
    assert metrics["n_evaluated"] == 0 and tables == {}


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.dirichlet([1, 1, 1], size=30)
    p = rng.dirichlet([1, 1, 1], size=30)
    preds = _predictions(t, p, ["F435W", "F606W", "F814W"] * 10)
    task = _task(rmse_by=["band"])
    metrics, _ = task.evaluate(preds, Table())
    paths = task.plots(preds, Table(), metrics, Table(), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["predicted_vs_true.png", "reliability.png", "residuals.png", "rmse_by_band.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert not list(tmp_path.glob(".*tmp*"))


def test_task_refuses_a_data_set_without_targets():
    with pytest.raises(ConfigError, match="needs a data set with targets.*target_cols"):
        SoftLabelsTask(SoftLabelsTask.Config(), DatasetInfo(bands=("R",), classes=("a", "b")))
    with pytest.raises(ConfigError, match="at least 2 targets"):
        SoftLabelsTask(SoftLabelsTask.Config(), DatasetInfo(bands=("R",), targets=("a",)))


# -- check_data ----------------------------------------------------------------------------------------------

class _Fake(ImageDataset):
    """A data set with given targets (and ids) and no images worth reading."""

    name = "fake"

    def __init__(self, targets, ids=None, votes=None):
        super().__init__(ImageDataset.Config(), split="train", seed=0, cache_dir=Path("."))
        self._t = np.asarray(targets, dtype=np.float32)
        self._ids = ids
        self._v = votes

    def __len__(self):
        return len(self._t)

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4), "index": i, "target": torch.from_numpy(self._t[i])}

    def info(self):
        return DatasetInfo(bands=("R", "G", "B"), targets=tuple(NAMES))

    def targets(self):
        return self._t

    def votes(self):
        return self._v

    def catalog(self):
        return Table({"id": self._ids if self._ids is not None else list(range(len(self)))})


@pytest.mark.parametrize("bad, match", [
    ([0.2, 0.2, 0.2], r"sample 1 \(id 'b'\) has targets summing to 0\.6000, not 1.*normalize_targets"),
    ([1.2, -0.2, 0.0], r"sample 1 \(id 'b'\) has a negative target -0\.2 in 'disk'"),
    ([0.5, np.nan, 0.5], r"sample 1 \(id 'b'\) has no value \(NaN or blank\) in target\(s\) \['disk'\]"),
])
def test_check_data_names_the_bad_sample_and_the_fix(bad, match):
    ds = _Fake([[0.2, 0.3, 0.5], bad, [1.0, 0.0, 0.0]], ids=["a", "b", "c"])
    with pytest.raises(DataError, match=match):
        _task().check_data(ds, "train")


def test_check_data_tolerance_unlabelled_test_rows_and_votes():
    task = _task()
    task.check_data(_Fake([[0.2, 0.3, 0.5004], [1.0, 0.0, 0.0]]), "train")  # within 1e-3
    task.check_data(_Fake([[0.2, 0.3, 0.5], [np.nan] * 3]), "test")  # unlabelled test sample: predicted, not scored
    with pytest.raises(DataError, match=r"val split .*sample 1 \(id '1'\) has no value.*drop the sample"):
        task.check_data(_Fake([[0.2, 0.3, 0.5], [np.nan] * 3]), "val")
    task.check_data(_Fake([[0.2, 0.3, 0.9]]), "predict")  # nothing to check on unlabelled data
    with pytest.raises(DataError, match="no vote counts.*count_col.*votes_cols"):
        _task(loss="dirichlet_multinomial").check_data(_Fake([[0.2, 0.3, 0.5]]), "train")
    with pytest.raises(DataError, match="rmse_by names column 'band'.*extra_columns"):
        _task(rmse_by=["band"]).check_data(_Fake([[0.2, 0.3, 0.5]]), "test")


# -- the data side: common.assign_targets --------------------------------------------------------------------

def _table(**cols) -> Table:
    base = {"id": ["a", "b", "c"], "x": [0.2, 0.5, 0.0], "y": [0.8, 0.5, 1.0], "n": [10, 4, 7]}
    base.update(cols)
    return Table(base)


def test_assign_targets_votes_labels_and_unlabelled_rows():
    tab = _table(x=MaskedColumn([0.2, 0.5, 0.0], mask=[False, False, True]),
                 y=MaskedColumn([0.8, 0.5, 1.0], mask=[False, False, True]))
    ts = assign_targets(tab, LabelSplitConfig(target_cols=["x", "y"], target_names=["p", "q"], count_col="n"),
                        where="t", ids=tab["id"])
    assert ts.names == ("p", "q") and ts.values.dtype == np.float32
    assert np.allclose(ts.values[:2], [[0.2, 0.8], [0.5, 0.5]]) and np.isnan(ts.values[2]).all()
    assert np.allclose(ts.votes[:2], [[2, 8], [2, 2]]) and list(ts.labels) == [1, 0, -1]
    counts = assign_targets(_table(m=[10, 0, 1]), LabelSplitConfig(votes_cols=["n", "m"]), where="t")
    assert np.allclose(counts.values, [[0.5, 0.5], [1.0, 0.0], [0.875, 0.125]])
    assert np.allclose(counts.votes, [[10, 10], [4, 0], [7, 1]]) and list(counts.labels) == [0, 0, 0]
    assert assign_targets(_table(), LabelSplitConfig(), where="t") is None


@pytest.mark.parametrize("cols, match", [
    ({"y": [0.8, 0.4, 1.0]}, r"row 1 \(id 'b'\) has targets summing to 0\.9000, not 1.*normalize_targets: true"),
    ({"x": [0.2, -0.5, 0.0], "y": [0.8, 1.5, 1.0]}, r"row 1 \(id 'b'\) has a negative target -0\.5 in 'x'"),
    ({"y": [0.8, np.nan, 1.0]}, r"row 1 \(id 'b'\) has no value \(NaN or blank\) in target\(s\) \['y'\].*unlabelled"),
    ({"x": ["a", "b", "c"]}, r"column 'x' \(data\.target_cols\) is not numeric"),
])
def test_assign_targets_bad_rows(cols, match):
    tab = _table(**cols)
    with pytest.raises(DataError, match=match):
        assign_targets(tab, LabelSplitConfig(target_cols=["x", "y"]), where="labels table 'l.csv'", ids=tab["id"])


def test_normalize_targets_renormalises_only_when_asked():
    tab = _table(x=[2.0, 1.0, 0.0], y=[2.0, 3.0, 0.0])
    with pytest.raises(DataError, match="row 0.*summing to 4.0000"):
        assign_targets(tab, LabelSplitConfig(target_cols=["x", "y"]), where="t")
    with pytest.raises(DataError, match=r"row 2 \(id 'c'\) has all targets 0 and cannot be normalised"):
        assign_targets(tab, LabelSplitConfig(target_cols=["x", "y"], normalize_targets=True), where="t",
                       ids=tab["id"])
    tab["x"][2] = 1.0
    ts = assign_targets(tab, LabelSplitConfig(target_cols=["x", "y"], normalize_targets=True), where="t")
    assert np.allclose(ts.values, [[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])


def test_target_config_errors():
    with pytest.raises(ValueError, match="target_names has 1 names for 2 target columns"):
        LabelSplitConfig(target_cols=["x", "y"], target_names=["p"])
    with pytest.raises(ValueError, match="count_col .* or votes_cols .*not both"):
        LabelSplitConfig(target_cols=["x", "y"], votes_cols=["a", "b"], count_col="n")
    with pytest.raises(ValueError, match="count_col needs target_cols"):
        LabelSplitConfig(count_col="n")
    check_target_rows([[0.25, 0.75]], where="t")  # a valid row passes


# -- the data side: image_folder -----------------------------------------------------------------------------

def test_image_folder_gives_targets_votes_and_groups(soft_folder, tmp_path):
    splits = {s: ImageFolderDataset(_folder_cfg(soft_folder), split=s, seed=0, cache_dir=tmp_path)
              for s in ("train", "val", "test")}
    ds = splits["train"]
    sample = ds[0]
    assert sample["target"].dtype == torch.float32 and sample["target"].shape == (3,)
    assert "label" not in sample  # no label_col: soft labels only (the folder has no 'label' column either)
    info = ds.info()
    assert info.targets == tuple(NAMES) and info.classes is None
    t = ds.targets()
    assert t.shape == (len(ds), 3) and np.allclose(t.sum(axis=1), 1, atol=1e-4)
    assert np.allclose(ds.votes(), np.round(t * 20)) and torch.equal(sample["votes"], torch.from_numpy(ds.votes()[0]))
    assert list(ds.labels()) == list(t.argmax(axis=1))  # stratification uses the targets' argmax
    # group_col: all three band stamps of a galaxy fall in one split, and the splits cover every stamp
    groups = {s: set(d.groups()) for s, d in splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and \
        not (groups["val"] & groups["test"])
    assert sum(len(d) for d in splits.values()) == 48
    for s, d in splits.items():
        g = np.asarray(d.groups())
        assert all((g == x).sum() == 3 for x in set(g)), s
    cat = splits["test"].catalog()
    assert {"id", "galaxy", "band"} <= set(cat.colnames)
    for s, d in splits.items():
        _task(rmse_by=["band"]).check_data(d, s)


def test_image_folder_votes_cols_without_groups(soft_folder, tmp_path):
    cfg = _folder_cfg(soft_folder, target_cols=None, count_col=None, group_col=None,
                      votes_cols=["votes_smooth", "votes_disk", "votes_artifact"])
    ds = ImageFolderDataset(cfg, split="train", seed=0, cache_dir=tmp_path)
    assert np.allclose(ds.targets() * 20, ds.votes(), atol=1e-4)
    assert ds.groups is None  # no group_col: no groups() (training subsets count samples)


def test_image_folder_label_col_default_not_required_and_training_subsets_by_group(soft_folder, tmp_path):
    from astrotl.engine import subset_indices

    # a resolved config repeats label_col's default 'label': with target_cols it is not required
    ds = ImageFolderDataset(_folder_cfg(soft_folder, label_col="label"), split="train", seed=0, cache_dir=tmp_path)
    assert ds.info().classes is None and ds.info().targets == tuple(NAMES)
    idx = subset_indices(ds, 3, unit="auto", seed=0)  # 3 objects, all of their stamps
    groups = np.asarray(ds.groups())[idx]
    assert len(set(groups)) == 3 and len(idx) == 9
    flat = ImageFolderDataset(_folder_cfg(soft_folder, group_col=None), split="train", seed=0, cache_dir=tmp_path)
    assert len(subset_indices(flat, 5, unit="auto", seed=0)) == 5  # no group_col: samples


def test_image_folder_bad_target_row_names_the_row(soft_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images").symlink_to(soft_folder / "images")
    tab = Table.read(soft_folder / "labels.csv", format="ascii.csv")
    tab["frac_disk"][4] += 0.1
    tab.write(bad / "labels.csv", format="ascii.csv")
    with pytest.raises(DataError, match=r"labels table .*row 4 \(id 'g001_F606W'\) has targets summing to 1\.1000"):
        ImageFolderDataset(_folder_cfg(bad), split="train", seed=0, cache_dir=tmp_path)
    ds = ImageFolderDataset(_folder_cfg(bad, normalize_targets=True), split="predict", seed=0, cache_dir=tmp_path)
    assert np.allclose(ds.targets().sum(axis=1), 1, atol=1e-5)


# -- end to end ----------------------------------------------------------------------------------------------

def test_soft_labels_run_end_to_end_through_the_cli(cli, soft_folder, tmp_path):
    cfg = yaml.safe_load((REPO / "tasks" / "smoke" / "soft_labels_tiny.yaml").read_text())
    cfg["data"]["root"] = str(soft_folder)
    cfg["output_dir"] = str(tmp_path / "runs")
    task_file = tmp_path / "soft.yaml"
    task_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, out, err = cli("run", task_file)
    assert code == 0, err
    assert "test RMSE" in out and "samples)" in out
    run = tmp_path / "runs" / "soft_labels_tiny"
    for f in ("predictions.ecsv", "metrics.json", "report.md", "tables/per_target.ecsv", "tables/reliability.ecsv",
              "tables/rmse_by_band.ecsv", "plots/predicted_vs_true.png", "plots/residuals.png",
              "plots/reliability.png", "plots/rmse_by_band.png"):
        assert (run / f).is_file(), f
    preds = Table.read(run / "predictions.ecsv")
    for n in NAMES:
        assert f"true_{n}" in preds.colnames and f"p_{n}" in preds.colnames
    assert {"id", "band", "galaxy", "pred_class"} <= set(preds.colnames)
    p = np.stack([np.asarray(preds[f"p_{n}"]) for n in NAMES], axis=1)
    t = np.stack([np.asarray(preds[f"true_{n}"]) for n in NAMES], axis=1)
    assert np.allclose(p.sum(axis=1), 1, atol=1e-4)
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["test_rmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)), rel=1e-4)
    assert "RMSE" in (run / "report.md").read_text()


def test_catalog_cutouts_gives_targets_and_groups(tmp_path):
    from astropy.io import fits

    from astrotl.datasets import CatalogCutoutDataset

    rng = np.random.default_rng(0)
    fits.PrimaryHDU(rng.normal(0, 1, (64, 64)).astype(np.float32)).writeto(tmp_path / "img.fits")
    n = 12
    frac = rng.dirichlet([1, 1, 1], size=n)
    frac[:, 2] = 1 - frac[:, 0] - frac[:, 1]
    cat = Table({"id": [f"s{i}" for i in range(n)], "x": rng.uniform(10, 54, n), "y": rng.uniform(10, 54, n),
                 "obj": [f"o{i // 2}" for i in range(n)], "f_a": frac[:, 0], "f_b": frac[:, 1], "f_c": frac[:, 2],
                 "nv": np.full(n, 10)})
    cat.write(tmp_path / "cat.ecsv")
    cfg = CatalogCutoutDataset.Config(images={"V": str(tmp_path / "img.fits")}, catalog=str(tmp_path / "cat.ecsv"),
                                      size=8, target_cols=["f_a", "f_b", "f_c"], count_col="nv", group_col="obj",
                                      split_fractions=(0.5, 0.25, 0.25))
    splits = {s: CatalogCutoutDataset(cfg, split=s, seed=0, cache_dir=tmp_path / "cache") for s in ("train", "val", "test")}
    ds = splits["train"]
    assert ds.info().targets == ("f_a", "f_b", "f_c") and ds.info().classes is None
    assert ds[0]["target"].shape == (3,) and ds[0]["votes"].sum() == pytest.approx(10, abs=1)
    assert np.allclose(ds.targets(), frac[ds.rows()], atol=1e-6)
    groups = [set(d.groups()) for d in splits.values()]
    assert sum(len(d) for d in splits.values()) == n and not (groups[0] & groups[1] or groups[0] & groups[2])
    SoftLabelsTask(SoftLabelsTask.Config(), ds.info()).check_data(ds, "train")
