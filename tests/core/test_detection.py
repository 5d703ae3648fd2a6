"""Detection: boxes under D4, the match rule, completeness/purity curves, data checks, the image_boxes data
set, Faster R-CNN on every backbone family, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import MaskedColumn, Table

from astrotl.datasets.detection_folder import ImageBoxesDataset
from astrotl.errors import ConfigError, DataError
from astrotl.interfaces import DatasetInfo, ImageDataset
from astrotl.tasks.detection import (DetectionTask, anchor_plan, augment_detection_batch, box_iou, completeness_purity,
                                     d4_boxes, match_detections, resolve_levels)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLASSES = ("small", "large")


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_boxes", HERE / "data" / "make_boxes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def box_folder(tmp_path_factory) -> Path:
    """The tiny seeded detection folder (40 grey 32 x 32 PNG images, 0-3 squares each)."""
    out = tmp_path_factory.mktemp("box_folder")
    _load_maker().make(out, images=40, size=32, seed=0)
    return out


def _task(**cfg) -> DetectionTask:
    return DetectionTask(DetectionTask.Config(**cfg), DatasetInfo(bands=("L",), classes=CLASSES))


def _bright_bbox(img: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# -- boxes follow the image -------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(16, 16), (12, 20)])
def test_d4_boxes_follow_a_bright_rectangle(h, w):
    img = torch.zeros(1, h, w)
    img[0, 2:5, 3:9] = 1.0  # rows 2-4, columns 3-8: box x0=3, y0=2, x1=9, y1=5
    box = torch.tensor([[3.0, 2.0, 9.0, 5.0]])
    for flip in (False, True):
        for k in range(4):
            out = torch.flip(img, dims=(-1,)) if flip else img
            out = torch.rot90(out, k, dims=(-2, -1))
            assert d4_boxes(box, k, flip, h, w)[0].tolist() == _bright_bbox(out), (flip, k)


@pytest.mark.parametrize("mode", ["d4", "flip"])
def test_batch_augment_moves_boxes_with_the_images_and_is_seeded(mode):
    imgs = torch.zeros(6, 1, 16, 16)
    boxes = []
    for i in range(6):
        x0, y0 = 1 + i, 2 + (i % 3)
        imgs[i, 0, y0:y0 + 3, x0:x0 + 5] = 1.0
        boxes.append(torch.tensor([[x0, y0, x0 + 5, y0 + 3]], dtype=torch.float32))
    boxes[5] = torch.zeros(0, 4)  # an image without objects
    imgs[5] = 0
    batch = {"image": imgs, "index": torch.arange(6), "boxes": boxes, "labels": [torch.zeros(len(b), dtype=torch.long)
                                                                                  for b in boxes]}
    out = augment_detection_batch(batch, mode, torch.Generator().manual_seed(3))
    again = augment_detection_batch(batch, mode, torch.Generator().manual_seed(3))
    assert torch.equal(out["image"], again["image"]) and all(torch.equal(a, b) for a, b in zip(out["boxes"], again["boxes"]))
    moved = 0
    for i in range(5):
        assert out["boxes"][i][0].tolist() == _bright_bbox(out["image"][i])
        moved += out["boxes"][i][0].tolist() != boxes[i][0].tolist()
    assert moved > 0 and out["boxes"][5].shape == (0, 4) and batch["boxes"][0] is boxes[0]  # input left alone
    task = _task(augment="none")
    assert task.batch_augment(batch, torch.Generator()) is batch


# -- the match rule ------------------------------------------------------------------------------------------


def test_match_is_one_to_one_and_score_ordered():
    truth = np.array([[0, 0, 10, 10]], float)
    dets = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float)
    dm, tm, q = match_detections(dets, [0.6, 0.9], truth, rule="iou", iou=0.5)
    assert dm.tolist() == [-1, 0] and tm.tolist() == [1] and q[1] == pytest.approx(0.81)  # the higher score wins
    # A (0.9) overlaps both truths and takes the one it overlaps most; B (0.8) then finds its truth taken
    truth = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], float)
    dets = np.array([[3, 0, 13, 10], [5, 0, 15, 10]], float)
    dm, tm, _ = match_detections(dets, [0.9, 0.8], truth, rule="iou", iou=0.5)
    assert dm.tolist() == [1, -1] and tm.tolist() == [-1, 0]
    dm, tm, _ = match_detections(dets, [0.7, 0.8], truth, rule="iou", iou=0.5)  # B first now: both match
    assert dm.tolist() == [0, 1] and tm.tolist() == [0, 1]


def test_iou_and_distance_rules_differ_for_small_offset_boxes():
    truth = np.array([[10, 10, 13, 13]], float)  # a 3 px source
    det = np.array([[11.5, 11.5, 14.5, 14.5]], float)  # 1.5 px off in x and y: IoU 0.14, distance 2.1 px
    assert box_iou(det, truth)[0, 0] == pytest.approx(2.25 / 15.75)
    assert match_detections(det, [0.9], truth, rule="iou", iou=0.3)[0].tolist() == [-1]
    dm, _, q = match_detections(det, [0.9], truth, rule="distance", distance=3.0)
    assert dm.tolist() == [0] and q[0] == pytest.approx(np.hypot(1.5, 1.5))
    assert match_detections(det, [0.9], truth, rule="distance", distance=2.0)[0].tolist() == [-1]


def test_match_with_no_detections_no_truth_and_classes():
    truth = np.array([[0, 0, 4, 4], [8, 8, 12, 12]], float)
    dm, tm, q = match_detections(np.zeros((0, 4)), [], truth)
    assert dm.shape == (0,) and tm.tolist() == [-1, -1] and q.shape == (0,)
    dm, tm, q = match_detections(truth, [0.5, 0.4], np.zeros((0, 4)))
    assert dm.tolist() == [-1, -1] and tm.shape == (0,) and np.isnan(q).all()
    dm, _, _ = match_detections(truth, [0.5, 0.4], truth, det_labels=[0, 1], true_labels=[1, 1])
    assert dm.tolist() == [-1, 1]


def test_completeness_purity_curve_by_hand():
    # 4 true boxes; 5 detections with scores 0.9 (match), 0.8 (false), 0.6 (match), 0.3 (match), 0.2 (false)
    t = completeness_purity([0.9, 0.6, 0.3, np.nan], [0.9, 0.8, 0.6, 0.3, 0.2], [1, 0, 1, 1, 0], [0.0, 0.5, 0.7, 0.95])
    assert t["n_detected"].tolist() == [5, 3, 2, 0] and t["n_matched"].tolist() == [3, 2, 1, 0]
    assert np.allclose(t["completeness"], [0.75, 0.5, 0.25, 0.0])
    assert np.allclose(t["purity"][:3], [0.6, 2 / 3, 0.5]) and np.isnan(t["purity"][3])
    assert np.allclose(t["f1"], [2 * 3 / 9, 2 * 2 / 7, 2 * 1 / 6, 0.0])


def test_evaluate_counts_images_without_detections_and_adds_matched():
    task = _task(score_threshold=0.5, match="iou", match_iou=0.5)
    # image 0: one hit and one false positive; image 1: no detection, one missed box; image 2: empty sky
    preds = Table({"index": [0, 0, 1, 2], "id": ["a", "a", "b", "c"],
                   "det_id": MaskedColumn([0, 1, 0, 0], mask=[False, False, True, True]),
                   "score": MaskedColumn([0.9, 0.7, 0.0, 0.0], mask=[False, False, True, True])})
    for k, v in zip(("x0", "y0", "x1", "y1"), ([0, 20, 0, 0], [0, 20, 0, 0], [4, 24, 0, 0], [4, 24, 0, 0])):
        preds[k] = MaskedColumn(np.asarray(v, float), mask=[False, False, True, True])
    preds["pred_class"] = MaskedColumn(["small", "small", "", ""], mask=[False, False, True, True])
    truth = Table({"index": [0, 1], "true_id": [0, 0], "x0": [0.0, 5.0], "y0": [0.0, 5.0], "x1": [4.0, 9.0],
                   "y1": [4.0, 9.0], "true_class": ["small", "small"]})
    metrics, tables = task.evaluate(preds, truth)
    assert (metrics["n_images"], metrics["n_true"], metrics["n_detected"], metrics["n_matched"]) == (3, 2, 2, 1)
    assert metrics["completeness"] == 0.5 and metrics["purity"] == 0.5 and metrics["f1"] == 0.5
    assert metrics["match_rule"] == "IoU >= 0.5" and 0 <= metrics["map_50"] <= 1
    per = tables["per_image"]
    assert per["id"].tolist() == ["a", "b", "c"] and per["n_true"].tolist() == [1, 1, 0]
    assert per["n_detected"].tolist() == [2, 0, 0] and per["n_matched"].tolist() == [1, 0, 0]
    assert preds["matched"].tolist() == [True, False, None, None]
    assert tables["truth_matches"]["found"].tolist() == [True, False]
    curve = tables["completeness_purity"]
    assert curve["score_threshold"][0] == pytest.approx(0.05) and curve["score_threshold"][-1] == 1.0
    line = task.headline(metrics)
    assert line.startswith("test completeness 0.5, purity 0.5 (IoU >= 0.5, score >= 0.5), F1 0.5, mAP50")


# -- data checks ---------------------------------------------------------------------------------------------


class _Samples(ImageDataset):
    name = "fake_boxes"

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def info(self):
        return DatasetInfo(bands=("L",), classes=CLASSES)

    def catalog(self):
        return Table({"id": [f"obj{i}" for i in range(len(self))]})


def _sample(boxes, labels):
    return {"image": torch.zeros(1, 16, 16), "index": 0, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


def test_check_data_names_the_sample_and_the_fix():
    task = _task()
    ok = _sample([[1, 1, 5, 5]], [1])
    task.check_data(_Samples([ok, _sample([], [])]), "train")  # an image without objects is fine
    cases = [
        ({"image": torch.zeros(1, 16, 16), "index": 0}, r"train sample 1 \(id obj1\) of data set 'fake_boxes' has no 'boxes'"),
        (_sample([[1, 1, 20, 5]], [0]), r"train sample 1 \(id obj1\): box \[1.0, 1.0, 20.0, 5.0\] lies outside the 16 x 16"),
        (_sample([[5, 1, 5, 4]], [0]), r"train sample 1 \(id obj1\): box .* has x1 <= x0 or y1 <= y0"),
        (_sample([[1, 1, 5, 5]], [2]), r"train sample 1 \(id obj1\): label 2 is not a class index 0..1"),
        (_sample([[1, 1, 5, 5]], [0, 1]), r"has 1 boxes but 2 labels"),
    ]
    for bad, match in cases:
        with pytest.raises(DataError, match=match):
            task.check_data(_Samples([ok, bad]), "train")
    task.check_data(_Samples([{"image": torch.zeros(1, 16, 16), "index": 0}]), "predict")  # nothing to check


def test_config_errors():
    task = _task()
    info = [{"channels": 8, "stride": s} for s in (2, 4, 8, 16, 32)]
    assert resolve_levels(task.config, info) == [1, 2, 3, 4]
    assert resolve_levels(DetectionTask.Config(fpn=False), info) == [3]
    assert resolve_levels(DetectionTask.Config(levels=[-1, 1]), info) == [1, 4]
    with pytest.raises(ConfigError, match=r"has 5 feature maps .* use indices 0..4"):
        resolve_levels(DetectionTask.Config(levels=[7]), info)
    with pytest.raises(ConfigError, match="without a pyramid the detector uses one map"):
        resolve_levels(DetectionTask.Config(fpn=False, levels=[1, 2]), info)
    assert anchor_plan(task.config, 4)[0] == ((4.0,), (8.0,), (16.0,), (32.0,))
    assert anchor_plan(task.config, 1)[0] == ((4.0, 8.0, 16.0, 32.0),)
    with pytest.raises(ConfigError, match="gives 2 lists for 3 feature maps"):
        anchor_plan(DetectionTask.Config(anchor_sizes=[[4, 8], [16, 32]]), 3)
    with pytest.raises(ConfigError, match="normalize: imagenet needs 3-band images"):
        from astrotl.plugins import load_registries

        cls = load_registries().backbones.get("resnet18")
        bb = cls(cls.Config(weights="none"), in_chans=1, bands=("L",))
        _task(transform={"normalize": "imagenet"}).build_model(bb, None)
    with pytest.raises(ConfigError, match="needs a data set with box classes"):
        DetectionTask(DetectionTask.Config(), DatasetInfo(bands=("L",)))


# -- the image_boxes data set ---------------------------------------------------------------------------------


def _boxes_cfg(root: Path, **over):
    kw = dict(root=str(root), id_col="image_id", file_pattern="images/{id}.png", color="grayscale",
              pixel_norm="unit", split_fractions=(0.6, 0.2, 0.2), extra_columns=["n_true"])
    kw.update(over)
    return ImageBoxesDataset.Config(**kw)


def test_image_boxes_splits_keep_empty_images_and_boxes_cover_the_squares(box_folder, tmp_path):
    sets = {s: ImageBoxesDataset(_boxes_cfg(box_folder), split=s, seed=0, cache_dir=tmp_path)
            for s in ("train", "val", "test", "predict")}
    assert [len(sets[s]) for s in ("train", "val", "test", "predict")] == [24, 8, 8, 40]
    ids = [set(sets[s].catalog()["id"]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    ds = sets["predict"]
    info = ds.info()
    assert info.classes == ("large", "small") and info.bands == ("L",) and info.image_size == 32
    cat = ds.catalog()
    assert (np.asarray(cat["n_boxes"]) == np.asarray(cat["n_true"])).all() and (cat["n_boxes"] == 0).sum() == 8
    for i in range(len(ds)):
        s = ds[i]
        assert s["boxes"].dtype == torch.float32 and s["labels"].dtype == torch.int64
        for b in s["boxes"]:
            x0, y0, x1, y1 = (int(v) for v in b)
            assert (s["image"][0, y0:y1, x0:x1] > 0.8).all()  # raw 220 / 255 inside the box
    _task().check_data(ds, "train")
    assert ImageBoxesDataset.collate_fn([ds[0], ds[1]])["boxes"][1].shape[1] == 4


def test_image_boxes_crop_and_resize_move_the_boxes(box_folder, tmp_path):
    full = ImageBoxesDataset(_boxes_cfg(box_folder), split="predict", seed=0, cache_dir=tmp_path)
    cropped = ImageBoxesDataset(_boxes_cfg(box_folder, crop=24, resize=12, min_visible=0.5), split="predict", seed=0,
                                cache_dir=tmp_path)
    assert cropped[0]["image"].shape == (1, 12, 12)
    n_kept = 0
    for i in range(len(full)):
        b = full[i]["boxes"].numpy()
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        c = np.clip(b - 4, 0, 24)
        vis = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        expect = c[vis >= 0.5 * area] / 2
        assert np.allclose(cropped[i]["boxes"].numpy(), expect)
        n_kept += len(expect)
    assert 0 < n_kept < sum(len(full[i]["boxes"]) for i in range(len(full)))


def test_image_boxes_bad_tables(box_folder, tmp_path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(box_folder, root)
    boxes = Table.read(root / "boxes.csv", format="ascii.csv")
    boxes["x1"][2] = 40
    boxes.write(root / "boxes.csv", format="ascii.csv", overwrite=True)
    with pytest.raises(DataError, match=r"boxes table .* row 2 \(image img002\): box x0=8, y0=11, x1=40, y1=14 "
                                        r"extends beyond the 32 x 32 px image .* clip_boxes: true"):
        ImageBoxesDataset(_boxes_cfg(root), split="train", seed=0, cache_dir=tmp_path)
    clipped = ImageBoxesDataset(_boxes_cfg(root, clip_boxes=True), split="predict", seed=0, cache_dir=tmp_path)
    assert clipped[2]["boxes"][1].tolist() == [8.0, 11.0, 32.0, 14.0]
    boxes["x1"][2] = 5
    boxes.write(root / "boxes.csv", format="ascii.csv", overwrite=True)
    with pytest.raises(DataError, match=r"row 2 \(image img002\): .* has x1 <= x0 or y1 <= y0"):
        ImageBoxesDataset(_boxes_cfg(root), split="train", seed=0, cache_dir=tmp_path)
    boxes["x1"][2] = 11
    boxes["image_id"][0] = "img999"
    boxes.write(root / "boxes.csv", format="ascii.csv", overwrite=True)
    with pytest.raises(DataError, match=r"1 boxes name images not in the images table .* 'img999'"):
        ImageBoxesDataset(_boxes_cfg(root), split="train", seed=0, cache_dir=tmp_path)


# -- the detector on every backbone family ----------------------------------------------------------------------


def _tiny_batch():
    img = torch.randn(2, 1, 32, 32)
    return {"image": img, "index": torch.tensor([0, 1]),
            "boxes": [torch.tensor([[2.0, 3.0, 8.0, 9.0], [20.0, 20.0, 26.0, 24.0]]), torch.zeros(0, 4)],
            "labels": [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.int64)]}


@pytest.mark.parametrize("name, fpn", [("resnet18", True), ("resnet18", False), ("vgg11_bn", True),
                                       ("convnext_tiny", False), ("timm:resnet18", True)])
def test_detector_trains_and_detects_on_any_backbone(env, name, fpn):
    from astrotl.plugins import load_registries

    cls = load_registries().backbones.get(name)
    bb = cls(cls.Config(weights="none"), in_chans=1, bands=("L",))
    task = _task(fpn=fpn, fpn_channels=16, box_head_size=32, detections_per_img=10, rpn_proposals=100,
                 box_batch_size_per_image=64)
    model = task.build_model(bb, None)
    assert model.backbone is bb and model.rcnn.transform.resize_to is None
    batch = task.batch_augment(_tiny_batch(), torch.Generator().manual_seed(0))
    model.train()
    loss, parts = task.training_loss(model, batch)
    assert set(parts) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())
    model.eval()
    val_loss, (dets, targets) = task.validation_step(model, batch)
    assert val_loss is None and len(dets) == 2 and targets[1]["boxes"].shape == (0, 4)
    metrics = task.make_metrics()
    task.update_metrics(metrics, (dets, targets), batch)
    values = metrics.compute()
    assert {"map", "map_50", "completeness", "purity", "f1"} <= set(values)
    rows = task.predict_batch(model, batch)
    assert all(r["pred_class"] in CLASSES and r["x1"] > r["x0"] for r in rows)
    assert len(task.truth_rows(batch)) == 2


def test_detector_refuses_a_vision_transformer(env):
    from astrotl.plugins import load_registries

    cls = load_registries().backbones.get("timm:vit_tiny_patch16_224")
    bb = cls(cls.Config(weights="none"), in_chans=1, bands=("L",))
    with pytest.raises(ConfigError, match="vision transformer"):
        _task().build_model(bb, None)


# -- end to end ------------------------------------------------------------------------------------------------


def test_detection_run_end_to_end_through_the_cli(cli, box_folder, tmp_path):
    cfg = yaml.safe_load((REPO / "tasks" / "smoke" / "detection_tiny.yaml").read_text())
    cfg["data"]["root"] = str(box_folder)
    cfg["output_dir"] = str(tmp_path / "runs")
    task_file = tmp_path / "det.yaml"
    task_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, out, err = cli("run", task_file)
    assert code == 0, err
    assert "test completeness" in out and "purity" in out and "mAP50" in out
    run = tmp_path / "runs" / "detection_tiny"
    for f in ("predictions.ecsv", "metrics.json", "report.md", "tables/completeness_purity.ecsv",
              "tables/per_image.ecsv", "tables/truth_matches.ecsv", "plots/completeness_purity.png",
              "plots/detections_overlay.png"):
        assert (run / f).is_file(), f
    preds = Table.read(run / "predictions.ecsv")
    per_image = Table.read(run / "tables" / "per_image.ecsv")
    assert len(per_image) == 8 and set(per_image["id"]) == set(preds["id"])  # every test image is accounted for
    detected = ~np.ma.getmaskarray(preds["score"]) if hasattr(preds["score"], "mask") else np.ones(len(preds), bool)
    assert detected.sum() == per_image["n_detected_all"].sum()  # one row per detection
    no_det = per_image["id"][per_image["n_detected_all"] == 0]
    assert all((preds["id"] == i).sum() == 1 for i in no_det)  # images without detections keep one row
    assert {"id", "file", "n_true", "det_id", "x0", "y0", "x1", "y1", "x_centre", "y_centre", "score", "pred_class",
            "matched"} <= set(preds.colnames)
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["test_n_true"] == int(per_image["n_true"].sum()) if "test_n_true" in m else m["n_true"] == int(per_image["n_true"].sum())
    report = (run / "report.md").read_text()
    assert "completeness" in report and "IoU >= 0.3" in report


def test_image_boxes_reads_fits_cubes_with_1_based_xywh_boxes_and_crops(tmp_path):
    from astropy.io import fits

    root = tmp_path / "fits"
    (root / "cubes").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        cube = rng.normal(0, 1, (3, 40, 48)).astype(np.float32)
        x0, y0 = 10 + i, 12
        cube[:, y0:y0 + 5, x0:x0 + 4] += 50
        fits.PrimaryHDU(cube).writeto(root / "cubes" / f"g{i}.fits")
        rows.append((f"g{i}", x0 + 1, y0 + 1, 4, 5))  # 1-based x, y; width, height
    Table(rows=[(r[0],) for r in rows], names=["gal"]).write(root / "images.ecsv")
    Table(rows=rows, names=["gal", "x", "y", "w", "h"]).write(root / "boxes.ecsv")
    cfg = ImageBoxesDataset.Config(root=str(root), images="images.ecsv", boxes="boxes.ecsv", id_col="gal",
                                   file_pattern="cubes/{id}.fits", hdu=0, image_col="gal", box_cols=("x", "y", "w", "h"),
                                   box_format="xywh", pixel_origin=1, crop=32, split_fractions=(1, 0, 0))
    ds = ImageBoxesDataset(cfg, split="train", seed=0, cache_dir=tmp_path / "cache")
    info = ds.info()
    assert info.classes == ("object",) and len(info.bands) == 3 and info.image_size == 32
    for i in range(len(ds)):
        s = ds[i]
        g = int(ds.catalog()["id"][i][1:])
        # centre crop of 48 x 40 to 32: x shifts by 8, y by 4
        assert s["boxes"].tolist() == [[10 + g - 8, 8.0, 14 + g - 8, 13.0]] and s["labels"].tolist() == [0]
        x0, y0, x1, y1 = (int(v) for v in s["boxes"][0])
        inside, outside = s["image"][:, y0:y1, x0:x1].mean(), s["image"].mean()
        assert inside > outside + 1


@pytest.mark.parametrize("bands", [1, 2, 5])
def test_display_rgb_any_band_count(bands):
    from astrotl.plots import display_rgb

    img = np.random.default_rng(0).normal(0, 1, (bands, 20, 24))
    img[:, 5:9, 5:9] += 30
    rgb = display_rgb(img)
    assert rgb.shape == (20, 24, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[5:9, 5:9].mean() > rgb.mean()


def test_evaluate_without_any_detection_or_truth():
    task = _task()
    preds = Table({"index": [0, 1], "id": ["a", "b"]})  # the catalogue alone: nothing was detected
    truth = Table({"index": [1], "true_id": [0], "x0": [1.0], "y0": [1.0], "x1": [4.0], "y1": [4.0],
                   "true_class": ["small"]})
    metrics, tables = task.evaluate(preds, truth)
    assert metrics["completeness"] == 0 and np.isnan(metrics["purity"]) and metrics["f1"] == 0
    assert tables["per_image"]["n_true"].tolist() == [0, 1] and tables["per_image"]["n_detected_all"].tolist() == [0, 0]
    assert "purity n/a" in task.headline(metrics)
    metrics, tables = task.evaluate(preds, Table({"index": np.zeros(0, np.int64)}))
    assert metrics["n_true"] == 0 and np.isnan(metrics["completeness"]) and np.isnan(metrics["map_50"])


# -- hooks for subclasses: post-processing before matching, per-box truth columns --------------------------------


class _FixedDetector(torch.nn.Module):
    """Returns the same detections (torchvision's 1-based labels) for every image, in eval mode."""

    def __init__(self, boxes, scores, labels):
        super().__init__()
        self.out = {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
                    "labels": torch.tensor(labels) + 1}

    def forward(self, images, targets=None):
        return [dict(self.out) for _ in range(len(images))]


class _KeepBest(DetectionTask):
    def postprocess_detections(self, detections, batch):
        return [{k: v[:1] for k, v in d.items()} for d in detections]


def test_postprocess_hook_filters_before_validation_and_prediction():
    cfg = DetectionTask.Config(score_threshold=0.0)
    model = _FixedDetector([[2.0, 3.0, 8.0, 9.0], [20.0, 20.0, 26.0, 24.0]], [0.9, 0.8], [0, 1])
    batch = _tiny_batch()
    plain = DetectionTask(cfg, DatasetInfo(bands=("L",), classes=CLASSES))
    hooked = _KeepBest(cfg, DatasetInfo(bands=("L",), classes=CLASSES))
    assert len(plain.predict_batch(model, batch)) == 4
    rows = hooked.predict_batch(model, batch)
    assert len(rows) == 2 and [r["score"] for r in rows] == [pytest.approx(0.9)] * 2
    _, (dets, _) = hooked.validation_step(model, batch)
    assert [len(d["boxes"]) for d in dets] == [1, 1]
    metrics = hooked.make_metrics()
    hooked.update_metrics(metrics, (dets, hooked._targets(batch, "cpu")), batch)
    assert float(metrics.compute()["purity"]) == pytest.approx(0.5)  # image 0 matched, image 1 has no truth


def test_truth_rows_carry_box_meta_columns_and_check_their_length():
    task = _task()
    batch = _tiny_batch()
    batch["box_meta"] = [{"flux": torch.tensor([0.1, 0.2])}, {"flux": torch.zeros(0)}]
    rows = task.truth_rows(batch)
    assert [r["flux"] for r in rows] == [pytest.approx(0.1), pytest.approx(0.2)]
    batch["box_meta"] = [{"flux": torch.tensor([0.1])}, {"flux": torch.zeros(0)}]
    with pytest.raises(DataError, match="box_meta 'flux' has 1 values for 2 boxes"):
        task.truth_rows(batch)
