"""``astrotl explain``: maps that mean something, every backbone family and method, outputs and error paths.

The sanity test writes a tiny image folder where only the top-left corner decides the class (class
``blob`` has a bright blob there, class ``plain`` has not; everything else is noise on a random sky level),
trains a ResNet and a VGG for seconds, and checks that the Grad-CAM mass of the ``blob`` samples lies in
that corner: the top-left quadrant holds the most mass, well above the uniform 25 %.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.io import fits
from astropy.table import Table

from astrotl.errors import ConfigError, OutputError
from astrotl.explain import (CamMaker, central_fraction, central_mask, check_output_dir, display_image, find_backbone,
                             rgb_indices)

SIZE = 48


def make_corner_folder(out: Path, n: int = 96, size: int = SIZE, seed: int = 0) -> Path:
    """Grey PNGs of noise on a random sky level; class ``blob`` (even rows) adds a bright Gaussian blob in the
    top-left corner, class ``plain`` has none. The sky level varies more from image to image than the blob's
    light raises the mean, so the mean brightness does not tell the classes apart: only the corner does."""
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        label = "blob" if i % 2 == 0 else "plain"
        img = rng.uniform(0.1, 0.4) + rng.normal(0, 0.05, (size, size))
        if label == "blob":
            cx, cy = rng.uniform(0.12, 0.25, 2) * size
            img += 0.5 * np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / (size / 14) ** 2)
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), mode="L").save(out / "images" / f"c{i:03d}.png")
        rows.append({"id": f"c{i:03d}", "label": label})
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "label"])
        w.writeheader()
        w.writerows(rows)
    return out


def _task(tmp: Path, data: Path, name: str, backbone: str, **extra) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp / "runs"),
        # D4 rotations and flips move the training blobs to every corner: the network has to learn what a blob
        # looks like (a local feature), not only that the top-left corner differs; the test images are not rotated
        "task": {"name": "classification", "augment": "d4"},
        "data": {"name": "image_folder", "root": str(data), "labels": "labels.csv", "id_col": "id",
                 "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                 "classes": ["blob", "plain"], "split_fractions": [0.6, 0.15, 0.25]},
        "backbone": {"name": backbone, "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"optimizer": "adam", "lr": 0.001, "scheduler": "none"},
        "trainer": {"max_epochs": 6, "batch_size": 8, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
    }
    cfg.update(extra)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A ResNet-18 trained for one epoch on 16 px stamps (tests of outputs and errors, not of the maps)."""
    from astrotl.cli import main

    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from make_classes import make

    tmp = tmp_path_factory.mktemp("tiny")
    data = make(tmp / "data", n=48, size=16, seed=0)
    cfg = {"name": "tiny", "seed": 0, "output_dir": str(tmp / "runs"), "task": {"name": "classification"},
           "data": {"name": "image_folder", "root": str(data), "labels": "labels.csv", "id_col": "id",
                    "file_pattern": "images/{id}.png", "label_col": "label", "color": "grayscale",
                    "split_fractions": [0.5, 0.25, 0.25]},
           "backbone": {"name": "resnet18", "weights": "none"}, "head": {"name": "linear"},
           "trainer": {"max_epochs": 1, "batch_size": 16, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                       "logger": "none", "num_threads": 1}}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "run", str(tmp / "tiny.yaml")]) == 0
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def corner_runs(tmp_path_factory):
    """A ResNet-18 and a VGG-11 (BN) trained for seconds on the corner task: {"resnet18": run, "vgg11_bn": run}."""
    from astrotl.cli import main

    tmp = tmp_path_factory.mktemp("corner")
    data = make_corner_folder(tmp / "data")
    runs = {}
    for bb in ("resnet18", "vgg11_bn"):
        assert main(["-q", "run", str(_task(tmp, data, f"corner_{bb}", bb))]) == 0
        runs[bb] = tmp / "runs" / f"corner_{bb}"
    return runs


