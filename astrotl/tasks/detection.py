"""Object detection with torchvision's Faster R-CNN on any astrotl backbone: :class:`DetectionTask` (``detection``).

The detector is built around the run's :class:`~astrotl.interfaces.Backbone` (torchvision, ``timm:``,
``zoobot:``, ``run:`` or a weights file; N bands), with or without a feature pyramid over the
backbone's :meth:`~astrotl.interfaces.Backbone.feature_maps`. Three choices are deliberate:

* **no resize, no ImageNet statistics.** torchvision's ``GeneralizedRCNNTransform`` would resize every
  image to 800 px and subtract ImageNet's RGB mean; astronomical pixels are normalised by the data set,
  and objects a few pixels wide stay a few pixels wide. ``transform: {resize: null, normalize: none}``
  is the default; ``resize: <px>`` and ``normalize: imagenet`` (3 bands only) restore torchvision's
  behaviour where wanted;
* **anchors in pixels for small objects**: ``anchor_sizes`` (default 4, 8, 16, 32 px: one per pyramid
  level) and ``aspect_ratios``;
* **completeness and purity** next to COCO mAP: a one-to-one, score-ordered (greedy, highest score first)
  match of detections to true boxes at an IoU threshold (``match: iou``, ``match_iou``) or a centre
  distance in pixels (``match: distance``, ``match_distance``); completeness = matched true boxes / all
  true boxes, purity = matched detections / detections with score >= ``score_threshold``.

Samples carry ``boxes`` (float ``[N, 4]``, ``x0, y0, x1, y1`` pixel edges, 0-based: pixel ``i`` spans
``[i, i + 1)``) and ``labels`` (int ``[N]``, 0-based indices into the data set's classes; the task adds 1
for torchvision's background class). ``N = 0`` is an image without objects. Optional ``box_meta`` (a dict
of per-box values, e.g. ``{"flux_ratio": [N]}``) becomes columns of the truth table. A subclass may filter
detections before they are matched (:meth:`DetectionTask.postprocess_detections`).

YAML::

    task:
      name: detection
      fpn: true                 # feature pyramid over the backbone's stages
      anchor_sizes: [4, 8, 16, 32]
      aspect_ratios: [0.5, 1.0, 2.0]
      score_threshold: 0.5      # completeness / purity are quoted at this score
      match: iou                # or distance
      match_iou: 0.3
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import MaskedColumn, Table
from pydantic import Field, model_validator
from torch import nn

from ..data import list_collate
from ..errors import ConfigError, DataError
from ..interfaces import Backbone, ComponentConfig, DatasetInfo, ImageDataset, Task

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Score thresholds of the completeness / purity curves.
CURVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)
#: Keys of torchmetrics' MeanAveragePrecision that the task logs (the rest are -1 for small objects or per class).
MAP_KEYS = ("map", "map_50", "map_75", "mar_100")


# -- configuration ------------------------------------------------------------------------------------


class DetectionTransformConfig(ComponentConfig):
    """The detector's internal image transform (torchvision's ``GeneralizedRCNNTransform``)."""

    resize: int | None = Field(None, ge=8, description="resize the shorter image side to this many px (longer at "
                                                        "most 2x) inside the detector; null = keep the data's size")
    normalize: Literal["none", "imagenet"] = Field(
        "none", description="none: use the data set's normalised pixels as they are; imagenet: subtract ImageNet's "
                            "RGB mean / divide by its std (3-band data only)")


class DetectionTaskConfig(ComponentConfig):
    """Options of :class:`DetectionTask`."""

    fpn: bool = Field(True, description="feature pyramid network over the backbone's stages (false: one feature map)")
    levels: list[int] | None = Field(
        None, description="indices into the backbone's feature_maps to use (negative counts from the deepest); "
                          "null: with fpn every stage of stride >= 4, without fpn the deepest of stride <= 16")
    fpn_channels: int = Field(256, ge=8, description="channels of every pyramid level")
    anchor_sizes: list[float] | list[list[float]] = Field(
        [4.0, 8.0, 16.0, 32.0], description="anchor sides in px: one per feature level (as many as levels), the "
                                            "same list at every level (any other length), or a list per level")
    aspect_ratios: list[float] = Field([0.5, 1.0, 2.0], description="anchor height/width ratios (every level)")
    transform: DetectionTransformConfig = Field(DetectionTransformConfig(), description="detector-internal resize "
                                                                                        "and normalisation")
    augment: Literal["d4", "flip", "none"] = Field(
        "d4", description="training augmentation moving the boxes with the image: d4 = random 90-degree rotations "
                          "and flips (only 180 degrees for non-square images), flip = random x and y flips")
    roi_output_size: int = Field(7, ge=1, description="side of the RoIAlign output per box")
    box_head_size: int = Field(1024, ge=8, description="width of the two-layer box head (torchvision: 1024)")
    box_score_thresh: float = Field(0.05, ge=0, lt=1, description="the detector drops detections below this score "
                                                                  "(the curves start here)")
    nms_iou: float = Field(0.5, gt=0, le=1, description="IoU of the detector's per-class non-maximum suppression")
    detections_per_img: int = Field(100, ge=1, description="at most this many detections per image")
    rpn_nms_iou: float = Field(0.7, gt=0, le=1, description="IoU of the region-proposal NMS")
    rpn_proposals: int = Field(1000, ge=1, description="region proposals kept per image after the RPN's NMS (torchvision: "
                                                        "2000 in training, 1000 in evaluation)")
    box_batch_size_per_image: int = Field(512, ge=1, description="proposals sampled per image to train the box head")
    score_threshold: float = Field(0.5, ge=0, le=1, description="score at which completeness, purity and F1 are quoted")
    match: Literal["iou", "distance"] = Field("iou", description="match rule: box IoU or centre distance")
    match_iou: float = Field(0.3, gt=0, le=1, description="with match: iou, the minimum IoU of a match")
    match_distance: float = Field(3.0, gt=0, description="with match: distance, the maximum centre distance (px)")
    class_aware: bool = Field(False, description="a detection matches only a true box of its own class")
    n_overlay: int = Field(8, ge=0, description="test images shown with truth and detections in the overlay plot")

    @model_validator(mode="after")
    def _check(self):
        if self.levels is not None and len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels lists a stage twice: {self.levels}")
        if any(r <= 0 for r in self.aspect_ratios) or not self.aspect_ratios:
            raise ValueError(f"aspect_ratios must be > 0 and not empty, got {self.aspect_ratios}")
        sizes = self.anchor_sizes
        flat = [s for row in sizes for s in (row if isinstance(row, list) else [row])]
        if not flat or any(s <= 0 for s in flat):
            raise ValueError(f"anchor_sizes must be > 0 and not empty, got {sizes}")
        return self

    def match_rule(self) -> str:
        """The match rule in words, e.g. ``"IoU >= 0.3"``."""
        return f"IoU >= {self.match_iou:g}" if self.match == "iou" else f"centre distance <= {self.match_distance:g} px"


# -- the detector -------------------------------------------------------------------------------------


def _rcnn_transform_class():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class AstroRCNNTransform(GeneralizedRCNNTransform):
        """torchvision's R-CNN transform with resize and normalisation only when asked for.

        It still pads a batch to a multiple of 32 px (bottom/right; boxes do not move) and maps the
        detections back to the input image size.
        """

        def __init__(self, cfg: DetectionTransformConfig, in_chans: int):
            if cfg.normalize == "imagenet":
                if in_chans != 3:
                    raise ConfigError(f"task.transform.normalize: imagenet needs 3-band images, the data has {in_chans}; "
                                      f"use normalize: none (the data set normalises the bands)")
                mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            else:
                mean, std = [0.0] * in_chans, [1.0] * in_chans
            side = cfg.resize or 1
            super().__init__(min_size=side, max_size=2 * side, image_mean=mean, image_std=std, size_divisible=32)
            self.resize_to = cfg.resize
            self.normalize_mode = cfg.normalize

        def normalize(self, image: torch.Tensor) -> torch.Tensor:
            return image if self.normalize_mode == "none" else super().normalize(image)

        def resize(self, image, target=None):
            return (image, target) if self.resize_to is None else super().resize(image, target)

    return AstroRCNNTransform


def resolve_levels(cfg: DetectionTaskConfig, info: list[dict[str, int]], backbone_name: str = "backbone") -> list[int]:
    """Indices (non-negative, increasing stride) of the backbone feature maps the detector uses."""
    n = len(info)
    if cfg.levels is None:
        if cfg.fpn:
            levels = [i for i, d in enumerate(info) if d["stride"] >= 4] or list(range(n))
        else:
            fine = [i for i, d in enumerate(info) if d["stride"] <= 16]
            levels = [fine[-1] if fine else n - 1]
    else:
        bad = [i for i in cfg.levels if not -n <= i < n]
        if bad:
            raise ConfigError(f"task.levels {cfg.levels}: {backbone_name} has {n} feature maps (strides "
                              f"{[d['stride'] for d in info]}); use indices 0..{n - 1} (or -1 for the deepest)")
        levels = sorted(i % n for i in cfg.levels)
    if not cfg.fpn and len(levels) != 1:
        raise ConfigError(f"task.levels {cfg.levels} lists {len(levels)} feature maps but fpn is false; without a "
                          f"pyramid the detector uses one map: give one level or set fpn: true")
    return levels


def anchor_plan(cfg: DetectionTaskConfig, n_maps: int) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """``(sizes, aspect_ratios)`` per feature map for torchvision's ``AnchorGenerator``."""
    sizes = cfg.anchor_sizes
    if any(isinstance(s, list) for s in sizes):
        if len(sizes) != n_maps:
            raise ConfigError(f"task.anchor_sizes gives {len(sizes)} lists for {n_maps} feature maps; give one list "
                              f"per map, or a flat list")
        if len({len(s) for s in sizes}) != 1:
            raise ConfigError(f"task.anchor_sizes lists have different lengths {[len(s) for s in sizes]}; every map "
                              f"needs the same number of anchors")
        per_map = tuple(tuple(float(v) for v in s) for s in sizes)
    elif len(sizes) == n_maps and n_maps > 1:
        per_map = tuple((float(s),) for s in sorted(sizes))
    else:
        per_map = tuple(tuple(float(s) for s in sizes) for _ in range(n_maps))
    ratios = tuple(tuple(float(r) for r in cfg.aspect_ratios) for _ in range(n_maps))
    return per_map, ratios


