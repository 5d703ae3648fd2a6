"""The core's own end-to-end tests on data of its own (no plugin): classification, a two-stage run,
training subsets, many-rows-per-sample predictions and load_run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402

from astrotl.engine import predictions_table, subset_indices  # noqa: E402


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("classes"), n=96, size=16, seed=0)


def _task(tmp_path: Path, data_root: Path, name: str = "core", **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", "augment": "d4"},
        "data": {"name": "image_folder", "root": str(data_root), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "extra_columns": ["group"], "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"lr": 0.003, "scheduler": "none"},
        "trainer": {"max_epochs": 2, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_classification_end_to_end_on_core_data(cli, tmp_path, classes_dir):
    code, out, err = cli("run", _task(tmp_path, classes_dir))
    assert code == 0, err
    assert "test accuracy" in out and "(chance 0.50)" in out
    run = tmp_path / "runs" / "core"
    st = _status(run)
    assert st["status"] == "finished" and "builtin" in st["plugins"]
    preds = Table.read(run / "predictions.ecsv")
    assert len(preds) == 24 and {"true_class", "pred_class", "p_round", "p_long", "group"} <= set(preds.colnames)
    m = json.loads((run / "metrics.json").read_text())
    assert m["headline_metric"] == "accuracy" and m["higher_is_better"] is True
    assert "test_roc_auc" in m["metrics"] and (run / "tables" / "roc.ecsv").is_file()
    assert (run / "plots" / "roc_curve.png").is_file() and (run / "plots" / "training_curves.png").is_file()


def test_two_stage_run_end_to_end_and_resume(cli, tmp_path, classes_dir):
    stages = [
        {"name": "pretrain", "trainer": {"max_epochs": 1}},
        {"name": "finetune", "backbone": {"weights": "stage:pretrain", "freeze_blocks": 1}, "head_from": "pretrain",
         "optim": {"lr": 0.001}, "train_subset": {"size": 12}},
    ]
    p = _task(tmp_path, classes_dir, name="twostage", stages=stages)
    code, out, err = cli("validate", p)
    assert code == 0 and "stages pretrain, finetune" in out, err
    code, out, err = cli("run", p)
    assert code == 0, err
    assert "final stage 'finetune'" in out
    run = tmp_path / "runs" / "twostage"
    for stage in ("pretrain", "finetune"):
        assert _status(run / "stages" / stage)["status"] == "finished"
    assert _status(run)["status"] == "finished"
    ft = yaml.safe_load((run / "stages" / "finetune" / "config.resolved.yaml").read_text())
    assert ft["backbone"]["weights"] == f"run:{(run / 'stages' / 'pretrain').resolve()}"
    ft_status = _status(run / "stages" / "finetune")
    assert ft_status["weights"]["source"] != "random"
    m = json.loads((run / "stages" / "finetune" / "metrics.json").read_text())["metrics"]
    assert m["n_train"] == 12
    side = Table.read(run / "stages.ecsv")
    assert {"metric", "pretrain", "finetune"} <= set(side.colnames)
    report = (run / "report.md").read_text()
    assert "| [pretrain](stages/pretrain/report.md)" in report and "Metrics side by side" in report
    # resume after the run finished: finished stages are skipped, the run is finished again
    (run / "run.json").write_text(json.dumps({**_status(run), "status": "interrupted"}))
    mtime = (run / "stages" / "pretrain" / "model.safetensors").stat().st_mtime_ns
    code, out, err = cli("run", p, "--resume")
    assert code == 0, err
    assert (run / "stages" / "pretrain" / "model.safetensors").stat().st_mtime_ns == mtime
    # predict on a staged run uses the last stage's model
    code, out, err = cli("predict", run, "--split", "test", "--out", tmp_path / "p.ecsv")
    assert code == 0, err
    assert Table.read(tmp_path / "p.ecsv").meta["astrotl_run"].endswith("finetune")


@pytest.mark.parametrize("stages,match", [
    ([{"name": "a"}, {"name": "a"}], "stage name 'a' is used twice"),
    ([{"name": "a", "backbone": {"weights": "stage:b"}}, {"name": "b"}], "names stage 'b'.*does not run before it"),
    ([{"name": "a", "head_from": "zz"}], "head_from names stage 'zz'"),
    ([], "'stages' is empty"),
    ([{"name": "a", "bogus": 1}], "unknown key 'stages.0.bogus'"),
])
def test_bad_stages_are_one_line_errors(cli, tmp_path, classes_dir, stages, match):
    p = _task(tmp_path, classes_dir, name="bad", stages=stages)
    code, out, err = cli("run", p)
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "runs" / "bad").exists()


def test_missing_group_col_is_a_one_line_error(cli, tmp_path, classes_dir):
    p = _task(tmp_path, classes_dir, name="nogroup", data={"group_col": "galaxy"})
    code, _, err = cli("run", p)
    assert code == 2 and "no group column 'galaxy'" in err and "group" in err
    assert not (tmp_path / "runs" / "nogroup").exists()


def test_group_split_keeps_groups_together(classes_dir, tmp_path):
    from astrotl.datasets.image_folder import ImageFolderConfig, ImageFolderDataset

    cfg = ImageFolderConfig(root=str(classes_dir), id_col="id", file_pattern="images/{id}.png", color="grayscale",
                            extra_columns=["group"], group_col="group", split_fractions=(0.5, 0.25, 0.25))
    groups = {}
    for split in ("train", "val", "test"):
        ds = ImageFolderDataset(cfg, split=split, seed=0, cache_dir=tmp_path)
        groups[split] = set(np.asarray(ds.catalog()["group"]).astype(str))
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert sum(len(g) for g in groups.values()) == 24


class _Toy:
    """A minimal data set for subset tests: labels and groups."""

    def __init__(self, labels, groups=None):
        self._labels = np.asarray(labels)
        self._groups = None if groups is None else np.asarray(groups)
        if groups is None:
            self.groups = None

    def __len__(self):
        return len(self._labels)

    def labels(self):
        return self._labels

    def groups(self):  # noqa: F811 -- shadowed per instance when there are no groups
        return self._groups


def test_subset_is_seeded_stratified_and_grouped():
    labels = np.array([0] * 80 + [1] * 20)
    a = subset_indices(_Toy(labels), 10, unit="samples", seed=1)
    b = subset_indices(_Toy(labels), 10, unit="samples", seed=1)
    assert list(a) == list(b) and len(a) == 10
    assert (labels[a] == 1).sum() == 2  # the 80/20 proportions kept
    assert list(subset_indices(_Toy(labels), 10, unit="samples", seed=2)) != list(a)
    groups = np.repeat(np.arange(25), 4)
    g = subset_indices(_Toy(labels, groups), 5, unit="groups", seed=0)
    assert len(g) == 20 and len(set(groups[g])) == 5  # whole groups
    from astrotl.errors import ConfigError

    with pytest.raises(ConfigError, match="has only 100 samples"):
        subset_indices(_Toy(labels), 101, unit="samples")


def test_predictions_table_keeps_samples_without_rows_and_repeats_many():
    cat = Table({"id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]})
    rows = [{"index": 0, "score": 0.9}, {"index": 0, "score": 0.5}, {"index": 2, "score": 0.7}]
    t = predictions_table(rows, cat)
    assert list(t["id"]) == ["a", "a", "b", "c"]
    assert bool(t["score"].mask[2]) and float(t["score"][0]) == 0.9
    empty = predictions_table([], cat)
    assert list(empty["id"]) == ["a", "b", "c"]


def test_predictions_table_one_row_per_sample_equals_the_join():
    """The side-by-side path (rows in sample order) gives the join's table and leaves the catalogue alone."""
    cat = Table({"id": ["a", "b", "c", "d"], "x": [4.0, 3.0, 2.0, 1.0], "score": [1, 2, 3, 4]}, meta={"k": 1})
    rows = [{"index": i, "score": s, "pred_class": c} for i, s, c in [(0, 0.1, "u"), (1, 0.2, "vv"), (2, 0.3, "u"),
                                                                       (3, 0.4, "w")]]
    side = predictions_table(rows, cat)
    joined = predictions_table(rows[::-1], cat)  # out of order: the join path
    assert side.colnames == joined.colnames == ["id", "x", "cat_score", "index", "score", "pred_class"]
    for name in side.colnames:
        assert list(side[name]) == list(joined[name]), name
    assert side.meta == {"k": 1}
    assert cat.colnames == ["id", "x", "score"] and list(cat["score"]) == [1, 2, 3, 4]
    side["x"][0] = 99.0  # the output's columns are its own
    assert cat["x"][0] == 4.0


def test_load_run_checks_bands_and_classes(cli, tmp_path, classes_dir):
    from astrotl.errors import DataError
    from astrotl.interfaces import DatasetInfo
    from astrotl.loadrun import load_run
    from astrotl.plugins import load_registries

    code, _, err = cli("run", _task(tmp_path, classes_dir, name="lr", trainer={"max_epochs": 1}))
    assert code == 0, err
    loaded = load_run(tmp_path / "runs" / "lr", load_registries())
    model, task = loaded.model_for(DatasetInfo(bands=("L",)))
    assert task.classes == ["long", "round"]
    with pytest.raises(DataError, match="band mismatch"):
        loaded.model_for(DatasetInfo(bands=("R", "G", "B")))
    with pytest.raises(DataError, match="class mismatch"):
        loaded.model_for(DatasetInfo(bands=("L",), classes=("a", "b")))
