"""The ``clumps`` task: post-processing inside the task, the detections catalogue with RA/Dec, DS9 regions
(pixel and sky agree), completeness by brightness, a tiny end-to-end run, the backbone comparison
(``astrotl compare tasks/clumps_compare.yaml``) and bad inputs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from astrotl.data import list_collate
from astrotl.errors import ConfigError, DataError
from astrotl.interfaces import DatasetInfo, ImageDataset
from astrotl_clumps.dataset import ClumpsSimConfig, ClumpsSimDataset
from astrotl_clumps.postprocess import read_ds9_regions
from astrotl_clumps.task import ClumpDetectionTask, ClumpsTaskConfig, completeness_by_value

TINY_DATA = {"name": "clumps_sim", "n_train": 16, "n_val": 8, "n_test": 8, "size": 48, "seed": 3}
INFO = DatasetInfo(bands=("g", "r", "i"), classes=("clump", "odd_clump"))


def _task(**cfg) -> ClumpDetectionTask:
    return ClumpDetectionTask(ClumpsTaskConfig(**cfg), INFO)


class _FixedDetector(torch.nn.Module):
    """Returns given detections per image (torchvision's 1-based labels), whatever the input."""

    def __init__(self, per_image):
        super().__init__()
        self.per_image = per_image

    def forward(self, images, targets=None):
        return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(s).float(),
                 "labels": torch.tensor(lab, dtype=torch.int64) + 1} for b, s, lab in self.per_image[: len(images)]]


