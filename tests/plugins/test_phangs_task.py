"""The PHANGS plugin's dataset and task (the simulator has its own tests)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from astrotl.errors import ConfigError
from astrotl.interfaces import DatasetInfo
from astrotl_phangs.dataset import PhangsSimConfig, PhangsSimDataset
from astrotl_phangs.simulate import BANDS
from astrotl_phangs.task import PhangsClusterTask, PhangsClusterTaskConfig


@pytest.fixture(scope="module")
def splits(_cache_dir):
    cfg = PhangsSimConfig(n_train=40, n_val=20, n_test=20, size=16)
    return {s: PhangsSimDataset(cfg, split=s, seed=0, cache_dir=_cache_dir) for s in ("train", "val", "test")}


def test_splits_are_distinct_and_reproducible(splits, _cache_dir):
    a, b = splits["train"], splits["val"]
    assert len(a) == 40 and len(b) == 20
    assert not np.allclose(a[0]["image"].numpy(), b[0]["image"].numpy())
    again = PhangsSimDataset(PhangsSimConfig(n_train=40, n_val=20, n_test=20, size=16), split="train", seed=99,
                             cache_dir=_cache_dir)
    # the simulation seed is data.seed, not the run seed: an ensemble of model seeds sees the same data
    assert np.array_equal(a[3]["image"].numpy(), again[3]["image"].numpy())


def test_sample_dict_and_info(splits):
    s = splits["train"][0]
    assert s["image"].shape == (5, 16, 16) and s["image"].dtype.is_floating_point
    assert 0 <= s["label"] <= 3 and s["index"] == 0
    info = splits["train"].info()
    assert info.bands == BANDS and info.classes == ("1", "2", "3", "4")
    cat = splits["train"].catalog()
    assert len(cat) == 40 and {"id", "x", "y", "cls", "subclass", "mag_F555W"} <= set(cat.colnames)
    assert np.array_equal(splits["train"].labels(), np.asarray(cat["cls"]) - 1)


def _task():
    info = DatasetInfo(bands=BANDS, classes=("1", "2", "3", "4"),
                       class_descriptions=("symmetric", "asymmetric", "association", "artifact"))
    return PhangsClusterTask(PhangsClusterTaskConfig(), info)


def test_class12_combined_metrics_by_hand():
    t = Table({"true_class": ["1", "1", "2", "2", "3", "4", "4", "4"],
               "pred_class": ["2", "1", "1", "3", "3", "4", "1", "4"],
               "subclass": ["1", "1", "2", "2", "3", "4.1", "4.2", "4.2"],
               "mag_F555W": np.linspace(21, 24, 8)})
    m, tables = _task().evaluate(t)
    assert m["accuracy"] == pytest.approx(4 / 8)
    # true 1|2: 4 objects, 3 predicted as 1|2
    assert m["combined_1+2_recall"] == pytest.approx(3 / 4)
    # predicted 1|2: 4 objects (2,1,1,1), 3 truly 1|2
    assert m["combined_1+2_precision"] == pytest.approx(3 / 4)
    # merged problem: correct are rows 0,1,2,4,5,7 -> 6/8
    assert m["combined_1+2_accuracy"] == pytest.approx(6 / 8)
    assert m["accuracy_class_4"] == pytest.approx(2 / 3)
    sub = {r["subclass"]: r["accuracy"] for r in tables["per_subclass"]}
    assert sub["4.2"] == pytest.approx(0.5) and sub["4.1"] == 1.0
    cm = tables["confusion"]
    assert list(cm["pred_1"]) == [1, 1, 0, 1]
    assert "accuracy_vs_mag_F555W" in tables and tables["accuracy_vs_mag_F555W"]["n"].sum() == 8


def test_combine_with_unknown_class_is_rejected():
    info = DatasetInfo(bands=BANDS, classes=("1", "2", "3", "4"))
    with pytest.raises(ConfigError, match=r"combine names classes \['5'\]"):
        PhangsClusterTask(PhangsClusterTaskConfig(combine={"1+5": ["1", "5"]}), info)


def test_task_needs_classes():
    with pytest.raises(ConfigError, match="needs a data set with classes"):
        PhangsClusterTask(PhangsClusterTaskConfig(), DatasetInfo(bands=BANDS))