class BackboneFeatures(nn.Module):
    """An astrotl :class:`~astrotl.interfaces.Backbone` as torchvision detection wants it.

    ``forward`` returns an ``OrderedDict`` of feature maps named ``"0"``, ``"1"``, ... (after the
    feature pyramid when ``fpn_channels`` is set) and ``out_channels`` is their channel count.
    """

    def __init__(self, backbone: Backbone, levels: list[int], fpn_channels: int | None):
        super().__init__()
        self.body = backbone
        self.levels = list(levels)
        info = backbone.feature_info
        in_channels = [int(info[i]["channels"]) for i in self.levels]
        self.strides = [int(info[i]["stride"]) for i in self.levels]
        self.names = [str(i) for i in range(len(self.levels))]
        if fpn_channels:
            from torchvision.ops import FeaturePyramidNetwork

            self.fpn: nn.Module | None = FeaturePyramidNetwork(in_channels, fpn_channels)
            self.out_channels = int(fpn_channels)
        else:
            self.fpn = None
            self.out_channels = in_channels[0]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.feature_maps(x)
        feats = OrderedDict((name, maps[i]) for name, i in zip(self.names, self.levels))
        return self.fpn(feats) if self.fpn is not None else feats


class Detector(nn.Module):
    """Faster R-CNN (torchvision) around an astrotl backbone.

    ``forward(images, targets)`` in training mode returns torchvision's loss dict; in evaluation
    mode ``forward(images)`` returns one dict per image with ``boxes``, ``scores`` and ``labels``
    (1-based: 0 is torchvision's background).
    """

    def __init__(self, backbone: Backbone, n_classes: int, cfg: DetectionTaskConfig, in_chans: int):
        super().__init__()
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.rpn import AnchorGenerator
        from torchvision.ops import MultiScaleRoIAlign

        info = backbone.feature_info  # ConfigError for backbones without spatial maps (vision transformers)
        levels = resolve_levels(cfg, info, backbone.name)
        features = BackboneFeatures(backbone, levels, cfg.fpn_channels if cfg.fpn else None)
        sizes, ratios = anchor_plan(cfg, len(levels))
        res = cfg.roi_output_size
        self.rcnn = FasterRCNN(
            features, num_classes=None,
            rpn_anchor_generator=AnchorGenerator(sizes=sizes, aspect_ratios=ratios),
            rpn_nms_thresh=cfg.rpn_nms_iou, rpn_post_nms_top_n_train=cfg.rpn_proposals,
            rpn_post_nms_top_n_test=cfg.rpn_proposals, rpn_pre_nms_top_n_train=2 * cfg.rpn_proposals,
            rpn_pre_nms_top_n_test=2 * cfg.rpn_proposals, box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=features.names, output_size=res, sampling_ratio=2),
            box_head=TwoMLPHead(features.out_channels * res * res, cfg.box_head_size),
            box_predictor=FastRCNNPredictor(cfg.box_head_size, n_classes + 1),
            box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.nms_iou,
            box_detections_per_img=cfg.detections_per_img,
            min_size=1, max_size=1, image_mean=[0.0] * in_chans, image_std=[1.0] * in_chans)
        self.rcnn.transform = _rcnn_transform_class()(cfg.transform, in_chans)
        self.anchor_sizes, self.aspect_ratios = sizes, ratios

    @property
    def backbone(self) -> Backbone:
        """The astrotl backbone inside the detector."""
        return self.rcnn.backbone.body

    @property
    def features(self) -> BackboneFeatures:
        return self.rcnn.backbone

    def forward(self, images, targets: list[dict[str, torch.Tensor]] | None = None):
        return self.rcnn(list(images), targets)