def _quadrants(cam: np.ndarray) -> np.ndarray:
    """Shares of the map's mass in the top-left, top-right, bottom-left and bottom-right quadrants."""
    h, w = cam.shape
    q = np.array([cam[: h // 2, : w // 2].sum(), cam[: h // 2, w // 2:].sum(), cam[h // 2:, : w // 2].sum(),
                  cam[h // 2:, w // 2:].sum()])
    return q / q.sum()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "vgg11_bn"])
def test_cam_mass_lies_in_the_deciding_corner(cli, corner_runs, tmp_path, backbone):
    """A uniform map puts 25 % of its mass in each quadrant; the maps of the blob class put the most in the
    top-left one. (A ResNet's layer4 is a 2 x 2 map at 48 px: even a perfect map holds at most 77 % there.)"""
    run = corner_runs[backbone]
    acc = json.loads((run / "metrics.json").read_text())["metrics"]["test_accuracy"]
    assert acc >= 0.9, f"the {backbone} did not learn the corner task (accuracy {acc})"
    out = tmp_path / "expl"
    code, stdout, err = cli("explain", run, "--out", out, "--save-cams", "npy", "--split", "test")
    assert code == 0, err
    assert stdout.startswith("explained 24 samples (test split) with gradcam on ") and stdout.count("\n") == 1
    samples = Table.read(out / "samples.ecsv")
    blob = samples[(samples["true_class"] == "blob") & (samples["pred_class"] == "blob")]
    assert len(blob) >= 10
    q = np.array([_quadrants(np.load(out / f)) for f in blob["cam_file"]])
    print(f"\n[explain sanity] {backbone}: top-left share median {np.median(q[:, 0]):.3f} (uniform 0.25), "
          f"largest quadrant for {np.mean(q.argmax(axis=1) == 0):.2f} of {len(q)} blob samples; "
          f"mean shares TL/TR/BL/BR {np.round(q.mean(axis=0), 3).tolist()}")
    assert np.median(q[:, 0]) > 0.4, q[:, 0]
    assert np.mean(q.argmax(axis=1) == 0) >= 0.8, q
    assert {"grid_blob.png", "grid_plain.png", "mean_cams.png", "report.md"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_methods_outputs_and_report(cli, corner_runs, tmp_path):
    run = corner_runs["vgg11_bn"]
    for method in ("gradcam++", "guided"):
        out = tmp_path / method
        code, stdout, err = cli("explain", run, "--out", out, "--method", method, "--save-cams", "fits",
                                "--n-per-class", "3", "--radius", "8", "--target", "true")
        assert code == 0, err
        samples = Table.read(out / "samples.ecsv")
        assert samples.meta["method"] == method and samples.meta["radius_px"] == 8.0
        assert np.all((samples["central_fraction"] >= 0) & (samples["central_fraction"] <= 1))
        assert np.all(samples["target_class"] == samples["true_class"])
        assert all(set(r.split(",")) <= {"best", "worst", "confused", "none"} for r in samples["roles"])
        assert sum("best" in r for r in samples["roles"]) <= 6
        with fits.open(out / samples["cam_file"][0]) as hdul:
            cam = hdul[0].data
            assert hdul[0].header["METHOD"] == method and hdul[0].header["TRUE"] == samples["true_class"][0]
        # FITS stores big-endian floats: compare the dtype whatever its byte order
        assert cam.shape == (SIZE, SIZE) and cam.dtype.newbyteorder("=") == np.float32
        assert 0 <= cam.min() and cam.max() <= 1.0 + 1e-6
        blob = samples[(samples["true_class"] == "blob") & (samples["pred_class"] == "blob")]
        q = np.array([_quadrants(fits.getdata(out / f)) for f in blob["cam_file"]])
        assert np.median(q[:, 0]) > 0.4 and np.mean(q.argmax(axis=1) == 0) >= 0.8, (method, q)
        summary = Table.read(out / "summary.ecsv")
        assert set(summary["group"]) == {"all", "class", "pair"}
        assert summary[summary["group"] == "all"]["n"][0] == len(samples)
        assert sum(summary[summary["group"] == "pair"]["n"]) == len(samples)
        report = (out / "report.md").read_text()
        assert f"method: **{method}**" in report and "![grid_blob](grid_blob.png)" in report
        assert "central radius: 8 px" in report


def test_max_samples_predict_split_and_overwrite(cli, tiny_run, tmp_path):
    run = tiny_run
    out = tmp_path / "e"
    code, stdout, err = cli("explain", run, "--out", out, "--max-samples", "10", "--split", "predict",
                            "--n-per-class", "2", "--dpi", "40")
    assert code == 0, err
    assert stdout.startswith("explained 10 samples (predict split) with gradcam on 0.net.layer4;")
    samples = Table.read(out / "samples.ecsv")
    assert len(samples) == 10 and sorted(samples["true_class"]).count("round") == 5
    assert samples.meta["layer"] == "0.net.layer4" and samples.meta["radius_px"] == 4.0
    # a second call needs --overwrite; it replaces astrotl's files and keeps the user's
    code, _, err = cli("explain", run, "--out", out)
    assert code == 2 and "exists and is not empty" in err and err.count("\n") == 1
    (out / "notes.txt").write_text("mine")
    code, stdout, err = cli("explain", run, "--out", out, "--overwrite", "--max-samples", "6", "--layer", "0.net.layer3",
                            "--dpi", "40")
    assert code == 0, err
    assert " on 0.net.layer3;" in stdout
    assert (out / "notes.txt").read_text() == "mine" and len(Table.read(out / "samples.ecsv")) == 6


def test_output_dir_rules(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("x")
    with pytest.raises(OutputError, match=r"holds files astrotl did not write .*choose a new or empty folder"):
        check_output_dir(foreign, overwrite=True)
    with pytest.raises(OutputError, match=r"exists and is not empty; choose a new folder or pass --overwrite"):
        check_output_dir(foreign, overwrite=False)
    with pytest.raises(OutputError, match=r"is a run directory; write the outputs to a folder of their own"):
        check_output_dir(_fake_run(tmp_path / "run"), overwrite=True)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match=r"is a file; give a folder"):
        check_output_dir(f, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_dir(empty, overwrite=False) == empty
    assert check_output_dir(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"


def _fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"status": "finished", "versions": {"astrotl": "0"}}))
    return path


@pytest.mark.parametrize("args, match", [
    (["--radius", "0"], r"--radius 0.0 must be a positive number of pixels"),
    (["--n-per-class", "0"], r"--n-per-class 0 must be a positive whole number"),
    (["--max-samples", "-1"], r"--max-samples -1 must be a positive whole number"),
    (["--rgb-bands", "a,b"], r"--rgb-bands needs three band names"),
    (["--rgb-bands", "a,b,c"], r"--rgb-bands: 'a' is not one of the bands \['L'\]"),
    (["--set", "data.root=/nonexistent/x"], r"image folder '/nonexistent/x' does not exist"),
    (["--device", "cuda:7"], r"--device cuda:7"),
    (["--layer", "0.net.layer9"], r"--layer '0.net.layer9' is not a module of the model; .* 0.net.layer4"),
    (["--dpi", "5"], r"--dpi 5: give 20 to 600 dots per inch"),
])
def test_bad_options_are_one_line_errors(cli, tiny_run, tmp_path, args, match):
    import re

    out = tmp_path / "o"
    code, _, err = cli("explain", tiny_run, "--out", out, *args)
    assert code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not out.exists()


@pytest.mark.parametrize("args, match", [
    (["--method", "scorecam"], r"argument --method: invalid choice: 'scorecam'"),
    (["--save-cams", "png"], r"argument --save-cams: invalid choice: 'png'"),
])
def test_bad_choices_are_one_line_errors(capsys, tmp_path, args, match):
    import re

    from astrotl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["explain", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("astrotl: error:") and err.count("\n") == 1
    assert re.search(match, err), err


def test_not_a_finished_run_or_not_a_classifier(cli, tmp_path):
    code, _, err = cli("explain", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "is not an astrotl run directory" in err and err.count("\n") == 1
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from make_soft_labels import make

    data = make(tmp_path / "soft", galaxies=8)
    repo = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((repo / "tasks" / "smoke" / "soft_labels_tiny.yaml").read_text())
    cfg["data"]["root"] = str(Path(data).parent)  # make() returns the labels file
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["trainer"]["num_threads"] = 1
    (tmp_path / "soft.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = cli("run", tmp_path / "soft.yaml")
    assert code == 0, err
    code, _, err = cli("explain", tmp_path / "runs" / "soft_labels_tiny", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert "astrotl explain explains classifiers; " in err and "is a soft_labels run (task soft_labels)" in err
    assert not (tmp_path / "o").exists()


# -- every backbone family, N bands, frozen backbones -------------------------------------------------------


@pytest.mark.parametrize("name, cfg", [
    ("resnet18", {}),
    ("vgg11_bn", {}),
    ("convnext_tiny", {}),
    ("timm:resnet10t", {}),
    ("timm:mobilenetv3_small_050", {}),
    ("resnet18", {"n_blocks": 0}),  # linear probe: nothing in the backbone has a gradient but the input
])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "guided"])
def test_every_backbone_family_and_method(name, cfg, method):
    from astrotl.heads import LinearHead
    from astrotl.plugins import load_registries

    torch.manual_seed(0)
    regs = load_registries()
    bb_cls = regs.backbones.get(name)
    bands = ("F275W", "F336W", "F438W", "F555W", "F814W")  # five bands: the first convolution is adapted
    backbone = bb_cls(bb_cls.Config(weights="none", **cfg), in_chans=len(bands), bands=bands)
    head = LinearHead(LinearHead.Config(), in_features=backbone.num_features, out_features=3)
    model = torch.nn.Sequential(backbone, head).eval()
    assert find_backbone(model) is backbone
    maker = CamMaker(model, backbone.cam_layer(), method)
    try:
        cams, guided = maker(torch.randn(2, len(bands), 64, 64), np.array([0, 2]))
    finally:
        maker.close()
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert (guided is None) == (method != "guided")
    if guided is not None:
        assert guided.shape == (2, 64, 64, len(bands))
    # the model is unchanged: no hooks left, ReLUs in place
    assert not any(m._forward_hooks for m in model.modules())


def test_find_backbone_error():
    with pytest.raises(ConfigError, match="contains no astrotl Backbone"):
        find_backbone(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# -- display images and the mass fraction ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_display_image_any_band_count(n):
    rng = np.random.default_rng(n)
    img = rng.normal(0, 1, (n, 20, 24))
    img[:, 8:12, 10:14] += 10
    disp = display_image(img, tuple(f"b{i}" for i in range(n)))
    assert disp.shape == (20, 24, 3) and disp.dtype == np.float32 and 0 <= disp.min() and disp.max() <= 1
    assert disp[10, 12].mean() > disp[0, 0].mean()  # the bright square stays bright
    if n == 1:
        assert np.allclose(disp[..., 0], disp[..., 2])


def test_rgb_indices():
    assert rgb_indices(("g",)) is None
    assert rgb_indices(("g", "r")) == (1, None, 0)
    assert rgb_indices(("R", "G", "B")) == (0, 1, 2)
    assert rgb_indices(("F275W", "F336W", "F438W", "F555W", "F814W")) == (4, 2, 0)
    assert rgb_indices(("F275W", "F336W", "F438W", "F555W", "F814W"), ["F814W", "F555W", "1"]) == (4, 3, 1)
    with pytest.raises(ConfigError, match=r"--rgb-bands: 'F999W' is not one of the bands"):
        rgb_indices(("a", "b", "c"), ["a", "b", "F999W"])


def test_central_fraction():
    mask = central_mask(9, 9, 2.0)
    assert mask.sum() == 13 and mask[4, 4] and not mask[0, 0]
    cam = np.zeros((9, 9))
    cam[4, 4] = 1
    cam[0, 0] = 1
    assert central_fraction(cam, mask) == 0.5
    assert np.isnan(central_fraction(np.zeros((9, 9)), mask))