@pytest.fixture(scope="module")
def sim_test(tmp_path_factory):
    cfg = ClumpsSimConfig(**{k: v for k, v in TINY_DATA.items() if k != "name"})
    return ClumpsSimDataset(cfg, split="test", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def _batch(ds, n=2):
    return list_collate([ds[i] for i in range(n)])


# -- the data set's evaluation extras ---------------------------------------------------------------------------


def test_sim_eval_samples_carry_mask_wcs_and_flux_ratio(sim_test):
    s = sim_test[1]
    assert s["mask"].shape == (48, 48) and s["mask"].dtype == torch.bool and s["mask"].any()
    assert len(s["box_meta"]["flux_ratio"]) == len(s["boxes"])
    cl = sim_test.clumps()
    np.testing.assert_allclose(np.sort(s["box_meta"]["flux_ratio"].numpy()),
                               np.sort(np.asarray(cl["flux_ratio"][np.asarray(cl["image"]) == 1], dtype=np.float32)))
    cat = sim_test.catalog()
    ra, dec = s["wcs"].pixel_to_world_values(cat["x"][1], cat["y"][1])
    assert ra == pytest.approx(cat["ra"][1], abs=1e-9) and dec == pytest.approx(cat["dec"][1], abs=1e-9)
    boxes, labels, hw = sim_test.box_annotations()
    assert hw == (48, 48) and torch.equal(boxes[1], s["boxes"]) and torch.equal(labels[1], s["labels"])
    assert set(_task().train_transform()(s)) == {"image", "boxes", "labels", "index"}


# -- post-processing inside the task --------------------------------------------------------------------------------


def test_postprocessing_is_applied_in_prediction_and_validation(sim_test):
    batch = _batch(sim_test)
    mask = batch["mask"][0].numpy()
    ys, xs = np.nonzero(mask)
    cy, cx = float(np.median(ys)), float(np.median(xs))
    ox, oy = next((x, y) for y in range(48) for x in range(48) if not mask[y, x])  # a pixel off the host
    b = lambda x, y: [x - 5, y - 5, x + 5, y + 5]  # noqa: E731
    dets = [b(cx, cy), [cx - 4.5, cy - 5, cx + 5.5, cy + 5],  # overlaps the first (IoU 0.9): NMS
            b(cx + 2.5, cy + 0.5),  # another class: survives the per-class NMS; 2.55 px away: merged
            b(ox, oy),  # outside the host mask
            b(cx, cy - 20 if cy > 24 else cy + 20)]  # low score: cut
    model = _FixedDetector([(dets, [0.9, 0.8, 0.7, 0.95, 0.1], [0, 0, 1, 0, 0])] * 2)
    task = _task(score_threshold=0.3)
    rows = [r for r in task.predict_batch(model, batch) if r["index"] == 0]
    assert len(rows) == 1 and rows[0]["score"] == pytest.approx(0.9)
    assert rows[0]["x_centre"] == pytest.approx(cx) and rows[0]["y_centre"] == pytest.approx(cy)  # pixel centres
    ra, dec = batch["wcs"][0].pixel_to_world_values(cx, cy)
    assert rows[0]["det_ra"] == pytest.approx(float(ra), abs=1e-10) and rows[0]["det_dec"] == pytest.approx(float(dec))
    _, (val_dets, _) = task.validation_step(model, batch)
    assert len(val_dets[0]["boxes"]) == 1
    # every step can be switched off
    off = _task(score_threshold=0.0, postprocess={"nms_iou": None, "score_threshold": None,
                                                  "mask_outside_host": False, "merge_distance_px": None})
    assert len([r for r in off.predict_batch(model, batch) if r["index"] == 0]) == 5
    # no host mask in the batch although the step is on: one line naming the fix
    batch.pop("mask")
    with pytest.raises(DataError, match="mask_outside_host: false"):
        task.predict_batch(model, batch)
    batch["host_ellipse"] = [torch.tensor([cx, cy, 8.0, 8.0, 0.0])] * 2  # an ellipse does instead
    assert len([r for r in task.predict_batch(model, batch) if r["index"] == 0]) == 1


# -- catalogue, regions, brightness ----------------------------------------------------------------------------------


def _predict_all(task, ds, per_image):
    from astrotl.engine import predictions_table, rows_table

    rows, truth = [], []
    for start in range(0, len(ds), 4):
        batch = list_collate([ds[i] for i in range(start, min(start + 4, len(ds)))])
        rows += task.predict_batch(_FixedDetector(per_image[start:start + 4]), batch)
        truth += task.truth_rows(batch)
    return predictions_table(rows, ds.catalog()), rows_table(truth)


def test_catalogue_with_radec_and_regions_that_agree_on_the_sky(sim_test, tmp_path):
    # the detector "finds" every true box, shifted by 0.3 px, plus one spurious box near the centre
    per_image = []
    for i in range(len(sim_test)):
        s = sim_test[i]
        boxes = (s["boxes"] + 0.3).tolist()
        ys, xs = np.nonzero(s["mask"].numpy())
        boxes.append([float(xs.min()), float(ys.min()), float(xs.min()) + 6, float(ys.min()) + 6])
        per_image.append((boxes, [0.9] * len(s["boxes"]) + [0.4], s["labels"].tolist() + [0]))
    task = _task(score_threshold=0.3, postprocess={"merge_distance_px": None, "nms_iou": None,
                                                   "mask_outside_host": False})
    preds, truth = _predict_all(task, sim_test, per_image)
    metrics, tables = task.evaluate(preds, truth)
    n_true = sum(len(sim_test[i]["boxes"]) for i in range(len(sim_test)))
    assert metrics["completeness"] == pytest.approx(1.0) and metrics["n_true"] == n_true
    assert metrics["purity"] == pytest.approx(n_true / (n_true + len(sim_test)))
    assert "NMS" not in metrics["postprocess"] and "score cut >= 0.3" in metrics["postprocess"]
    curve = tables["completeness_purity"]  # no detections below the score cut: the curve starts there
    assert float(curve["score_threshold"].min()) == pytest.approx(0.3) and metrics["best_f1_threshold"] >= 0.3
    det = tables["detections"]
    assert {"id", "det_id", "x0", "y0", "x1", "y1", "x_centre", "y_centre", "score", "pred_class", "matched", "ra",
            "dec"} <= set(det.colnames)
    assert len(det) == n_true + len(sim_test) and str(det["ra"].unit) == "deg"
    for r in det[:5]:
        w = sim_test.wcs(int(r["index"]))
        ra, dec = w.pixel_to_world_values(r["x_centre"], r["y_centre"])
        assert r["ra"] == pytest.approx(float(ra), abs=1e-10) and r["dec"] == pytest.approx(float(dec), abs=1e-10)
    # the DS9 files: read the sky regions back, convert with the image's WCS, compare with the pixel boxes
    written = task.write_regions(preds, tmp_path / "regions")
    assert len(written) == 2 * len(sim_test)
    for i in range(len(sim_test)):
        ident = sim_test.catalog()["id"][i]
        mine = det[np.asarray(det["index"]) == i]
        pix_boxes = np.stack([np.asarray(mine[k], float) for k in ("x0", "y0", "x1", "y1")], 1)
        sky = read_ds9_regions(tmp_path / "regions" / f"{ident}_sky.reg", wcs=sim_test.wcs(i))
        pix = read_ds9_regions(tmp_path / "regions" / f"{ident}.reg")
        assert np.abs(sky["boxes"] - pix_boxes).max() < 0.01
        assert np.abs(pix["boxes"] - pix_boxes).max() < 1e-6
        assert all(t.startswith(("clump ", "odd_clump ")) for t in sky["text"])
    text = (tmp_path / "regions" / f"{sim_test.catalog()['id'][0]}_sky.reg").read_text()
    assert "icrs" in text and "box(" in text
    # completeness by brightness: every true box in one bin, counts add up
    br = tables["completeness_by_brightness"]
    assert int(br["n_true"].sum()) == n_true and np.allclose(br["completeness"], 1.0)
    assert metrics["completeness_flux_ratio_lt_0.02"] == pytest.approx(1.0)


def test_rotation_null_by_hand():
    from astrotl_clumps.evaluate import rotation_null

    task = _task(match="distance", match_distance=2.0)
    truth = Table({"index": [0, 1], "x0": [26.0, 10.0], "y0": [26.0, 30.0], "x1": [38.0, 20.0], "y1": [38.0, 40.0]})
    det = Table({"index": [0, 1], "x0": [26.0, 10.0], "y0": [26.0, 30.0], "x1": [38.0, 20.0], "y1": [38.0, 40.0],
                 "score": [0.9, 0.9]})
    null = rotation_null(det, truth, task, (31.5, 31.5), 50)
    # the box centred on the frame centre matches at any angle; the one 17 px out only within +-7 degrees
    assert np.all(null >= 0.5) and 0.5 <= null.mean() < 0.6 and len(null) == 50
    assert np.array_equal(null, rotation_null(det, truth, task, (31.5, 31.5), 50))  # seeded


def test_completeness_by_value_by_hand():
    values = np.array([0.005, 0.015, 0.015, 0.03, 0.03, 0.03, 0.2, np.nan])
    found = np.array([0, 0, 1, 1, 1, 0, 1, 1], bool)
    classes = np.array(["clump", "clump", "odd_clump", "clump", "clump", "clump", "odd_clump", "clump"])
    t = completeness_by_value(values, found, [0.01, 0.02, 0.12], classes=classes)
    assert list(t["flux_ratio_min"]) == [-np.inf, 0.01, 0.02, 0.12]
    assert list(t["n_true"]) == [1, 2, 3, 1] and list(t["n_found"]) == [0, 1, 2, 1]
    np.testing.assert_allclose(t["completeness"], [0.0, 0.5, 2 / 3, 1.0])
    assert list(t["n_true_odd_clump"]) == [0, 1, 0, 1] and t["completeness_odd_clump"][1] == 1.0
    assert np.all(t["completeness_lo"] <= t["completeness"]) and np.all(t["completeness"] <= t["completeness_hi"])
    assert 0.0 < t["completeness_lo"][1] < 0.5 < t["completeness_hi"][1] < 1.0
    assert len(completeness_by_value(values[1:6], found[1:6], [0.01, 0.02, 0.12])) == 2  # no empty open bins


# -- end to end ---------------------------------------------------------------------------------------------------


def _task_file(tmp_path: Path, name: str = "clumps_tiny", **sections) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "clumps", "fpn_channels": 16, "levels": [0, 1], "anchor_sizes": [[8, 11], [14, 20]],
                 "aspect_ratios": [1.0], "roi_output_size": 5, "box_head_size": 32, "rpn_proposals": 50,
                 "box_batch_size_per_image": 32, "box_score_thresh": 0.001, "detections_per_img": 20,
                 "score_threshold": 0.0, "n_overlay": 2,
                 "postprocess": {"score_threshold": None, "mask_outside_host": True}},
        "data": dict(TINY_DATA),
        "backbone": {"name": "resnet18", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"optimizer": "adam", "lr": 0.001, "scheduler": "none"},
        "trainer": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny clumps run through the CLI (1 epoch on 16 frames of 48 px), shared by the tests below."""
    from astrotl.cli import main

    tmp = tmp_path_factory.mktemp("clumps_run")
    assert main(["run", str(_task_file(tmp))]) == 0
    return tmp / "runs" / "clumps_tiny"


def test_clumps_run_end_to_end(tiny_run):
    run = tiny_run
    assert "test completeness" in json.loads((run / "metrics.json").read_text())["headline"]
    for f in ("tables/detections.ecsv", "tables/completeness_by_brightness.ecsv", "tables/completeness_purity.ecsv",
              "plots/completeness_by_brightness.png", "plots/completeness_purity.png", "plots/detections_overlay.png",
              "truth.ecsv", "report.md"):
        assert (run / f).is_file(), f
    assert len(list((run / "plots" / "overlays").glob("overlay_*.png"))) == 2
    cat = Table.read(run / "predictions.ecsv")
    ids = sorted(set(int(i) for i in cat["id"]))
    assert len(ids) == 8
    for i in ids:  # every test image has both region files
        assert (run / "regions" / f"{i}.reg").is_file() and (run / "regions" / f"{i}_sky.reg").is_file()
    det = Table.read(run / "tables" / "detections.ecsv")
    truth = Table.read(run / "truth.ecsv")
    assert "flux_ratio" in truth.colnames
    br = Table.read(run / "tables" / "completeness_by_brightness.ecsv")
    assert int(br["n_true"].sum()) == len(truth)
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m.get("n_detected", m.get("test_n_detected")) == len(det)
    if len(det):
        assert {"ra", "dec"} <= set(det.colnames)
        # the host-mask step ran: every detection centre lies on its image's host mask
        ds = ClumpsSimDataset(ClumpsSimConfig(**{k: v for k, v in TINY_DATA.items() if k != "name"}), split="test",
                              seed=0, cache_dir=Path(os.environ["ASTROTL_CACHE_DIR"]))
        masks = ds.masks()
        for r in det:
            assert masks[int(r["index"]), int(round(r["y_centre"])), int(round(r["x_centre"]))]
    report = (run / "report.md").read_text()
    assert "Post-processing" in report and "Completeness by flux_ratio" in report and "regions/" in report


def test_regions_check_command_reads_the_run_files_back(cli, tiny_run, tmp_path):
    import shutil

    code, out, err = cli("clumps-regions-check", tiny_run)
    assert code == 0, err
    assert "images" in out and "differ from the catalogue boxes by at most" in out
    # a damaged sky file is caught (a copy of the run: the fixture is shared)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    det = Table.read(copy / "tables" / "detections.ecsv")
    if len(det):
        f = copy / "regions" / f"{det['id'][0]}_sky.reg"
        text = f.read_text()
        ra = text.split("box(", 1)[1].split(",", 1)[0]
        f.write_text(text.replace(f"box({ra},", f"box({float(ra) + 1e-4:.8f},", 1))  # 0.36" = 0.9 px off
        code, _, err = cli("clumps-regions-check", copy)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "more than 0.01 px" in err
    (copy / "regions" / f"{det['id'][0] if len(det) else 0}.reg").unlink()
    code, _, err = cli("clumps-regions-check", copy)
    assert code == 2 and "is missing" in err


# -- clumps-evaluate: the run's model on other labelled data -------------------------------------------------------


@pytest.fixture(scope="module")
def fake_s82(tmp_path_factory):
    """The synthetic Stripe 82 folder of test_clumps_data.py (two JPEG-like galaxies, six clumps each)."""
    spec = importlib.util.spec_from_file_location("_clumps_data_tests", Path(__file__).with_name("test_clumps_data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._fake_s82(tmp_path_factory.mktemp("fake_s82") / "s82", scale=0.2)


def test_s82_resampled_to_the_simulator_scale_with_wcs_and_host_ellipse(fake_s82):
    from astrotl_clumps.s82 import S82ClumpsConfig, S82ClumpsDataset

    root, cache = fake_s82, Path(os.environ["ASTROTL_CACHE_DIR"])  # the calibration is cached for the next test
    plain = S82ClumpsDataset(S82ClumpsConfig(root=str(root)), split="test", seed=0, cache_dir=cache)
    cfg = S82ClumpsConfig(root=str(root), pixel_scale=0.396, crop=64, classes=["clump", "odd_clump"],
                          normalize={"background": "image_median", "scale": "image"})
    ds = S82ClumpsDataset(cfg, split="test", seed=0, cache_dir=cache)
    assert ds.info().classes == ("clump", "odd_clump") and ds.info().image_size == 64
    s, p = ds[0], plain[0]
    assert s["image"].shape == (3, 64, 64) and s["labels"].tolist() == [0] * len(s["boxes"]) and len(s["boxes"]) == 6
    assert 1.0 < float(s["image"].max()) <= 10.0 and float(p["image"].max()) <= 1.0  # noise units + asinh, not /255
    scale = float(ds.catalog()["scale"][0])
    widths = (s["boxes"][:, 2] - s["boxes"][:, 0]).numpy()
    np.testing.assert_allclose(widths, (p["boxes"][:, 2] - p["boxes"][:, 0]).numpy() * scale / 0.396, rtol=0.02)
    # the box centres sit at the clumps' sky offsets through the calibrated WCS of the served image
    cl = ds.clumps()[np.asarray(ds.clumps()["galaxy"]) == 0]
    cx, cy = ((s["boxes"][:, 0] + s["boxes"][:, 2]) / 2).numpy(), ((s["boxes"][:, 1] + s["boxes"][:, 3]) / 2).numpy()
    ra, dec = s["wcs"].pixel_to_world_values(cx, cy)
    g = ds.catalog()[0]
    east = (ra - g["ra"]) * np.cos(np.radians(g["dec"])) * 3600
    north = (dec - g["dec"]) * 3600
    np.testing.assert_allclose(east, cl["dx_east_arcsec"], atol=0.05)
    np.testing.assert_allclose(north, cl["dy_north_arcsec"], atol=0.05)
    x, y, a, b, th = s["host_ellipse"].tolist()
    t = np.radians(th)
    u, v = (cx - x) * np.cos(t) + (cy - y) * np.sin(t), -(cx - x) * np.sin(t) + (cy - y) * np.cos(t)
    assert np.all((u / a) ** 2 + (v / b) ** 2 <= 1.0) and a > b > 0  # every clump lies on the host
    assert len(s["box_meta"]["mag_r"]) == 6
    with pytest.raises(ValueError, match="lists a class twice"):
        S82ClumpsConfig(root=str(root), classes=["clump", "clump"])


def test_evaluate_a_run_on_other_data(cli, tiny_run, fake_s82, tmp_path):
    out = tmp_path / "eval_sim"
    code, stdout, err = cli("clumps-evaluate", tiny_run, out, "--set", "task.match=distance",
                            "--set", "task.match_distance=4", "--null-rotations", "3")
    assert code == 0, err
    assert "centre distance <= 4 px" in stdout and "chance completeness (detections rotated, 3 draws)" in stdout
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["chance_rotations"] == 3 and 0 <= m["chance_completeness_mean"] <= m["chance_completeness_max"] <= 1
    run_m = json.loads((tiny_run / "metrics.json").read_text())["metrics"]
    assert m["n_true"] == run_m["n_true"] and m["match"] == "distance"
    assert (out / "tables" / "detections.ecsv").is_file() and (out / "report.md").is_file()
    code, _, err = cli("clumps-evaluate", tiny_run, out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    # the simulation-trained model on (fake) Stripe 82 JPEGs resampled to its pixel scale
    root = fake_s82
    data = tmp_path / "s82.yaml"
    data.write_text(yaml.safe_dump({"data": {
        "name": "gzh_s82", "root": str(root), "pixel_scale": 0.396, "crop": 64, "classes": ["clump", "odd_clump"],
        "normalize": {"background": "image_median", "scale": "image"}}}))
    code, stdout, err = cli("clumps-evaluate", tiny_run, tmp_path / "eval_s82", "--data", data,
                            "--set", "task.brightness_column=mag_r", "--set", "task.brightness_bins=[19,21,23]")
    assert code == 0, err
    m = json.loads((tmp_path / "eval_s82" / "metrics.json").read_text())["metrics"]
    assert m["n_images"] == 2 and m["n_true"] == 12
    br = Table.read(tmp_path / "eval_s82" / "tables" / "completeness_by_brightness.ecsv")
    assert "mag_r_min" in br.colnames and int(br["n_true"].sum()) == 12
    # a model for other classes is refused
    data.write_text(yaml.safe_dump({"data": {"name": "gzh_s82", "root": str(root)}}))
    code, _, err = cli("clumps-evaluate", tiny_run, tmp_path / "eval_bad", "--data", data)
    assert code == 2 and "mismatch" in err and len(err.strip().splitlines()) == 1


# -- the backbone comparison: astrotl compare on a clumps task --------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CLUMPS_COMPARE = REPO / "tasks" / "clumps_compare.yaml"


def test_clumps_compare_task_file_plans_backbones_x_sizes_x_seeds(tmp_path):
    """tasks/clumps_compare.yaml is tasks/clumps.yaml plus a compare block: 3 backbones x 2 sizes x 2 seeds."""
    from astrotl.compare import make_plan
    from astrotl.plugins import load_registries

    spec = yaml.safe_load(CLUMPS_COMPARE.read_text())
    base = yaml.safe_load((REPO / "tasks" / "clumps.yaml").read_text())
    for section in ("task", "data", "head", "optim", "trainer"):  # the measured detector, unchanged
        assert spec[section] == base[section], section
    assert spec["backbone"] == base["backbone"]
    grid = spec["compare"]["grid"]
    assert grid["backbone.weights"] == {"random": "none", "gz1": "run:runs/gz1_pretrain", "imagenet": "imagenet"}
    plan = make_plan(CLUMPS_COMPARE, load_registries(), out=tmp_path / "cmp")
    names = [c.name for c in plan.cells]
    assert len(names) == 12 and "weights-gz1__size-250__seed-1" in names and "weights-random__size-1000__seed-0" in names
    assert not (tmp_path / "cmp").exists()  # planning writes nothing
    for c in plan.cells:  # every cell is a clumps run on its own subset of the one simulated pool
        d = c.config.to_dict()
        assert d["task"]["name"] == "clumps" and d["data"]["n_train"] == 1500
        assert d["train_subset"]["size"] in (250, 1000) and d["train_subset"]["seed"] == c.seed == d["seed"]
    missing = [c for c in plan.cells if c.settings["backbone.weights"] == "gz1" and not
               (REPO / "runs" / "gz1_pretrain" / "backbone.safetensors").is_file()]
    assert all(c.state == "skipped" and "gz1_pretrain" in c.note for c in missing)


@pytest.mark.slow
def test_compare_runs_clump_cells_skips_missing_weights_and_resumes(cli, tmp_path):
    """A tiny clumps grid through the core's astrotl compare: cells are clumps runs, the missing pre-training is a
    skipped cell with a note, the report tabulates completeness, purity and mAP50 next to F1, a learning curve is
    drawn, and a rerun keeps the finished cells."""
    task = _task_file(tmp_path, name="cmp", compare={
        "grid": {"backbone.weights": {"random": "none", "gz1": f"run:{tmp_path / 'no_such_run'}"},
                 "train_subset.size": [6, 12]},
        "seeds": [0], "seed_keys": ["seed", "train_subset.seed"], "metrics": ["completeness", "purity", "map_50"],
        "executor": "debug", "out": str(tmp_path / "cmp")})
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", task)
    assert code == 0, err
    cells = Table.read(out / "cells.ecsv")
    status = dict(zip(cells["cell"], cells["status"]))
    assert status == {"weights-random__size-6__seed-0": "finished", "weights-random__size-12__seed-0": "finished",
                      "weights-gz1__size-6__seed-0": "skipped", "weights-gz1__size-12__seed-0": "skipped"}
    run = out / "cells" / "weights-random__size-12__seed-0"
    for f in ("report.md", "tables/detections.ecsv", "tables/completeness_by_brightness.ecsv"):
        assert (run / f).is_file(), f
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    summary = Table.read(out / "summary.ecsv")
    for m in ("f1", "completeness", "purity", "map_50"):
        assert f"test_{m}_mean" in summary.colnames
    report = (out / "report.md").read_text()
    assert "completeness" in report and "purity" in report and "map_50" in report
    assert "does not exist" in report  # the skipped gz1 cells, with the reason
    assert (out / "learning_curve.png").is_file() and (out / "paired.ecsv").is_file()
    first = json.loads((run / "run.json").read_text())["ended"]
    code, _, err = cli("compare", task)  # resumable: the finished cells are kept, not rerun
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["ended"] == first


# -- bad inputs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, match", [
    ({"score_threshold": 0.2}, "below the post-processing score cut 0.3"),
    ({"brightness_bins": [0.05, 0.01]}, "at least two increasing edges"),
    ({"postprocess": {"nms_iou": 1.5}}, "nms_iou"),
    ({"postprocess": {"merge_px": 3}}, "merge_px"),
])
def test_bad_task_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        ClumpsTaskConfig(**cfg)


def test_bad_task_config_is_one_cli_line(cli, tmp_path):
    bad = _task_file(tmp_path, task={"score_threshold": 0.1, "postprocess": {"score_threshold": 0.3}})
    code, _, err = cli("validate", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "score_threshold >= 0.3" in err


class _NoMask(ImageDataset):
    name = "no_mask"
    collate_fn = staticmethod(list_collate)

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 32, 32), "boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0]]),
                "labels": torch.tensor([0]), "index": i}

    def info(self):
        return INFO


def test_data_without_host_mask_is_refused_before_training(tmp_path):
    ds = _NoMask(None, split="test", seed=0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="carry no host mask.*mask_outside_host: false"):
        _task().check_data(ds, "test")
    _task().check_data(ds, "train")  # training does not need it
    _task(postprocess={"mask_outside_host": False}).check_data(ds, "test")


@pytest.mark.parametrize("args, match", [
    (["--grid", "train_subset.size=0"], "train_subset.size"),
    (["--grid", "train_subset.sise=250"], "unknown key 'train_subset.sise'"),
    (["--grid", "train_subset.size="], "has no values"),
    (["--seeds", "a,b"], "not a comma-separated list of integers"),
    (["--set", "task.score_threshold=0.1"], "below the post-processing score cut 0.3"),
])
def test_clumps_compare_bad_arguments_are_one_line(cli, tmp_path, args, match):
    out = tmp_path / "out"
    code, _, err = cli("compare", CLUMPS_COMPARE, "--out", out, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("astrotl: error:") and match in err, err
    assert not out.exists()


def test_the_former_clumps_compare_command_is_gone(capsys):
    """``astrotl clumps-compare`` was replaced by ``astrotl compare tasks/clumps_compare.yaml``."""
    from astrotl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["clumps-compare", "out"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'clumps-compare'" in err
