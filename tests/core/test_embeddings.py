"""Frozen-backbone training on cached embeddings (astrotl.embeddings): same metrics as the uncached path,
the cache reused, and every reason not to cache a one-line error with ``cache_embeddings: true``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402

from astrotl.data import d4_augment  # noqa: E402
from astrotl.embeddings import D4, d4_view, identify_views, probe_image  # noqa: E402


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("emb_classes"), n=96, size=16, seed=3)


def _task(tmp_path: Path, data_root: Path, name: str, **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "task": {"name": "classification", "augment": "none"},
        "data": {"name": "image_folder", "root": str(data_root), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none", "n_blocks": 0},
        "head": {"name": "linear"},
        "optim": {"lr": 0.01, "scheduler": "none"},
        "trainer": {"max_epochs": 2, "batch_size": 8, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "early_stopping": {"enabled": False}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run(cli, path: Path) -> tuple[dict, Table, dict]:
    code, out, err = cli("run", path)
    assert code == 0, err
    run = Path(yaml.safe_load(path.read_text())["output_dir"]) / yaml.safe_load(path.read_text())["name"]
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["metrics"], Table.read(run / "predictions.ecsv"), json.loads((run / "run.json").read_text())


def test_d4_views_match_d4_augment_and_are_identified():
    """The views are d4_augment's elements, and a probe image tells which one a batch_augment applied."""
    x = torch.randn(64, 3, 6, 6)
    gen = torch.Generator().manual_seed(5)
    aug = d4_augment(x, generator=gen)
    probe = probe_image(6, 6)
    which = identify_views(d4_augment(probe.expand(64, 1, 6, 6).clone(), torch.Generator().manual_seed(5)), probe, D4)
    assert (which >= 0).all() and len(set(which.tolist())) > 4
    for i in range(64):
        k, f = D4[int(which[i])]
        assert torch.equal(aug[i], d4_view(x[i], k, f))
    full = identify_views(d4_augment(probe.expand(64, 1, 6, 6).clone(), torch.Generator().manual_seed(5)), probe, D4,
                          full=True)
    assert torch.equal(full, which)
    shifted = torch.roll(probe, 1, dims=-1)
    assert identify_views(shifted, probe, D4, full=True).item() == -1


@pytest.mark.parametrize("augment,views", [("none", 1), pytest.param("d4", 8, marks=pytest.mark.slow)])
def test_cached_equals_uncached(cli, tmp_path, classes_dir, augment, views):
    """Same draws, same samples: the cached run's metrics and predictions are the uncached run's."""
    common = {"task": {"augment": augment}, "trainer": {"embeddings": {"views": views}}}
    plain, p_plain, st_plain = _run(cli, _task(tmp_path, classes_dir, "plain",
                                                **{**common, "trainer": {**common["trainer"], "cache_embeddings": False}}))
    cached, p_cached, st_cached = _run(cli, _task(tmp_path, classes_dir, "cached",
                                                  **{**common, "trainer": {**common["trainer"], "cache_embeddings": True}}))
    assert "embedding_cache" not in st_plain["weights"]
    report = st_cached["weights"]["embedding_cache"]
    assert report["views"] == views and report["splits"]["train"]["views"] == views
    assert report["splits"]["train"]["samples"] == plain["n_train"] and not report["splits"]["train"]["cached"]
    for key in ("test_accuracy", "best_val_loss", "test_roc_auc"):
        assert abs(plain[key] - cached[key]) < 1e-3, (key, plain[key], cached[key])
    assert list(p_plain["pred_class"]) == list(p_cached["pred_class"])
    np.testing.assert_allclose(p_plain["p_long"], p_cached["p_long"], atol=1e-3)


@pytest.mark.slow
def test_cache_is_reused_and_keyed_by_weights(cli, tmp_path, classes_dir):
    first = _task(tmp_path, classes_dir, "first", trainer={"max_epochs": 1})
    _, _, st = _run(cli, first)
    assert st["weights"]["embedding_cache"]["splits"]["val"]["cached"] is False  # auto: frozen backbone, augment none
    again = _task(tmp_path, classes_dir, "again", trainer={"max_epochs": 1}, optim={"lr": 0.02})
    _, _, st2 = _run(cli, again)
    assert all(s["cached"] for s in st2["weights"]["embedding_cache"]["splits"].values())
    assert st2["weights"]["embedding_cache"]["backbone_sha256"] == st["weights"]["embedding_cache"]["backbone_sha256"]
    other_init = _task(tmp_path, classes_dir, "other", seed=1, trainer={"max_epochs": 1})
    _, _, st3 = _run(cli, other_init)  # another seed: another random backbone, other embeddings
    assert st3["weights"]["embedding_cache"]["backbone_sha256"] != st["weights"]["embedding_cache"]["backbone_sha256"]
    assert not st3["weights"]["embedding_cache"]["splits"]["train"]["cached"]


@pytest.mark.slow
def test_auto_trains_the_usual_way_when_it_cannot_cache(cli, tmp_path, classes_dir):
    _, _, st = _run(cli, _task(tmp_path, classes_dir, "d4auto", task={"augment": "d4"}, trainer={"max_epochs": 1}))
    assert "embedding_cache" not in st["weights"]  # d4 needs views: 8
    _, _, st = _run(cli, _task(tmp_path, classes_dir, "full", backbone={"n_blocks": None}, trainer={"max_epochs": 1}))
    assert "embedding_cache" not in st["weights"]  # the backbone trains


@pytest.mark.parametrize("sections,match", [
    ({"backbone": {"n_blocks": None}}, r"the backbone trains \(\d+ trainable tensors.*backbone.n_blocks: 0"),
    ({"task": {"augment": "d4"}}, r"uses \d rotations/flips but trainer.embeddings.views is 1; set trainer.embeddings.views: 8"),
    ({"task": {"augment": "flip"}}, r"set trainer.embeddings.views: 2"),
    ({"trainer": {"strategy": "ddp", "devices": 2}}, r"runs several processes"),
])
def test_cache_true_refuses_with_the_reason(cli, tmp_path, classes_dir, sections, match):
    trainer = {"cache_embeddings": True, **sections.pop("trainer", {})}
    path = _task(tmp_path, classes_dir, "refused", trainer=trainer, **sections)
    code, _, err = cli("run", path)
    assert code == 2 and err.count("\n") == 1, err
    assert "trainer.cache_embeddings: true, but" in err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "runs" / "refused").exists()  # refused before the run directory is touched


def test_bad_views_value_is_a_config_error(cli, tmp_path, classes_dir):
    code, _, err = cli("run", _task(tmp_path, classes_dir, "badviews", trainer={"embeddings": {"views": 4}}))
    assert code == 2 and "views" in err and err.count("\n") == 1
