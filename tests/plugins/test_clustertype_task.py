"""The clustertype task files, the Stellarium overlap groups, cross-validation with the core's ``cv:`` and
``astrotl clustertype-evaluate``."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table
from pydantic import ValidationError


REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tasks"


def write_fake_cache(root: Path, n_open: int = 10, n_glob: int = 15, n_neb: int = 2, size: int = 24) -> Path:
    """A tiny Stellarium cluster cache (``root/clusters``): open clusters as scattered dots, globulars as a
    central glow, Cl+N as noise; the first two globulars overlap on the sky (one group)."""
    from PIL import Image

    folder = root / "clusters"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    rows = []
    kinds = ["OCl"] * n_open + ["GCl"] * n_glob + ["Cl+N"] * n_neb
    for i, kind in enumerate(kinds):
        img = rng.normal(20, 5, (size, size, 3))
        if kind == "GCl":
            img += 200 * np.exp(-0.5 * (xx ** 2 + yy ** 2) / 3.0 ** 2)[..., None]
        elif kind == "OCl":
            for _ in range(8):
                x, y = rng.integers(2, size - 2, 2)
                img[y - 1:y + 1, x - 1:x + 1] += 180
        oid = f"NGC{1000 + i}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(folder / "images" / f"{oid}.png")
        ra = 50.0 if i in (n_open, n_open + 1) else 100.0 + 5.0 * i  # two overlapping globulars
        rows.append({"id": oid, "file": f"images/{oid}.png", "class": {"OCl": "open", "GCl": "globular"}.get(kind, "open"),
                     "ongc_type": kind, "subtype": "nebulous" if kind == "Cl+N" else "", "designation": oid,
                     "messier": "", "ra": ra, "dec": 0.0, "fov_arcmin": 20.0, "texture": f"n{1000 + i}.png",
                     "credit": "test"})
    Table(rows=[[r[k] for k in rows[0]] for r in rows], names=list(rows[0])).write(folder / "labels.ecsv",
                                                                                    format="ascii.ecsv")
    return root


@pytest.fixture
def fake_cache(tmp_path) -> Path:
    return write_fake_cache(tmp_path / "stellarium")


def _stel(cache, split, **kw):
    from astrotl_clustertype.dataset import ClustertypeStellariumConfig, ClustertypeStellariumDataset

    cfg = ClustertypeStellariumConfig(root=str(cache), size=16, **kw)
    return ClustertypeStellariumDataset(cfg, split=split, seed=0, cache_dir=cache / "ds_cache")


# -- task files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clustertype", "clustertype_paper", "clustertype_stellarium"])
def test_task_files_validate(cli, name):
    code, out, err = cli("validate", TASKS / f"{name}.yaml", "--set", "backbone.weights=none")
    assert code == 0, err
    assert out.startswith(f"OK: {TASKS / name}.yaml: run '{name}', task classification, data clustertype_")


def test_paper_recipe_is_the_papers():
    cfg = yaml.safe_load((TASKS / "clustertype_paper.yaml").read_text())
    assert cfg["backbone"] == {"name": "vgg16", "weights": "imagenet", "freeze_layers": 7}
    assert cfg["head"]["dropout"] == 0.5 and cfg["optim"]["lr"] == 1e-6
    assert cfg["trainer"]["batch_size"] == 16 and cfg["trainer"]["max_epochs"] == 40
    assert cfg["data"]["size"] == 224
    practical = yaml.safe_load((TASKS / "clustertype.yaml").read_text())
    assert practical["backbone"]["weights"] == "auto"


def test_freeze_layers_7_is_keras_layers_10():
    """Keras VGG16 layers[:10] = input, 2 conv, pool, 2 conv, pool, 3 conv: the first 7 convolutions."""
    import torch

    from astrotl.plugins import load_registries

    cls = load_registries().backbones.get("vgg16")
    bb = cls(cls.Config(weights="none", freeze_layers=7), in_chans=1, bands=("DSS2_red",))
    convs = [m for m in bb.net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 7 + [True] * 6
    assert [c.out_channels for c in convs[:7]] == [64, 64, 128, 128, 256, 256, 256]


def test_paper_recipe_without_imagenet_weights_is_a_one_line_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROTL_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ASTROTL_ALLOW_DOWNLOAD", raising=False)
    code, out, err = cli("run", TASKS / "clustertype_paper.yaml", "--set", f"output_dir={tmp_path / 'runs'}",
                         "--set", "data.n_train=4", "--set", "data.n_val=2", "--set", "data.n_test=2",
                         "--set", "data.size=32")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("astrotl: error: ImageNet weights for vgg16 (torchvision IMAGENET1K_V1) not found offline")
    assert "astrotl weights import vgg16-397923af.pth" in err
    assert not (tmp_path / "runs" / "clustertype_paper").exists()


# -- the Stellarium overlap groups ----------------------------------------------------------------------------


def test_splits_keep_overlap_groups_whole(fake_cache):
    parts = {s: _stel(fake_cache, s) for s in ("train", "val", "test", "predict")}
    ids = {s: set(parts[s].catalog()["id"]) for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 25  # Cl+N left out
    assert len(parts["predict"]) == 27 and (parts["predict"].labels() == -1).sum() == 2
    # the overlapping globulars (NGC1010, NGC1011) are one group, named by its first image, in one split
    pred = parts["predict"]
    groups = dict(zip(pred.catalog()["id"], pred.groups()))
    assert groups["NGC1010"] == groups["NGC1011"] == "NGC1010" and groups["NGC1000"] == "NGC1000"
    assert len(set(pred.groups())) == 26 and list(pred.catalog()["group"]) == list(pred.groups())
    assert sum({"NGC1010", "NGC1011"} <= ids[s] for s in ids) == 1
    for s in ("train", "val", "test"):
        assert len(parts[s].groups()) == len(parts[s])
    # the Stellarium cache is not written to: the grouped labels live in the data set cache
    assert "group" not in Table.read(fake_cache / "clusters" / "labels.ecsv").colnames


def test_core_folds_keep_the_overlap_group_whole(fake_cache):
    from astrotl.crossval import PooledDataset, fold_assignment

    pooled = PooledDataset([_stel(fake_cache, s) for s in ("train", "val", "test")])
    for seed in range(5):
        folds = fold_assignment(pooled.labels(), 5, seed, pooled.groups())
        ids = np.asarray(pooled.catalog()["id"])
        assert folds[ids == "NGC1010"][0] == folds[ids == "NGC1011"][0]
        assert np.bincount(folds).sum() == 25 and set(np.bincount(folds)) <= {4, 5, 6}  # 24 units: 23 images + 1 pair


def test_stellarium_has_no_fold_options_any_more(cli, fake_cache):
    from astrotl_clustertype.dataset import ClustertypeStellariumConfig

    for key in ("n_folds", "fold"):
        with pytest.raises(ValidationError, match=key):
            ClustertypeStellariumConfig(**{key: 3})
    code, _, err = cli("validate", TASKS / "clustertype_stellarium.yaml", "--set", "data.n_folds=5")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("astrotl: error: ") and "unknown key 'data.n_folds'" in err


def test_dataset_doctests():
    import astrotl_clustertype.dataset as mod

    failures, tried = doctest.testmod(mod, verbose=False, optionflags=doctest.ELLIPSIS)
    assert tried >= 1 and failures == 0


def test_splits_are_seeded(fake_cache):
    a = _stel(fake_cache, "test").catalog()["id"]
    b = _stel(fake_cache, "test").catalog()["id"]
    c = _stel(fake_cache, "test", split_seed=1).catalog()["id"]
    assert list(a) == list(b) and list(a) != list(c)


# -- the commands (end to end on tiny data) ---------------------------------------------------------------------


def _tiny_sim_task(tmp: Path) -> Path:
    cfg = yaml.safe_load((TASKS / "clustertype.yaml").read_text())
    cfg.update(output_dir=str(tmp / "runs"), name="ct_sim")
    cfg["data"].update(n_train=24, n_val=8, n_test=8, size=16)
    cfg["backbone"]["weights"] = "none"
    cfg["trainer"].update(max_epochs=1, batch_size=8, num_threads=1, progress_bar=False, logger="none",
                          accelerator="cpu")
    path = tmp / "ct_sim.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_evaluate_a_simulation_run_on_stellarium_images(cli, tmp_path, fake_cache):
    code, _, err = cli("-q", "run", _tiny_sim_task(tmp_path))
    assert code == 0, err
    run = tmp_path / "runs" / "ct_sim"
    out = tmp_path / "on_stellarium"
    code, stdout, err = cli("clustertype-evaluate", run, "--root", fake_cache, "--out", out)
    assert code == 0, err
    assert stdout.startswith(f"{run} on clustertype_stellarium: 25 labelled images, test accuracy ")
    assert ", f1 " in stdout and ", roc auc " in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["metrics"]["n_evaluated"] == 25 and 0 <= m["metrics"]["roc_auc"] <= 1
    assert m["data"]["bands"] == ["DSS2_red"] and m["data"]["size"] == 16
    preds = Table.read(out / "predictions.ecsv")
    assert len(preds) == 27 and (preds["true_class"].filled("") == "").sum() == 2  # Cl+N predicted, not scored
    assert (out / "tables" / "confusion.ecsv").is_file() and (out / "plots" / "roc_curve.png").is_file()
    assert (out / "data.yaml").is_file() and "ROC AUC" in (out / "report.md").read_text()
    # the folder is taken now
    code, _, err = cli("clustertype-evaluate", run, "--root", fake_cache, "--out", out)
    assert code == 2 and "exists and is not empty" in err and err.count("\n") == 1
    code, _, err = cli("clustertype-evaluate", tmp_path, "--out", tmp_path / "x")
    assert code == 2 and "is not an astrotl run directory" in err


def _cv_task(tmp: Path, cache: Path, k: int = 3) -> Path:
    cfg = yaml.safe_load((TASKS / "clustertype_stellarium.yaml").read_text())
    cfg.update(output_dir=str(tmp / "runs"), name="ct_cv")
    cfg["data"].update(root=str(cache), size=16)
    cfg["cv"]["k"] = k
    cfg["backbone"]["weights"] = "none"
    cfg["trainer"].update(max_epochs=1, batch_size=8, num_threads=1, progress_bar=False, logger="none",
                          accelerator="cpu")
    path = tmp / "ct_cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_stellarium_task_uses_the_core_cv():
    cfg = yaml.safe_load((TASKS / "clustertype_stellarium.yaml").read_text())
    assert cfg["cv"] == {"k": 5, "test": "fold", "seed": 0}
    assert "n_folds" not in cfg["data"] and "fold" not in cfg["data"]


@pytest.mark.slow
def test_cross_validation_tests_every_real_image_once(cli, tmp_path, fake_cache):
    code, stdout, err = cli("-q", "run", _cv_task(tmp_path, fake_cache))
    assert code == 0, err
    assert "3-fold CV (each fold tested once): test accuracy " in stdout and "pooled out-of-fold (25): " in stdout
    run = tmp_path / "runs" / "ct_cv"
    m = json.loads((run / "metrics.json").read_text())
    s = m["metrics"]
    accs = [m["folds"][str(i)]["test_accuracy"] for i in range(3)]
    assert s["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert s["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    for key in ("balanced_accuracy", "f1", "roc_auc"):
        assert f"test_{key}_mean" in s and f"test_{key}_std" in s and f"pooled_test_{key}" in s
    assert s["pooled_n_test"] == 25
    n_test = [m["folds"][str(i)]["n_test"] for i in range(3)]
    assert sum(n_test) == 25 and set(n_test) <= {8, 9}
    tested = []
    for i in range(3):
        preds = Table.read(run / "folds" / str(i) / "predictions.ecsv")
        tested += list(preds["id"])
        f = m["folds"][str(i)]
        assert f["n_train"] + f["n_val"] + f["n_test"] == 25 and len(preds) == f["n_test"]
    # every labelled image tested exactly once; the overlapping pair in one fold
    assert sorted(tested) == sorted(f"NGC{1000 + i}" for i in range(25))
    pooled = Table.read(run / "predictions.ecsv")
    assert sorted(pooled["id"]) == sorted(tested) and "fold" in pooled.colnames
    fold_of = dict(zip(pooled["id"], pooled["fold"]))
    assert fold_of["NGC1010"] == fold_of["NGC1011"]
    assert "Pooled out-of-fold" in (run / "report.md").read_text()


@pytest.mark.parametrize("cv, match", [
    ({"k": 2, "test": "fold"}, r"cv.test: fold needs k >= 3"),
    ({"k": 3, "test": "fold", "keep": "ensemble"}, r"cv.test: fold tests each fold model on its own fold"),
    ({"k": 3, "test": "fold", "refit": True}, r"cv.test: fold tests each fold model on its own fold"),
    ({"k": 3, "test": "folds"}, r"cv.test"),
])
def test_cross_validation_errors(cli, tmp_path, fake_cache, cv, match):
    import re

    task = _cv_task(tmp_path, fake_cache)
    cfg = yaml.safe_load(task.read_text())
    cfg["cv"] = cv
    task.write_text(yaml.safe_dump(cfg))
    code, _, err = cli("run", task)
    assert code == 2 and err.count("\n") == 1 and err.startswith("astrotl: error: ") and re.search(match, err), err
    assert not (tmp_path / "runs").exists()


def test_clustertype_cv_command_is_gone():
    from astrotl_clustertype.cli import COMMANDS

    assert [c.COMMAND for c in COMMANDS] == ["clustertype-evaluate"]