# -- boxes under the dihedral group ----------------------------------------------------------------------


def d4_boxes(boxes: torch.Tensor, k: int, flip: bool, height: int, width: int) -> torch.Tensor:
    """Boxes of an image that is flipped in x (``flip``) and then rotated by ``torch.rot90(k)``.

    The image operations are ``torch.flip(img, dims=(-1,))`` then ``torch.rot90(img, k, dims=(-2, -1))``
    on ``[..., height, width]``; boxes are ``x0, y0, x1, y1`` pixel edges.
    """
    b = boxes.clone()
    h, w = height, width
    if flip:
        b = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    for _ in range(k % 4):
        x0, y0, x1, y1 = b.unbind(1)
        b = torch.stack([y0, w - x1, y1, w - x0], dim=1)  # rot90: row i of the output is column w-1-i
        h, w = w, h
    return b


def augment_detection_batch(batch: dict[str, Any], mode: str, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Random flips / 90-degree rotations of every image of a collated batch, moving its boxes with it.

    ``mode`` is ``"d4"`` (rotation by k x 90 degrees, k uniform in 0..3, after a 50% flip in x; non-square
    images rotate by 0 or 180 degrees only), ``"flip"`` (independent 50% flips in x and y) or ``"none"``.
    Draws come from ``generator`` (a CPU generator), so a resumed run repeats them.
    """
    if mode == "none":
        return batch
    images = batch["image"]
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    if mode == "d4":
        k = torch.randint(0, 4, (b,), generator=generator).tolist()
        flip = torch.randint(0, 2, (b,), generator=generator).tolist()
        if h != w:
            k = [2 * (v % 2) for v in k]
    else:  # flip: x flip, then a y flip = x flip + rotation by 180 degrees
        fx = torch.randint(0, 2, (b,), generator=generator).tolist()
        fy = torch.randint(0, 2, (b,), generator=generator).tolist()
        flip = [a ^ c for a, c in zip(fx, fy)]
        k = [2 * c for c in fy]
    out = []
    boxes = list(batch.get("boxes", [None] * b))
    for i in range(b):
        img = images[i]
        if flip[i]:
            img = torch.flip(img, dims=(-1,))
        if k[i]:
            img = torch.rot90(img, k[i], dims=(-2, -1))
        out.append(img)
        if boxes[i] is not None and len(boxes[i]):
            boxes[i] = d4_boxes(boxes[i], k[i], bool(flip[i]), h, w)
    batch = dict(batch)
    batch["image"] = torch.stack(out)
    if "boxes" in batch:
        batch["boxes"] = boxes
    return batch


# -- matching, completeness and purity -------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of ``x0, y0, x1, y1`` boxes."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance matrix (px) between the centres of ``x0, y0, x1, y1`` boxes."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    ca = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], 1)
    cb = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    return np.hypot(ca[:, None, 0] - cb[None, :, 0], ca[:, None, 1] - cb[None, :, 1])


def match_detections(det_boxes, det_scores, true_boxes, *, rule: str = "iou", iou: float = 0.5,
                     distance: float = 3.0, det_labels=None, true_labels=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one, score-ordered match of detections to true boxes in one image.

    Detections are taken from the highest score down; each takes the still unmatched true box that
    it overlaps most (``rule="iou"``, IoU >= ``iou``) or that lies closest (``rule="distance"``,
    centre distance <= ``distance`` px). With labels given, only boxes of the same class match.
    Because the order is by score, the matches of the detections above any score threshold are the
    ones this function gives for all detections.

    Returns
    -------
    det_match : ndarray of int
        Index of the matched true box per detection, -1 if unmatched.
    true_match : ndarray of int
        Index of the matching detection per true box, -1 if missed.
    quality : ndarray of float
        IoU (or centre distance) of each detection's match, NaN if unmatched.
    """
    det_boxes = np.asarray(det_boxes, dtype=float).reshape(-1, 4)
    true_boxes = np.asarray(true_boxes, dtype=float).reshape(-1, 4)
    scores = np.asarray(det_scores, dtype=float).reshape(-1)
    nd, nt = len(det_boxes), len(true_boxes)
    det_match = np.full(nd, -1, dtype=np.int64)
    true_match = np.full(nt, -1, dtype=np.int64)
    quality = np.full(nd, np.nan)
    if nd == 0 or nt == 0:
        return det_match, true_match, quality
    if rule == "iou":
        q = box_iou(det_boxes, true_boxes)
        ok = q >= iou
        key = -q  # prefer the largest IoU
    elif rule == "distance":
        q = centre_distance(det_boxes, true_boxes)
        ok = q <= distance
        key = q  # prefer the closest
    else:
        raise ValueError(f"match rule must be 'iou' or 'distance', got {rule!r}")
    if det_labels is not None and true_labels is not None:
        ok &= np.asarray(det_labels).reshape(-1, 1) == np.asarray(true_labels).reshape(1, -1)
    taken = np.zeros(nt, dtype=bool)
    for d in np.argsort(-scores, kind="stable"):
        cand = np.flatnonzero(ok[d] & ~taken)
        if cand.size == 0:
            continue
        j = int(cand[np.argmin(key[d, cand])])
        det_match[d], true_match[j], quality[d] = j, d, q[d, j]
        taken[j] = True
    return det_match, true_match, quality


def completeness_purity(true_match_score: np.ndarray, det_scores: np.ndarray, det_matched: np.ndarray,
                        thresholds) -> Table:
    """Completeness, purity and F1 against the score threshold.

    Parameters
    ----------
    true_match_score : ndarray
        Per true box, the score of the detection matched to it (NaN or -inf when missed), from one
        score-ordered match of all detections (:func:`match_detections`).
    det_scores, det_matched : ndarray
        Per detection, its score and whether it matched a true box.
    thresholds : array-like
        Score thresholds.

    Returns
    -------
    astropy.table.Table
        ``score_threshold``, ``n_true``, ``n_detected`` (score >= threshold), ``n_matched``,
        ``completeness`` (n_matched / n_true), ``purity`` (n_matched / n_detected, NaN without detections)
        and ``f1`` (2 n_matched / (n_true + n_detected)).
    """
    t = np.asarray(thresholds, dtype=float)
    tms = np.nan_to_num(np.asarray(true_match_score, dtype=float), nan=-np.inf)
    ds = np.asarray(det_scores, dtype=float)
    dm = np.asarray(det_matched, dtype=bool)
    n_true = len(tms)
    n_det = (ds[None, :] >= t[:, None]).sum(axis=1)
    n_match_det = ((ds[None, :] >= t[:, None]) & dm[None, :]).sum(axis=1)
    n_match_true = (tms[None, :] >= t[:, None]).sum(axis=1)  # equal to n_match_det: the match is one-to-one
    with np.errstate(invalid="ignore", divide="ignore"):
        completeness = np.where(n_true > 0, n_match_true / max(n_true, 1), np.nan)
        purity = np.where(n_det > 0, n_match_det / np.maximum(n_det, 1), np.nan)
        f1 = np.where(n_true + n_det > 0, 2 * n_match_det / np.maximum(n_true + n_det, 1), np.nan)
    return Table({"score_threshold": t, "n_true": np.full(len(t), n_true), "n_detected": n_det,
                  "n_matched": n_match_det, "completeness": completeness, "purity": purity, "f1": f1},
                 meta={"description": "completeness = matched true boxes / true boxes; purity = matched detections "
                                      "/ detections with score >= score_threshold; one-to-one, score-ordered match"})


@functools.lru_cache(maxsize=None)
def _metric_classes():
    """torchmetrics classes, defined on first use (importing torchmetrics takes seconds)."""
    from torchmetrics import Metric
    from torchmetrics.detection import MeanAveragePrecision

    class DetectionMAP(MeanAveragePrecision):
        """torchmetrics' COCO mAP (pycocotools backend) reduced to ``map``, ``map_50``, ``map_75``, ``mar_100``."""

        def compute(self):
            out = super().compute()
            return {k: out[k] for k in MAP_KEYS}

    class CompletenessPurity(Metric):
        """Completeness, purity and F1 at one score threshold and match rule (see :func:`match_detections`)."""

        full_state_update = False
        higher_is_better = True

        def __init__(self, score_threshold: float, rule: str, iou: float, distance: float, class_aware: bool, **kw):
            super().__init__(**kw)
            self.score_threshold, self.rule, self.iou, self.distance = score_threshold, rule, iou, distance
            self.class_aware = class_aware
            for name in ("n_true", "n_detected", "n_matched"):
                self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

        def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
            for p, t in zip(preds, target):
                keep = p["scores"] >= self.score_threshold
                boxes, scores = p["boxes"][keep].detach().cpu().numpy(), p["scores"][keep].detach().cpu().numpy()
                labels = p["labels"][keep].cpu().numpy() if self.class_aware else None
                tlabels = t["labels"].cpu().numpy() if self.class_aware else None
                dm, _, _ = match_detections(boxes, scores, t["boxes"].detach().cpu().numpy(), rule=self.rule,
                                            iou=self.iou, distance=self.distance, det_labels=labels, true_labels=tlabels)
                self.n_true += len(t["boxes"])
                self.n_detected += len(boxes)
                self.n_matched += int((dm >= 0).sum())

        def compute(self):
            m, nt, nd = self.n_matched.float(), self.n_true.float(), self.n_detected.float()
            nan = torch.tensor(float("nan"), device=m.device)
            return {"completeness": m / nt if nt > 0 else nan, "purity": m / nd if nd > 0 else nan,
                    "f1": 2 * m / (nt + nd) if nt + nd > 0 else nan}

    return DetectionMAP, CompletenessPurity


def _column(table: Table, name: str, dtype=float, fill=np.nan) -> np.ndarray:
    """A column as a plain array with masked entries filled (``fill``); missing column: all ``fill``."""
    if name not in table.colnames:
        return np.full(len(table), fill, dtype=dtype if dtype is not str else object)
    col = table[name]
    if dtype is str:
        values = np.asarray(col.filled(fill) if hasattr(col, "mask") else col).astype(str)
        return values.astype(object)
    if hasattr(col, "mask"):
        return np.ma.asarray(col).astype(dtype).filled(fill)
    return np.asarray(col, dtype=dtype)


# -- the task -------------------------------------------------------------------------------------------


class DetectionTask(Task):
    """Detect objects (boxes and classes) with Faster R-CNN on any backbone; mAP, completeness and purity."""

    name = "detection"
    Config = DetectionTaskConfig
    kind = "detection"
    default_dataset = "image_boxes"
    collate_fn = staticmethod(list_collate)
    monitor = "val_map_50"
    monitor_mode = "max"
    headline_metric = "f1"
    higher_is_better = True

    def __init__(self, config: DetectionTaskConfig, info: DatasetInfo):
        super().__init__(config, info)
        if not info.classes:
            raise ConfigError(f"task '{self.name}' needs a data set with box classes (info.classes); this one has none: "
                              f"use a detection data set such as image_boxes")
        self.classes = list(info.classes)
        self._examples: dict[int, np.ndarray] = {}

    # -- data ------------------------------------------------------------------------------------------
    def check_data(self, dataset: ImageDataset, split: str) -> None:
        """Every sample of train/val/test has valid ``boxes`` and ``labels`` (predict: nothing to check).

        Raises
        ------
        DataError
            A sample without ``boxes``, a box outside the image or with ``x1 <= x0`` / ``y1 <= y0``, or a
            label outside ``0 .. n_classes - 1``; the message names the sample's catalogue id.
        """
        if split == "predict" or len(dataset) == 0:
            return
        ids = None
        try:
            cat = dataset.catalog()
            ids = np.asarray(cat["id"]) if "id" in cat.colnames else None
        except Exception:  # noqa: BLE001 -- a catalogue is only for naming the bad sample
            ids = None
        source = getattr(dataset, "box_annotations", None)
        if callable(source):
            boxes_list, labels_list, (height, width) = source()
            items = ((i, b, lab, height, width) for i, (b, lab) in enumerate(zip(boxes_list, labels_list)))
        else:
            items = self._sample_items(dataset, split, ids)
        n = len(self.classes)
        for i, boxes, labels, height, width in items:
            name = f"{split} sample {i}" + (f" (id {ids[i]})" if ids is not None and i < len(ids) else "")
            b = np.asarray(boxes, dtype=float).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
            lab = np.asarray(labels).reshape(-1)
            if len(lab) != len(b):
                raise DataError(f"{name} has {len(b)} boxes but {len(lab)} labels; give one label per box")
            if not np.all(np.isfinite(b)):
                raise DataError(f"{name} has a box with NaN/inf coordinates; fix or remove that box in the boxes table")
            bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
            if bad.size:
                raise DataError(f"{name}: box {np.round(b[bad[0]], 2).tolist()} has x1 <= x0 or y1 <= y0; boxes are "
                                f"x0, y0, x1, y1 with x1 > x0 and y1 > y0 (fix the boxes table)")
            tol = 1e-3
            out = np.flatnonzero((b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > width + tol) | (b[:, 3] > height + tol))
            if out.size:
                raise DataError(f"{name}: box {np.round(b[out[0]], 2).tolist()} lies outside the {width} x {height} px "
                                f"image; boxes are 0-based pixel edges within [0, width] x [0, height]: fix or clip "
                                f"them (1-based tables: set pixel_origin: 1)")
            wrong = np.flatnonzero((lab < 0) | (lab >= n))
            if wrong.size:
                raise DataError(f"{name}: label {int(lab[wrong[0]])} is not a class index 0..{n - 1} (classes "
                                f"{self.classes}); labels are 0-based indices into the data set's classes")

    def _sample_items(self, dataset, split, ids):
        for i in range(len(dataset)):
            s = dataset[i]
            if "boxes" not in s or "labels" not in s:
                name = f"{split} sample {i}" + (f" (id {ids[i]})" if ids is not None and i < len(ids) else "")
                raise DataError(f"{name} of data set '{dataset.name}' has no 'boxes'/'labels'; the detection task "
                                f"needs them in every train/val/test sample: use a detection data set (e.g. image_boxes)")
            h, w = s["image"].shape[-2:]
            yield i, np.asarray(s["boxes"]), np.asarray(s["labels"]), int(h), int(w)

    def batch_augment(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        return augment_detection_batch(batch, self.config.augment, generator)

    # -- model ------------------------------------------------------------------------------------------
    def build_model(self, backbone: Backbone, head: nn.Module) -> nn.Module:
        """A :class:`Detector` around ``backbone`` (the head is not used: Faster R-CNN has its own)."""
        return Detector(backbone, len(self.classes), self.config, len(self.info.bands))

    @staticmethod
    def _targets(batch: dict[str, Any], device) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4),
                 "labels": torch.as_tensor(lab, dtype=torch.int64, device=device).reshape(-1)}
                for b, lab in zip(batch["boxes"], batch["labels"])]

    def training_loss(self, model: nn.Module, batch: dict[str, Any]):
        """Sum of torchvision's four losses; ``outputs`` holds each of them (detached)."""
        images = batch["image"]
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in self._targets(batch, images.device)]
        losses = model(images, targets)
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    def _detect(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        was_training = model.training
        if was_training:
            model.eval()
        try:
            with torch.no_grad():
                dets = model(images)
        finally:
            if was_training:
                model.train()
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in dets]

    def postprocess_detections(self, detections: list[dict[str, torch.Tensor]],
                               batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Filter or merge each image's detections before they are matched, scored or written.

        Called by :meth:`validation_step` and :meth:`predict_batch` with one dict per image
        (``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``labels`` ``[N]`` 0-based) and the batch they came
        from (per-sample keys such as a host mask are there). The default returns them unchanged; a
        subclass (e.g. a science plugin's NMS, score cut and host mask) returns a new list of the same
        kind.
        """
        return detections

    def validation_step(self, model: nn.Module, batch: dict[str, Any]):
        """``(None, (detections, targets))``: a detector in evaluation mode returns boxes, not losses."""
        dets = self.postprocess_detections(self._detect(model, batch["image"]), batch)
        return None, (dets, self._targets(batch, batch["image"].device))

    def make_metrics(self):
        """``map``, ``map_50``, ``map_75``, ``mar_100`` (COCO, torchmetrics) and ``completeness``, ``purity``, ``f1``."""
        import torchmetrics

        DetectionMAP, CompletenessPurity = _metric_classes()
        c = self.config
        return torchmetrics.MetricCollection({
            "map": DetectionMAP(iou_type="bbox", backend="pycocotools"),
            "cp": CompletenessPurity(c.score_threshold, c.match, c.match_iou, c.match_distance, c.class_aware),
        })

    def update_metrics(self, metrics, outputs, batch) -> None:
        dets, targets = outputs
        metrics.update(dets, targets)

    # -- prediction -----------------------------------------------------------------------------------------
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per detection: ``index, det_id, x0, y0, x1, y1, x_centre, y_centre, score, pred_class,
        above_threshold`` (box edges in px; centres in the 0-based pixel-centre convention of catalogues)."""
        dets = self.postprocess_detections(self._detect(model, batch["image"]), batch)
        rows: list[dict[str, Any]] = []
        images = batch["image"]
        for i, (idx, d) in enumerate(zip(batch["index"].tolist(), dets)):
            if len(self._examples) < self.config.n_overlay or idx in self._examples:
                self._examples[int(idx)] = images[i].detach().float().cpu().numpy()
            boxes = d["boxes"].detach().float().cpu().numpy()
            scores = d["scores"].detach().float().cpu().numpy()
            labels = d["labels"].cpu().numpy()
            for rank, j in enumerate(np.argsort(-scores, kind="stable")):
                x0, y0, x1, y1 = (float(v) for v in boxes[j])
                rows.append({"index": int(idx), "det_id": rank,
                             "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                             "x_centre": 0.5 * (x0 + x1) - 0.5, "y_centre": 0.5 * (y0 + y1) - 0.5,
                             "score": float(scores[j]), "pred_class": self.classes[int(labels[j])],
                             "above_threshold": bool(scores[j] >= self.config.score_threshold)})
        return rows

    def truth_rows(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per true box: ``index, true_id, x0, y0, x1, y1, x_centre, y_centre, true_class``.

        A sample may carry ``box_meta``, a dict of per-box values (``{"flux_ratio": [N]}``); each
        becomes a column of its own (e.g. for completeness as a function of brightness).
        """
        if "boxes" not in batch:
            return []
        rows = []
        metas = batch.get("box_meta") or [None] * len(batch["boxes"])
        for idx, boxes, labels, meta in zip(batch["index"].tolist(), batch["boxes"], batch["labels"], metas):
            b = torch.as_tensor(boxes).reshape(-1, 4).float().cpu().numpy()
            lab = torch.as_tensor(labels).reshape(-1).cpu().numpy()
            extra = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).reshape(-1)
                     for k, v in (meta or {}).items()}
            for k, v in extra.items():
                if len(v) != len(b):
                    raise DataError(f"sample {int(idx)}: box_meta '{k}' has {len(v)} values for {len(b)} boxes; give "
                                    f"one value per box")
            for j in range(len(b)):
                x0, y0, x1, y1 = (float(v) for v in b[j])
                row = {"index": int(idx), "true_id": j, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                       "x_centre": 0.5 * (x0 + x1) - 0.5, "y_centre": 0.5 * (y0 + y1) - 0.5,
                       "true_class": self.classes[int(lab[j])]}
                row.update({k: v[j].item() for k, v in extra.items()})
                rows.append(row)
        return rows

    # -- evaluation -----------------------------------------------------------------------------------------
    def _match_all(self, predictions: Table, truth: Table) -> dict[str, Any]:
        """Match every image's detections to its true boxes (one pass, score-ordered)."""
        c = self.config
        index = np.asarray(predictions["index"], dtype=np.int64) if len(predictions) else np.zeros(0, np.int64)
        has_det = ~np.isnan(_column(predictions, "score")) if len(predictions) else np.zeros(0, bool)
        det_rows = np.flatnonzero(has_det)
        d_index = index[det_rows]
        d_boxes = np.stack([_column(predictions, k)[det_rows] for k in ("x0", "y0", "x1", "y1")], 1) \
            if len(det_rows) else np.zeros((0, 4))
        d_scores = _column(predictions, "score")[det_rows] if len(det_rows) else np.zeros(0)
        d_class = _column(predictions, "pred_class", str, "")[det_rows] if len(det_rows) else np.zeros(0, object)
        t_index = np.asarray(truth["index"], dtype=np.int64) if len(truth) else np.zeros(0, np.int64)
        t_boxes = np.stack([np.asarray(truth[k], dtype=float) for k in ("x0", "y0", "x1", "y1")], 1) \
            if len(truth) else np.zeros((0, 4))
        t_class = np.asarray(truth["true_class"], dtype=object) if len(truth) else np.zeros(0, object)
        d_match = np.full(len(det_rows), -1, dtype=np.int64)  # row of truth
        d_quality = np.full(len(det_rows), np.nan)
        t_match = np.full(len(t_index), -1, dtype=np.int64)  # position in det_rows
        for img in np.union1d(np.unique(d_index), np.unique(t_index)):
            di = np.flatnonzero(d_index == img)
            ti = np.flatnonzero(t_index == img)
            dm, tm, q = match_detections(d_boxes[di], d_scores[di], t_boxes[ti], rule=c.match, iou=c.match_iou,
                                         distance=c.match_distance,
                                         det_labels=d_class[di] if c.class_aware else None,
                                         true_labels=t_class[ti] if c.class_aware else None)
            d_match[di] = np.where(dm >= 0, ti[np.maximum(dm, 0)], -1) if len(ti) else -1
            d_quality[di] = q
            t_match[ti] = np.where(tm >= 0, di[np.maximum(tm, 0)], -1) if len(di) else -1
        t_score = np.where(t_match >= 0, d_scores[np.maximum(t_match, 0)] if len(d_scores) else np.nan, np.nan)
        return {"index": index, "det_rows": det_rows, "d_index": d_index, "d_boxes": d_boxes, "d_scores": d_scores,
                "d_class": d_class, "d_match": d_match, "d_quality": d_quality, "t_index": t_index,
                "t_boxes": t_boxes, "t_class": t_class, "t_match": t_match, "t_score": t_score}

    def _curve(self, m: dict[str, Any]) -> Table:
        thresholds = CURVE_THRESHOLDS[CURVE_THRESHOLDS >= self.config.box_score_thresh - 1e-9]
        return completeness_purity(m["t_score"], m["d_scores"], m["d_match"] >= 0, thresholds)

    def _map(self, m: dict[str, Any]) -> dict[str, float]:
        if len(m["t_index"]) == 0:
            return {k: float("nan") for k in MAP_KEYS}
        DetectionMAP, _ = _metric_classes()
        metric = DetectionMAP(iou_type="bbox", backend="pycocotools")
        cls_index = {name: i for i, name in enumerate(self.classes)}
        preds, targets = [], []
        for img in np.unique(m["index"]):
            di = m["d_index"] == img
            ti = m["t_index"] == img
            preds.append({"boxes": torch.as_tensor(m["d_boxes"][di], dtype=torch.float32).reshape(-1, 4),
                          "scores": torch.as_tensor(m["d_scores"][di], dtype=torch.float32),
                          "labels": torch.as_tensor([cls_index.get(str(v), 0) for v in m["d_class"][di]], dtype=torch.int64)})
            targets.append({"boxes": torch.as_tensor(m["t_boxes"][ti], dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.as_tensor([cls_index.get(str(v), 0) for v in m["t_class"][ti]], dtype=torch.int64)})
        metric.update(preds, targets)
        return {k: float(v) for k, v in metric.compute().items()}

    def evaluate(self, predictions: Table, truth: Table) -> tuple[dict[str, Any], dict[str, Table]]:
        """Completeness, purity, F1 (at ``score_threshold``), their curves, COCO mAP, per-image counts.

        ``predictions`` is the catalogue left-joined with the detection rows (one row per detection;
        an image without detections keeps one row whose detection columns are masked); ``truth`` has
        one row per true box. A boolean column ``matched`` (masked where there is no detection) is
        added to ``predictions``.

        Returns
        -------
        metrics : dict
            ``completeness``, ``purity``, ``f1``, ``n_images``, ``n_true``, ``n_detected``, ``n_matched``,
            ``score_threshold``, ``match_rule``, ``map``, ``map_50``, ``map_75``, ``mar_100``,
            ``best_f1``, ``best_f1_threshold``, ``completeness_at_best_f1``, ``purity_at_best_f1``.
        tables : dict of Table
            ``completeness_purity`` (the curves), ``per_image`` (``n_true``, ``n_detected``,
            ``n_matched`` per image, images without detections included) and ``truth_matches`` (each
            true box, whether and by which detection it was found).
        """
        c = self.config
        m = self._match_all(predictions, truth)
        thr = c.score_threshold
        above = m["d_scores"] >= thr
        matched = m["d_match"] >= 0
        n_true, n_det, n_match = len(m["t_index"]), int(above.sum()), int((above & matched).sum())
        curve = self._curve(m)
        f1_values = np.nan_to_num(np.asarray(curve["f1"], dtype=float), nan=-1.0)
        best = int(np.argmax(f1_values)) if len(curve) else 0
        metrics: dict[str, Any] = {
            "n_images": int(len(np.unique(m["index"]))), "n_true": n_true, "n_detected": n_det, "n_matched": n_match,
            "completeness": n_match / n_true if n_true else float("nan"),
            "purity": n_match / n_det if n_det else float("nan"),
            "f1": 2 * n_match / (n_true + n_det) if n_true + n_det else float("nan"),
            "score_threshold": thr, "match_rule": c.match_rule(), "match": c.match,
            "match_iou" if c.match == "iou" else "match_distance": c.match_iou if c.match == "iou" else c.match_distance,
        }
        metrics.update(self._map(m))
        if len(curve):
            metrics.update(best_f1=float(curve["f1"][best]), best_f1_threshold=float(curve["score_threshold"][best]),
                           completeness_at_best_f1=float(curve["completeness"][best]),
                           purity_at_best_f1=float(curve["purity"][best]))
        # per image (every image of the catalogue, with or without detections or true boxes)
        images = np.unique(m["index"])
        first = {int(v): i for i, v in reversed(list(enumerate(m["index"])))}
        per_image = Table({"index": images})
        if "id" in predictions.colnames:
            per_image["id"] = [predictions["id"][first[int(v)]] for v in images]
        per_image["n_true"] = [int((m["t_index"] == v).sum()) for v in images]
        per_image["n_detected"] = [int(((m["d_index"] == v) & above).sum()) for v in images]
        per_image["n_matched"] = [int(((m["d_index"] == v) & above & matched).sum()) for v in images]
        per_image["n_detected_all"] = [int((m["d_index"] == v).sum()) for v in images]
        per_image.meta["description"] = (f"per test image: true boxes, detections with score >= {thr:g} and those "
                                         f"matched ({c.match_rule()}); n_detected_all counts every detection")
        truth_matches = truth.copy() if len(truth) else Table({"index": np.zeros(0, np.int64)})
        if len(truth):
            det_id = _column(predictions, "det_id", float)[m["det_rows"]] if len(m["det_rows"]) else np.zeros(0)
            tm = m["t_match"]
            truth_matches["found"] = (tm >= 0) & (m["t_score"] >= thr)
            truth_matches["det_id"] = MaskedColumn(np.where(tm >= 0, det_id[np.maximum(tm, 0)] if len(det_id) else -1, -1)
                                                   .astype(np.int64), mask=tm < 0)
            truth_matches["score"] = MaskedColumn(np.nan_to_num(m["t_score"], nan=0.0), mask=tm < 0)
            q = m["d_quality"][np.maximum(tm, 0)] if len(m["d_quality"]) else np.zeros(len(tm))
            truth_matches["iou" if c.match == "iou" else "distance"] = MaskedColumn(np.nan_to_num(q), mask=tm < 0)
            truth_matches.meta["description"] = (f"each true box, the detection matched to it at any score ({c.match_rule()}) "
                                                 f"and found = matched with score >= {thr:g}")
        if len(predictions):
            flags = np.zeros(len(predictions), dtype=bool)
            flags[m["det_rows"]] = matched
            mask = np.ones(len(predictions), dtype=bool)
            mask[m["det_rows"]] = False
            predictions["matched"] = MaskedColumn(flags, mask=mask)
        curve.meta["match_rule"] = c.match_rule()
        return metrics, {"completeness_purity": curve, "per_image": per_image, "truth_matches": truth_matches}

    # -- outputs ----------------------------------------------------------------------------------------------
    def plots(self, predictions: Table, truth: Table, metrics: dict[str, Any], history: Table,
              plot_dir: Path) -> list[Path]:
        """``completeness_purity.png`` and ``detections_overlay.png`` (truth green, detections orange)."""
        from ..plots import completeness_purity_plot, detection_overlay_plot

        out = []
        m = self._match_all(predictions, truth)
        if len(m["t_index"]) or len(m["d_scores"]):
            out.append(completeness_purity_plot(
                self._curve(m), plot_dir / "completeness_purity.png", score_threshold=self.config.score_threshold,
                title=f"Completeness and purity ({self.config.match_rule()})"))
        if self._examples:
            panels = []
            for idx in sorted(self._examples)[: self.config.n_overlay]:
                di = (m["d_index"] == idx) & (m["d_scores"] >= self.config.score_threshold)
                panels.append({"image": self._examples[idx], "truth": m["t_boxes"][m["t_index"] == idx],
                               "detections": m["d_boxes"][di], "scores": m["d_scores"][di], "title": f"index {idx}"})
            out.append(detection_overlay_plot(panels, plot_dir / "detections_overlay.png",
                                              title=f"Test images: truth (green), detections with score >= "
                                                    f"{self.config.score_threshold:g} (orange)"))
        return out  # the engine draws the training curves

    def headline(self, metrics: dict[str, Any]) -> str:
        """``test completeness 0.85, purity 0.82 (IoU >= 0.3, score >= 0.5), F1 0.83, mAP50 0.80``."""
        if "completeness" not in metrics:
            return ""

        def f(key):
            v = metrics.get(key)
            return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.3g}"

        return (f"test completeness {f('completeness')}, purity {f('purity')} ({self.config.match_rule()}, score >= "
                f"{self.config.score_threshold:g}), F1 {f('f1')}, mAP50 {f('map_50')}")

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        c = self.config
        if "completeness" not in metrics:
            return "No test images with true boxes: detections only.\n"

        def f(key, fmt=".3f"):
            v = metrics.get(key)
            return "n/a" if v is None or not np.isfinite(float(v)) else format(float(v), fmt)

        lines = [
            f"Test set: {metrics.get('n_images')} images, {metrics.get('n_true')} true boxes, "
            f"{metrics.get('n_detected')} detections with score >= {c.score_threshold:g}.",
            "",
            f"Match rule: one-to-one, highest score first, {c.match_rule()}"
            f"{', same class only' if c.class_aware else ', any class'}.",
            "Completeness = matched true boxes / all true boxes; purity = matched detections / detections above "
            "the score threshold.",
            "",
            f"- completeness: **{f('completeness')}**, purity: **{f('purity')}**, F1: {f('f1')} "
            f"(score >= {c.score_threshold:g})",
            f"- best F1 {f('best_f1')} at score >= {f('best_f1_threshold', '.2f')} (completeness "
            f"{f('completeness_at_best_f1')}, purity {f('purity_at_best_f1')})",
            f"- COCO mAP (IoU 0.50:0.95) {f('map')}, mAP50 {f('map_50')}, mAP75 {f('map_75')}, mAR@100 {f('mar_100')}",
        ]
        curve = tables.get("completeness_purity")
        if curve is not None and len(curve):
            lines += ["", "| score >= | detections | matched | completeness | purity | F1 |", "|---|---|---|---|---|---|"]
            for r in curve:
                if abs(round(float(r["score_threshold"]) * 10) - float(r["score_threshold"]) * 10) < 1e-6:
                    lines.append(f"| {r['score_threshold']:.1f} | {r['n_detected']} | {r['n_matched']} | "
                                 f"{r['completeness']:.3f} | {r['purity']:.3f} | {r['f1']:.3f} |")
        return "\n".join(lines) + "\n"

    def output_files(self) -> dict[str, str]:
        return {
            "predictions.ecsv": "one row per detection (catalogue columns, det_id, box x0 y0 x1 y1, x_centre, "
                                "y_centre, score, pred_class, above_threshold, matched); an image without "
                                "detections keeps one row with masked detection columns",
            "tables/completeness_purity.ecsv": "completeness, purity and F1 against the score threshold",
            "tables/per_image.ecsv": "true boxes, detections and matches per test image (all images)",
            "tables/truth_matches.ecsv": "each true box and the detection that found it",
            "plots/completeness_purity.png": "completeness and purity curves",
            "plots/detections_overlay.png": "test images with true boxes and detections",
        }
