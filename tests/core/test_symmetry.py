"""The D4 group, label symmetries, symmetric augmentation and test-time augmentation (astrotl.symmetry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.errors import ConfigError
from astrotl.symmetry import (GROUPS, LabelSymmetry, compose, draw_elements, element, element_index, group_elements,
                              inverse, transform, transform_batch, tta_probabilities)

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_classes import make  # noqa: E402

GZ1 = ["E", "CW", "ACW", "EDGE", "DK", "MG"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one torch thread is much faster than several on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
GZ1_DECL = {"flip": {"CW": "ACW", "ACW": "CW"}}


def _img(seed=0, shape=(2, 3, 5, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the group ---------------------------------------------------------------------------------------


def test_composition_law_and_inverses_hold_on_pixels():
    x = _img()
    for a in range(8):
        assert torch.equal(transform(transform(x, a), inverse(a)), x)
        for b in range(8):
            assert torch.equal(transform(transform(x, b), a), transform(x, compose(a, b))), (a, b)
    assert len({transform(x, g).flatten().tolist().__str__() for g in range(8)}) == 8  # 8 distinct images


def test_named_subgroups_are_closed():
    for name, elems in GROUPS.items():
        assert 0 in elems
        for a in elems:
            assert inverse(a) in elems
            for b in elems:
                assert compose(a, b) in elems, name
    assert element(element_index(3, 1)) == (3, 1)
    with pytest.raises(ConfigError, match="unknown symmetry group 'd8'"):
        group_elements("d8")


def test_transform_batch_applies_one_element_per_image():
    x = _img(shape=(8, 1, 4, 4))
    out = transform_batch(x, list(range(8)))
    for i in range(8):
        assert torch.equal(out[i], transform(x[i:i + 1], i)[0])


def test_d4_draws_match_the_old_d4_augment():
    from astrotl.data import d4_augment

    x = _img(shape=(16, 2, 6, 6))
    old = d4_augment(x, generator=torch.Generator().manual_seed(5))
    new = transform_batch(x, draw_elements("d4", 16, torch.Generator().manual_seed(5)))
    assert torch.equal(old, new)


# -- label symmetries --------------------------------------------------------------------------------


def test_gz1_declaration_swaps_chirality_under_mirrors_only():
    sym = LabelSymmetry.from_declaration(GZ1_DECL, GZ1)
    assert not sym.trivial
    for g in range(8):
        k, f = element(g)
        expect = [0, 2, 1, 3, 4, 5] if f else list(range(6))
        assert sym.permutation(g).tolist() == expect, g
    assert sym.describe() == "mirror: CW->ACW, ACW->CW"
    assert LabelSymmetry.from_declaration(sym.to_dict(), GZ1).permutation(4).tolist() == [0, 2, 1, 3, 4, 5]
    assert LabelSymmetry.identity(GZ1).trivial


def test_rotation_symmetry_is_a_homomorphism():
    # classes of bar orientation: a quarter turn swaps horizontal and vertical, a left-right mirror keeps both
    sym = LabelSymmetry.from_declaration({"rot90": {"H": "V", "V": "H"}}, ["H", "V", "X"])
    for a in range(8):
        for b in range(8):
            assert sym.permutation(compose(a, b)).tolist() == sym.permutation(a)[sym.permutation(b)].tolist()
    assert sym.permutation(element_index(2, 0)).tolist() == [0, 1, 2]


def test_permuted_labels_round_trip_through_tta_unpermutation():
    sym = LabelSymmetry.from_declaration(GZ1_DECL, GZ1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, -1])
    for g in range(8):
        moved = sym.permute_labels(labels, torch.full((7,), g))
        assert int(moved[-1]) == -1  # unlabelled stays unlabelled
        onehot = torch.nn.functional.one_hot(moved[:-1], 6).float()
        back = sym.unpermute_probabilities(onehot, g).argmax(1)
        assert back.tolist() == labels[:-1].tolist(), g


@pytest.mark.parametrize("decl,match", [
    ({"flip": {"CW": "ACW"}}, "sends two classes to the same class"),
    ({"flip": {"CW": "ACW", "ACW": "EDGE", "EDGE": "CW"}}, "flip must undo itself"),
    ({"rot90": {"CW": "ACW", "ACW": "EDGE", "EDGE": "CW"}}, "four quarter turns"),
    ({"flip": {"CW": "SPIRAL", "SPIRAL": "CW"}}, "names class 'SPIRAL'"),
    ({"mirror": {"CW": "ACW", "ACW": "CW"}}, "unknown transform 'mirror'"),
    ({"flip": {"CW": "ACW", "ACW": "CW"}, "rot90": {"CW": "ACW", "ACW": "CW"}}, None),
])
def test_bad_declarations_are_one_line_errors(decl, match):
    if match is None:  # consistent: a quarter turn may swap what a mirror swaps (both are involutions here)
        LabelSymmetry.from_declaration(decl, GZ1)
        return
    with pytest.raises(ConfigError, match=match) as exc:
        LabelSymmetry.from_declaration(decl, GZ1)
    assert "\n" not in str(exc.value)


def test_inconsistent_flip_and_rotation_is_refused():
    # a quarter turn cycling four classes and a mirror that commutes with it: flip rot flip != rot^-1
    classes = ["N", "E", "S", "W"]
    with pytest.raises(ConfigError, match="inconsistent"):
        LabelSymmetry.from_declaration({"rot90": {"N": "E", "E": "S", "S": "W", "W": "N"},
                                        "flip": {"N": "S", "S": "N", "E": "W", "W": "E"}}, classes)
    # the mirror of the compass (left-right swaps E and W) is consistent
    LabelSymmetry.from_declaration({"rot90": {"N": "E", "E": "S", "S": "W", "W": "N"},
                                    "flip": {"E": "W", "W": "E"}}, classes)


# -- test-time augmentation ----------------------------------------------------------------------------


class _Net(torch.nn.Module):
    """A small CNN that is not equivariant (its output depends on orientation)."""

    def __init__(self, k=6):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8 * 9, k)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _symmetrised(net, sym):
    """``f_sym(x) = log mean_g P_g^-1 softmax(f(g x))``: exactly equivariant under D4 with label symmetry ``sym``."""

    def f(x):
        return torch.log(tta_probabilities(net, x, "d4", sym))

    return f


def test_tta_on_an_exactly_equivariant_model_changes_nothing():
    sym = LabelSymmetry.from_declaration(GZ1_DECL, GZ1)
    model = _symmetrised(_Net(), sym)
    x = _img(shape=(2, 3, 5, 5))
    plain = torch.softmax(model(x), dim=1)
    for group in GROUPS:
        assert torch.allclose(tta_probabilities(model, x, group, sym), plain, atol=1e-6), group
    # the same model with the symmetry ignored is *not* invariant: TTA then mixes CW and ACW
    assert not torch.allclose(tta_probabilities(model, x, "d4", None), plain, atol=1e-3)
    # and an orientation-dependent model is changed by TTA
    net = _Net()
    assert not torch.allclose(tta_probabilities(net, x, "d4", sym), torch.softmax(net(x), 1), atol=1e-3)


def test_tta_on_an_invariant_cnn_without_label_symmetry():
    torch.manual_seed(1)
    pool = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = _img(shape=(3, 3, 6, 6))
    assert torch.allclose(tta_probabilities(pool, x, "d4"), torch.softmax(pool(x), 1), atol=1e-6)


# -- the classification task ------------------------------------------------------------------------


def _task(**cfg):
    from astrotl.interfaces import DatasetInfo
    from astrotl.tasks.classification import ClassificationTask

    return ClassificationTask(ClassificationTask.Config(**cfg), DatasetInfo(bands=("g", "r", "i"), classes=tuple(GZ1)))


def test_batch_augment_permutes_labels_with_the_drawn_transform():
    task = _task(augment="d4", label_symmetry=GZ1_DECL)
    x = _img(shape=(32, 3, 5, 5))
    labels = torch.tensor([0, 1, 2, 1] * 8)
    out = task.batch_augment({"image": x.clone(), "label": labels.clone()}, generator=torch.Generator().manual_seed(3))
    elems = draw_elements("d4", 32, torch.Generator().manual_seed(3))
    mirrored = elems >= 4
    assert mirrored.any() and (~mirrored).any()
    assert torch.equal(out["image"], transform_batch(x, elems))
    expect = torch.where(mirrored & (labels == 1), 2, torch.where(mirrored & (labels == 2), 1, labels))
    assert out["label"].tolist() == expect.tolist()
    # without a declaration labels are left alone (every class invariant)
    plain = _task(augment="d4").batch_augment({"image": x.clone(), "label": labels.clone()},
                                              generator=torch.Generator().manual_seed(3))
    assert plain["label"].tolist() == labels.tolist()


def test_max_shift_moves_images_before_the_symmetric_draw_and_keeps_labels():
    from pydantic import ValidationError

    from astrotl.data import random_shift

    x = _img(shape=(32, 3, 10, 10))
    labels = torch.tensor([0, 1, 2, 1] * 8)
    task = _task(augment="d4", label_symmetry=GZ1_DECL, max_shift=0.2)
    out = task.batch_augment({"image": x.clone(), "label": labels.clone()}, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the same draws in the same order: shifts, then the D4 elements
    shifted = random_shift(x, 0.2, gen)
    elems = draw_elements("d4", 32, gen)
    assert not torch.equal(shifted, x) and torch.equal(out["image"], transform_batch(shifted, elems))
    mirrored = elems >= 4
    expect = torch.where(mirrored & (labels == 1), 2, torch.where(mirrored & (labels == 2), 1, labels))
    assert out["label"].tolist() == expect.tolist()
    none = _task(augment="none", max_shift=0.2).batch_augment({"image": x.clone(), "label": labels.clone()},
                                                             generator=torch.Generator().manual_seed(3))
    assert torch.equal(none["image"], random_shift(x, 0.2, torch.Generator().manual_seed(3)))
    assert none["label"].tolist() == labels.tolist()
    with pytest.raises(ValidationError, match="max_shift"):
        _task(max_shift=0.5)


def test_label_symmetry_from_the_data_set_and_bad_task_keys():
    from astrotl.interfaces import DatasetInfo
    from astrotl.tasks.classification import ClassificationTask

    info = DatasetInfo(bands=("L",), classes=tuple(GZ1), extra={"label_symmetry": GZ1_DECL})
    task = ClassificationTask(ClassificationTask.Config(), info)
    assert task.symmetry.permutation(4).tolist() == [0, 2, 1, 3, 4, 5]
    with pytest.raises(ConfigError, match="names class 'S'"):
        _task(label_symmetry={"flip": {"S": "Z", "Z": "S"}})
    with pytest.raises(ValueError):
        _task(tta="d8")


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("classes_sym"), n=64, size=16, seed=1)


def _write_task(tmp_path: Path, data_root: Path, name: str, task: dict, **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "classification", **task},
        "data": {"name": "image_folder", "root": str(data_root), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "split_fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "resnet18", "weights": "none"},
        "optim": {"lr": 0.003, "scheduler": "none"},
        "trainer": {"max_epochs": 1, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_run_and_predict_use_tta_with_label_symmetry(cli, tmp_path, classes_dir):
    # a (physically meaningless) declaration: a mirror swaps the two classes -- it exercises every code path
    task = {"augment": "d4", "tta": "d4", "label_symmetry": {"flip": {"round": "long", "long": "round"}}}
    code, out, err = cli("run", _write_task(tmp_path, classes_dir, "tta", task))
    assert code == 0, err
    run = tmp_path / "runs" / "tta"
    report = (run / "report.md").read_text()
    assert "test-time augmentation: on, probabilities averaged over the 8 transforms of `d4`" in report
    assert "label symmetry mirror: long->round, round->long" in report
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["test_tta_transforms"] == 8
    preds = Table.read(run / "predictions.ecsv")
    p = np.stack([preds["p_long"], preds["p_round"]], axis=1)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # predict applies the same TTA
    code, out, err = cli("predict", run, "--split", "test", "--out", tmp_path / "p.ecsv")
    assert code == 0, err
    again = Table.read(tmp_path / "p.ecsv")
    assert np.allclose(np.asarray(again["p_long"]), np.asarray(preds["p_long"]), atol=1e-5)


def test_report_line_and_metric_without_tta():
    task = _task(augment="flips", tta="none")
    assert task._tta_line() == "- test-time augmentation: off; training augmentation: flips"
    preds = Table({"index": [0, 1], "true_class": ["E", "CW"], "pred_class": ["E", "ACW"], "pred_prob": [0.9, 0.6],
                   **{f"p_{c}": [0.9 if c == "E" else 0.02, 0.6 if c == "ACW" else 0.08] for c in GZ1}})
    metrics, _ = task.evaluate(preds)
    assert metrics["tta_transforms"] == 1 and metrics["accuracy"] == 0.5
