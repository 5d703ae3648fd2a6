"""The clustertype task files, the Stellarium k folds and the real-image commands (clustertype-evaluate, -cv)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table
from pydantic import ValidationError

from astrotl.errors import DataError

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


# -- the Stellarium folds ---------------------------------------------------------------------------------------


def test_folds_cover_every_labelled_image_once(fake_cache):
    tests, n = [], None
    for fold in range(5):
        parts = {s: _stel(fake_cache, s, n_folds=5, fold=fold) for s in ("train", "val", "test", "predict")}
        ids = {s: set(parts[s].catalog()["id"]) for s in ("train", "val", "test")}
        assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
        assert len(ids["train"] | ids["val"] | ids["test"]) == 25  # Cl+N left out
        assert len(parts["predict"]) == 27 and (parts["predict"].labels() == -1).sum() == 2
        test = parts["test"]
        # stratified: 2 of the 10 open and 3 of the 15 globular clusters per fold (the overlapping pair counts 2)
        assert sorted(np.bincount(test.labels(), minlength=2).tolist()) in ([2, 3], [2, 4], [1, 3], [2, 2])
        cat = test.catalog()
        assert set(cat["fold"]) == {fold} and "group" in cat.colnames and cat.meta["n_folds"] == 5
        assert set(parts["val"].catalog()["fold"]) == {(fold + 1) % 5}
        tests += list(cat["id"])
        sample = test[0]
        assert sample["index"] == 0 and sample["image"].shape == (1, 16, 16)
        train = parts["train"]
        x = np.stack([train[i]["image"].numpy() for i in range(len(train))])
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2  # the fold's own training mean / std
        n = n or len(train.groups())
    assert sorted(tests) == sorted(f"NGC{1000 + i}" for i in range(25))
    # the overlapping globulars (NGC1010, NGC1011) are one group: always in the same fold
    pred = _stel(fake_cache, "predict", n_folds=5, fold=0).catalog()
    pair = pred[np.isin(pred["id"], ["NGC1010", "NGC1011"])]
    assert pair["group"][0] == pair["group"][1] and pair["fold"][0] == pair["fold"][1]


def test_folds_with_bands_and_nebulous(fake_cache):
    ds = _stel(fake_cache, "test", n_folds=3, fold=2, include_nebulous=True, bands=["DSS2_red"])
    assert ds.info().bands == ("DSS2_red",)
    assert sum(len(_stel(fake_cache, "test", n_folds=3, fold=f, include_nebulous=True)) for f in range(3)) == 27


def test_fold_errors(fake_cache):
    from astrotl_clustertype.dataset import ClustertypeStellariumConfig

    with pytest.raises(ValidationError, match=r"fold=5 but n_folds=5; use fold 0 .. 4"):
        ClustertypeStellariumConfig(n_folds=5, fold=5)
    with pytest.raises(ValidationError, match=r"fold=1 is set without n_folds; set data.n_folds"):
        ClustertypeStellariumConfig(fold=1)
    with pytest.raises(ValidationError, match=r"greater than or equal to 3"):
        ClustertypeStellariumConfig(n_folds=2)
    with pytest.raises(DataError, match=r"data \(clustertype_stellarium\): class 0 has only 10 objects \(groups\) "
                                        r"for n_folds=12; lower data.n_folds"):
        _stel(fake_cache, "train", n_folds=12)


def test_fold_helpers_doctests():
    import astrotl_clustertype.dataset as mod

    failures, tried = doctest.testmod(mod, verbose=False, optionflags=doctest.ELLIPSIS)
    assert tried >= 3 and failures == 0


def test_folds_are_seeded(fake_cache):
    a = _stel(fake_cache, "test", n_folds=5, fold=0).catalog()["id"]
    b = _stel(fake_cache, "test", n_folds=5, fold=0).catalog()["id"]
    c = _stel(fake_cache, "test", n_folds=5, fold=0, split_seed=1).catalog()["id"]
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


def _cv_task(tmp: Path, cache: Path) -> Path:
    cfg = yaml.safe_load((TASKS / "clustertype_stellarium.yaml").read_text())
    cfg.update(output_dir=str(tmp / "runs"), name="ct_cv")
    cfg["data"].update(root=str(cache), size=16)
    cfg["backbone"]["weights"] = "none"
    cfg["trainer"].update(max_epochs=1, batch_size=8, num_threads=1, progress_bar=False, logger="none",
                          accelerator="cpu")
    path = tmp / "ct_cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_cross_validation_runs_one_run_per_fold(cli, tmp_path, fake_cache):
    task = _cv_task(tmp_path, fake_cache)
    out = tmp_path / "cv.ecsv"
    code, stdout, err = cli("-q", "clustertype-cv", task, "--folds", "3", "--out", out)
    assert code == 0, err
    assert stdout.startswith("3-fold CV of ct_cv (25 images): accuracy ") and "pooled out-of-fold: accuracy" in stdout
    table = Table.read(out)
    assert list(table["fold"]) == [0, 1, 2] and set(table["n_test"]) <= {8, 9}
    assert sum(table["n_test"]) == 25
    assert table.meta["folds"] == 3 and set(table.meta["mean_std"]) >= {"accuracy", "f1", "roc_auc"}
    mean = table.meta["mean_std"]["accuracy"]["mean"]
    assert mean == pytest.approx(float(np.mean(table["accuracy"])))
    pooled = Table.read(tmp_path / "cv_predictions.ecsv")
    assert sorted(pooled["id"]) == sorted(f"NGC{1000 + i}" for i in range(25))
    assert table.meta["pooled_out_of_fold"]["n_evaluated"] == 25
    for i in range(3):
        assert (tmp_path / "runs" / f"ct_cv_fold{i}" / "report.md").is_file()
    # --reuse keeps the finished folds; without it the runs are in the way
    stamp = (tmp_path / "runs" / "ct_cv_fold0" / "model.safetensors").stat().st_mtime_ns
    code, stdout2, err = cli("-q", "clustertype-cv", task, "--folds", "3", "--out", out, "--reuse")
    assert code == 2 and "already exists" in err  # --out is taken
    code, stdout2, err = cli("-q", "clustertype-cv", task, "--folds", "3", "--out", tmp_path / "cv2.ecsv", "--reuse")
    assert code == 0, err
    assert (tmp_path / "runs" / "ct_cv_fold0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert stdout2.split(";")[0] == stdout.split(";")[0]
    code, _, err = cli("-q", "clustertype-cv", task, "--folds", "3", "--out", tmp_path / "cv3.ecsv")
    assert code == 2 and "already holds a finished run" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, match", [
    (["--folds", "2"], r"--folds 2: use 3 to 20 folds"),
    (["--set", "data.name=clustertype_sim"], r"clustertype-cv needs data: \{name: clustertype_stellarium\}"),
    (["--out", "cv.txt"], r"--out 'cv.txt' must end in .ecsv"),
])
def test_cross_validation_errors(cli, tmp_path, fake_cache, monkeypatch, args, match):
    import re

    monkeypatch.chdir(tmp_path)
    task = _cv_task(tmp_path, fake_cache)
    if "data.name=clustertype_sim" in args:  # the stellarium keys are not sim keys: use a sim task instead
        task = _tiny_sim_task(tmp_path)
        args = []
    code, _, err = cli("clustertype-cv", task, "--out", "cv.ecsv", *args) if "--out" not in args else \
        cli("clustertype-cv", task, *args)
    assert code == 2 and err.count("\n") == 1 and re.search(match, err), err
    assert not (tmp_path / "runs").exists()
