"""The ``clumps`` task: giant star-forming clump detection as in Popp et al. (2024).

:class:`ClumpDetectionTask` is the core ``detection`` task (torchvision Faster R-CNN on any
registry backbone; completeness, purity, their curves and COCO mAP) with the Clump Scout
reference pipeline's post-processing and the outputs an astronomer works with:

* **post-processing** (:mod:`astrotl_clumps.postprocess`, ``task.postprocess``), applied to every
  image's detections before they are matched, scored or written -- in validation as in the test
  and in ``astrotl predict``: NMS at IoU 0.2, a score cut at 0.3, dropping detections whose centre
  lies outside the host galaxy, merging detections closer than about one PSF FWHM (3.54 px);
* **completeness by brightness**: completeness in bins of a per-box truth value (``flux_ratio``,
  the clump's r-band flux relative to its host, which ``clumps_sim`` gives per box in
  ``box_meta``), as a table and a plot;
* **a detections catalogue** ``tables/detections.ecsv``: image id, box, centre, score, class,
  matched, and RA/Dec from each image's WCS when the data set gives one (sample key ``wcs``);
* **DS9 region files** per test image in ``regions/``: ``<id>.reg`` in image coordinates and,
  with a WCS, ``<id>_sky.reg`` in ICRS (the ``regions`` package);
* **overlays**: a grid of test images and one larger PNG per image (``plots/overlays/``) with the
  true boxes, the detections and the host mask's outline.

Per-sample keys the task uses beyond the detection sample (the evaluation splits of
``clumps_sim`` give all three): ``mask`` (bool ``[H, W]``, the host's segmentation map) or
``host_ellipse`` (``x, y, a, b, theta_deg``), ``wcs`` (an ``astropy.wcs.WCS``) and ``box_meta``
(``{"flux_ratio": [N]}``).

Boxes of the clumps data sets are in 0-based **pixel-centre** coordinates (pixel ``(0, 0)`` is
centred on ``x = y = 0``), so a box's centre ``((x0 + x1) / 2, (y0 + y1) / 2)`` is the clump's
position in the WCS's 0-based pixel frame; ``x_centre``, ``y_centre``, RA/Dec and the region
files all use it.

YAML::

    task:
      name: clumps
      anchor_sizes: [[8, 12], [12, 16], [16, 24]]
      score_threshold: 0.3          # completeness / purity are quoted here (>= the score cut)
      match: iou
      match_iou: 0.3
      postprocess: {nms_iou: 0.2, score_threshold: 0.3, mask_outside_host: true, merge_distance_px: 3.54}
      brightness_bins: [0.01, 0.02, 0.035, 0.06, 0.12]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator

from astrotl.errors import ConfigError, DataError
from astrotl.interfaces import DatasetInfo, ImageDataset
from astrotl.tasks.detection import DetectionTask, DetectionTaskConfig

from .postprocess import PostprocessConfig, postprocess, write_ds9_regions

log = logging.getLogger(__name__)

#: Sample keys of the evaluation splits that training does not use (stripped from training samples).
EVAL_KEYS = ("mask", "host_ellipse", "wcs", "box_meta")


class ClumpsTaskConfig(DetectionTaskConfig):
    """Options of :class:`ClumpDetectionTask`: the detection task's plus post-processing and outputs."""

    score_threshold: float = Field(0.3, ge=0, le=1, description="score at which completeness, purity and F1 are "
                                                                "quoted (at least the post-processing score cut)")
    postprocess: PostprocessConfig = Field(
        PostprocessConfig(), description="the reference pipeline's post-processing of each image's detections "
                                         "(null switches a step off): NMS IoU, score cut, host mask, merge distance")
    brightness_column: str = Field("flux_ratio", description="per-box truth value (sample key box_meta) for "
                                                             "completeness by brightness")
    brightness_bins: list[float] = Field(
        [0.01, 0.02, 0.035, 0.06, 0.12], description="bin edges of the brightness value (clump / host r flux); "
                                                     "values outside get open-ended bins")
    regions: bool = Field(True, description="write DS9 region files per test image into regions/")

    @model_validator(mode="after")
    def _check_clumps(self):
        cut = self.postprocess.score_threshold
        if cut is not None and self.score_threshold < cut - 1e-12:
            raise ValueError(f"score_threshold {self.score_threshold:g} is below the post-processing score cut "
                             f"{cut:g}, which already removed those detections; use score_threshold >= {cut:g} or "
                             f"lower postprocess.score_threshold")
        edges = self.brightness_bins
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"brightness_bins {edges} must be at least two increasing edges")
        return self


def _strip_eval_keys(sample: dict[str, Any]) -> dict[str, Any]:
    """A training sample without the evaluation-only keys (masks and WCS do not follow the augmentation)."""
    if not any(k in sample for k in EVAL_KEYS):
        return sample
    return {k: v for k, v in sample.items() if k not in EVAL_KEYS}


def _wilson(k: int, n: int, z: float = 1.0) -> tuple[float, float]:
    """Wilson score interval of a binomial fraction ``k / n`` (``z = 1``: 68 %)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def completeness_by_value(values: np.ndarray, found: np.ndarray, edges, classes: np.ndarray | None = None,
                          name: str = "flux_ratio") -> Table:
    """Completeness of true boxes in bins of a per-box value.

    Parameters
    ----------
    values : ndarray
        The value per true box (e.g. the clump's flux ratio to its host); NaN values are left out.
    found : ndarray of bool
        Whether each true box was found (matched by a detection above the score threshold).
    edges : sequence of float
        Increasing bin edges; values below the first or from the last edge up get open-ended bins
        (only when such values exist).
    classes : ndarray of str, optional
        True class per box: adds ``n_true_<class>`` and ``completeness_<class>`` columns.
    name : str
        The value's name, used in the column names ``<name>_min`` and ``<name>_max``.

    Returns
    -------
    astropy.table.Table
        One row per bin: ``<name>_min``, ``<name>_max``, ``n_true``, ``n_found``, ``completeness`` and
        its 68 % Wilson interval ``completeness_lo``, ``completeness_hi``.

    Examples
    --------
    >>> t = completeness_by_value(np.array([0.01, 0.02, 0.05, 0.1]), np.array([False, True, True, True]),
    ...                           [0.0, 0.03, 0.2])
    >>> list(t["completeness"])
    [0.5, 1.0]
    """
    v = np.asarray(values, dtype=float)
    f = np.asarray(found, dtype=bool)
    ok = np.isfinite(v)
    e = [float(x) for x in edges]
    lows = ([-np.inf] if (ok & (v < e[0])).any() else []) + e[:-1] + ([e[-1]] if (ok & (v >= e[-1])).any() else [])
    highs = ([e[0]] if lows and lows[0] == -np.inf else []) + e[1:] + ([np.inf] if (ok & (v >= e[-1])).any() else [])
    rows = []
    cls_names = sorted(set(np.asarray(classes).astype(str))) if classes is not None and len(classes) else []
    for lo, hi in zip(lows, highs):
        sel = ok & (v >= lo) & (v < hi)
        n, k = int(sel.sum()), int((sel & f).sum())
        c_lo, c_hi = _wilson(k, n)
        row = {f"{name}_min": lo, f"{name}_max": hi, "n_true": n, "n_found": k,
               "completeness": k / n if n else float("nan"), "completeness_lo": c_lo, "completeness_hi": c_hi}
        for c in cls_names:
            cs = sel & (np.asarray(classes).astype(str) == c)
            row[f"n_true_{c}"] = int(cs.sum())
            row[f"completeness_{c}"] = int((cs & f).sum()) / int(cs.sum()) if cs.any() else float("nan")
        rows.append(row)
    names = [f"{name}_min", f"{name}_max", "n_true", "n_found", "completeness", "completeness_lo", "completeness_hi"]
    names += [f"{p}_{c}" for c in cls_names for p in ("n_true", "completeness")]
    if not rows:
        return Table(names=names, dtype=[float, float, int, int, float, float, float] + [int, float] * len(cls_names))
    t = Table(rows=[[r[k] for k in names] for r in rows], names=names)
    t.meta["description"] = (f"completeness of the true boxes in bins of {name} (found = matched by a detection above "
                             f"the score threshold); completeness_lo/hi: 68 % Wilson interval")
    return t


class ClumpDetectionTask(DetectionTask):
    """Detect giant star-forming clumps (Faster R-CNN) with Clump Scout post-processing, catalogues, DS9 regions."""

    name = "clumps"
    Config = ClumpsTaskConfig
    default_dataset = "clumps_sim"

    def __init__(self, config: ClumpsTaskConfig, info: DatasetInfo):
        super().__init__(config, info)
        self._wcs: dict[int, Any] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._ellipses: dict[int, tuple[float, ...]] = {}
        self._tables: dict[str, Table] | None = None
        self._missing_mask_logged = False

    # -- data ------------------------------------------------------------------------------------------
    def check_data(self, dataset: ImageDataset, split: str) -> None:
        """The detection checks, and a host mask in the evaluation splits when the host-mask step is on.

        Raises
        ------
        ConfigError
            ``postprocess.mask_outside_host`` is true but the data set's samples have neither ``mask``
            nor ``host_ellipse``.
        """
        super().check_data(dataset, split)
        if split == "train" or len(dataset) == 0 or not self.config.postprocess.mask_outside_host:
            return
        sample = dataset[0]
        if "mask" not in sample and "host_ellipse" not in sample:
            raise ConfigError(f"task.postprocess.mask_outside_host is true but the {split} samples of data set "
                              f"'{getattr(dataset, 'name', '?')}' carry no host mask ('mask' or 'host_ellipse'); "
                              f"set task.postprocess.mask_outside_host: false")

    def train_transform(self):
        """Training samples lose the evaluation-only keys (``mask``, ``host_ellipse``, ``wcs``, ``box_meta``)."""
        return _strip_eval_keys

    # -- post-processing ---------------------------------------------------------------------------------
    def postprocess_detections(self, detections, batch):
        """NMS, score cut, host mask and merge (``task.postprocess``) on each image's detections."""
        cfg = self.config.postprocess
        masks = batch.get("mask")
        ellipses = batch.get("host_ellipse")
        out = []
        for i, det in enumerate(detections):
            kw: dict[str, Any] = {}
            if cfg.mask_outside_host:
                if masks is not None and masks[i] is not None:
                    kw["mask"] = masks[i]
                elif ellipses is not None and ellipses[i] is not None:
                    kw["ellipse"] = tuple(float(v) for v in torch.as_tensor(ellipses[i]).reshape(-1))
                else:
                    idx = int(batch["index"][i])
                    raise DataError(f"sample {idx} has no host mask ('mask' or 'host_ellipse') for "
                                    f"task.postprocess.mask_outside_host; give one or set "
                                    f"task.postprocess.mask_outside_host: false")
            out.append(postprocess(det, cfg, **kw))
        return out

    # -- prediction -----------------------------------------------------------------------------------------
    def predict_batch(self, model, batch):
        """The detection rows with pixel-centre ``x_centre``, ``y_centre`` and, with a WCS, ``det_ra``, ``det_dec``."""
        rows = super().predict_batch(model, batch)
        indices = [int(i) for i in batch["index"].tolist()]
        wcs_of = {i: w for i, w in zip(indices, batch.get("wcs") or [None] * len(indices)) if w is not None}
        self._wcs.update(wcs_of)
        for i, m in zip(indices, batch.get("mask") or [None] * len(indices)):
            if m is not None and i in self._examples:
                self._masks[i] = np.asarray(torch.as_tensor(m).cpu(), dtype=bool)
        for i, e in zip(indices, batch.get("host_ellipse") or [None] * len(indices)):
            if e is not None and i in self._examples:
                self._ellipses[i] = tuple(float(v) for v in torch.as_tensor(e).reshape(-1).cpu())
        for r in rows:
            r["x_centre"] = 0.5 * (r["x0"] + r["x1"])
            r["y_centre"] = 0.5 * (r["y0"] + r["y1"])
        for idx, w in wcs_of.items():
            mine = [r for r in rows if r["index"] == idx]
            if not mine:
                continue
            ra, dec = w.pixel_to_world_values(np.array([r["x_centre"] for r in mine]),
                                              np.array([r["y_centre"] for r in mine]))
            for r, a, d in zip(mine, np.atleast_1d(ra), np.atleast_1d(dec)):
                r["det_ra"], r["det_dec"] = float(a), float(d)
        return rows

    def truth_rows(self, batch):
        """True boxes with pixel-centre ``x_centre``, ``y_centre`` and the ``box_meta`` columns (``flux_ratio``)."""
        rows = super().truth_rows(batch)
        for r in rows:
            r["x_centre"] = 0.5 * (r["x0"] + r["x1"])
            r["y_centre"] = 0.5 * (r["y0"] + r["y1"])
        return rows

    # -- evaluation -----------------------------------------------------------------------------------------
    def postprocess_summary(self) -> str:
        """The post-processing steps in words."""
        p = self.config.postprocess
        steps = []
        if p.nms_iou is not None:
            steps.append(f"NMS at IoU {p.nms_iou:g} ({'across classes' if p.class_agnostic_nms else 'per class'})")
        if p.score_threshold is not None:
            steps.append(f"score cut >= {p.score_threshold:g}")
        if p.mask_outside_host:
            steps.append("detections centred outside the host mask dropped")
        if p.merge_distance_px is not None:
            steps.append(f"detections within {p.merge_distance_px:.2f} px merged (highest score kept)")
        return "; ".join(steps) if steps else "none"

    def detections_table(self, predictions: Table) -> Table:
        """The detections catalogue: one row per detection (images without detections are left out).

        Columns ``id`` (the image's catalogue id, when there is one), ``index``, ``det_id``, ``x0, y0,
        x1, y1`` (box, 0-based pixel-centre coordinates), ``x_centre, y_centre``, ``score``,
        ``pred_class``, ``above_threshold``, ``matched`` (when evaluated) and ``ra, dec`` (deg) when
        the image has a WCS.
        """
        if "score" not in predictions.colnames or len(predictions) == 0:
            return Table({"index": np.zeros(0, np.int64), "det_id": np.zeros(0, np.int64)})
        score = predictions["score"]
        has = ~np.asarray(score.mask, dtype=bool) if hasattr(score, "mask") else np.isfinite(np.asarray(score, float))
        sub = predictions[has]
        cols = [c for c in ("id", "index", "det_id", "x0", "y0", "x1", "y1", "x_centre", "y_centre", "score",
                            "pred_class", "above_threshold", "matched") if c in sub.colnames]
        out = Table()
        for c in cols:
            col = sub[c]
            out[c] = col.filled() if hasattr(col, "filled") and c not in ("matched",) else col
        for c in ("x0", "y0", "x1", "y1", "x_centre", "y_centre"):
            if c in out.colnames:
                out[c].unit = "pix"
        if "det_ra" in sub.colnames:
            from astropy.table import MaskedColumn

            for src, dst in (("det_ra", "ra"), ("det_dec", "dec")):
                col = sub[src]
                out[dst] = MaskedColumn(np.asarray(col, dtype=float), mask=getattr(col, "mask", None), unit="deg",
                                        description=f"{'RA' if dst == 'ra' else 'Dec'} of the box centre (ICRS, "
                                                    f"from the image's WCS)")
        out.meta["description"] = ("clump detections after post-processing: box x0, y0, x1, y1 and centre in 0-based "
                                   "pixel-centre coordinates (pixel (0, 0) is centred on x = y = 0); ra, dec from "
                                   "each image's WCS at the box centre")
        out.meta["postprocess"] = self.postprocess_summary()
        out.meta["score_threshold"] = self.config.score_threshold
        out.meta["match_rule"] = self.config.match_rule()
        return out

    def evaluate(self, predictions: Table, truth: Table):
        """The detection metrics and tables plus ``detections`` (the catalogue) and ``completeness_by_brightness``.

        The curves start at the post-processing score cut (there are no detections below it), and
        ``best_f1`` and its threshold are taken from there on. Metrics added: ``postprocess`` (the steps
        in words) and, with a brightness value per true box, ``completeness_<name>_lt_<edge>`` /
        ``completeness_<name>_ge_<edge>`` for the faintest and brightest bins.
        """
        metrics, tables = super().evaluate(predictions, truth)
        c = self.config
        metrics["postprocess"] = self.postprocess_summary()
        cut = c.postprocess.score_threshold
        curve = tables.get("completeness_purity")
        if cut is not None and curve is not None and len(curve):
            # below the post-processing score cut there are no detections: the curve starts at the cut
            curve = curve[np.asarray(curve["score_threshold"], dtype=float) >= cut - 1e-9]
            curve.meta["post_processing_score_cut"] = cut
            tables["completeness_purity"] = curve
            if len(curve):
                f1 = np.nan_to_num(np.asarray(curve["f1"], dtype=float), nan=-1.0)
                best = int(np.argmax(f1))
                metrics.update(best_f1=float(curve["f1"][best]),
                               best_f1_threshold=float(curve["score_threshold"][best]),
                               completeness_at_best_f1=float(curve["completeness"][best]),
                               purity_at_best_f1=float(curve["purity"][best]))
        tables["detections"] = self.detections_table(predictions)
        tm = tables.get("truth_matches")
        col = c.brightness_column
        if tm is not None and len(tm) and col in tm.colnames:
            values = np.ma.filled(np.ma.asarray(tm[col], dtype=float), np.nan)
            t = completeness_by_value(values, np.asarray(tm["found"], dtype=bool), c.brightness_bins,
                                      classes=np.asarray(tm["true_class"]).astype(str), name=col)
            t.meta["match_rule"] = c.match_rule()
            t.meta["score_threshold"] = c.score_threshold
            tables["completeness_by_brightness"] = t
            if len(t):
                metrics[f"completeness_{col}_lt_{t[f'{col}_max'][0]:g}"] = float(t["completeness"][0])
                metrics[f"completeness_{col}_ge_{t[f'{col}_min'][-1]:g}"] = float(t["completeness"][-1])
        self._tables = tables
        return metrics, tables

    # -- outputs ----------------------------------------------------------------------------------------------
    def plots(self, predictions: Table, truth: Table, metrics: dict[str, Any], history: Table,
              plot_dir: Path) -> list[Path]:
        """Curves, brightness completeness, an overlay grid, one overlay per shown image, and the DS9 regions.

        The region files are written to ``<run>/regions/`` (the folder next to ``plot_dir``).
        """
        from astrotl.plots import completeness_purity_plot, detection_overlay_plot

        tables = self._tables if self._tables is not None else self.evaluate(predictions.copy(), truth)[1]
        c = self.config
        out: list[Path] = []
        curve = tables.get("completeness_purity")
        if curve is not None and len(curve) and (len(truth) or "score" in predictions.colnames):
            out.append(completeness_purity_plot(
                curve, plot_dir / "completeness_purity.png", score_threshold=c.score_threshold,
                title=f"Clumps: completeness and purity ({c.match_rule()})"))
        br = tables.get("completeness_by_brightness")
        if br is not None and len(br):
            out.append(brightness_plot(br, c.brightness_column, plot_dir / "completeness_by_brightness.png",
                                       title=f"Completeness by clump brightness (score >= {c.score_threshold:g}, "
                                             f"{c.match_rule()})"))
        panels = self._panels(predictions, truth)
        if panels:
            grid = [dict(p, truth=p["truth"] + 0.5, detections=p["detections"] + 0.5) for p in panels]  # pixel edges
            out.append(detection_overlay_plot(
                grid, plot_dir / "detections_overlay.png",
                title=f"Test images: truth (green), detections with score >= {c.score_threshold:g} (orange)"))
            for p in panels:  # not in the returned list: the report embeds the top-level plots only
                overlay_plot(p, plot_dir / "overlays" / f"overlay_{_safe(p['id'])}.png")
        if c.regions:
            self.write_regions(predictions, plot_dir.parent / "regions")
        return out

    def _panels(self, predictions: Table, truth: Table) -> list[dict[str, Any]]:
        c = self.config
        det = self.detections_table(predictions)
        ids = {}
        if "id" in predictions.colnames:
            for i, v in zip(np.asarray(predictions["index"]), predictions["id"]):
                ids.setdefault(int(i), v)
        panels = []
        for idx in sorted(self._examples)[: c.n_overlay]:
            d = det[(np.asarray(det["index"]) == idx)] if len(det) else det
            if len(d) and "score" in d.colnames:
                d = d[np.asarray(d["score"], dtype=float) >= c.score_threshold]
            t = truth[np.asarray(truth["index"]) == idx] if len(truth) else truth
            boxes = lambda tab: (  # noqa: E731
                np.stack([np.asarray(tab[k], dtype=float) for k in ("x0", "y0", "x1", "y1")], 1)
                if len(tab) and "x0" in tab.colnames else np.zeros((0, 4)))
            panels.append({
                "image": self._examples[idx], "truth": boxes(t), "detections": boxes(d),
                "scores": np.asarray(d["score"], dtype=float) if len(d) else np.zeros(0),
                "matched": np.asarray(d["matched"].filled(False) if hasattr(d["matched"], "filled") else d["matched"],
                                      dtype=bool) if len(d) and "matched" in d.colnames else np.zeros(len(d), bool),
                "true_class": np.asarray(t["true_class"]).astype(str) if len(t) else np.zeros(0, str),
                "brightness": np.asarray(t[c.brightness_column], dtype=float)
                if len(t) and c.brightness_column in t.colnames else None,
                "mask": self._masks.get(idx), "ellipse": self._ellipses.get(idx), "id": ids.get(idx, idx),
                "brightness_name": c.brightness_column,
                "title": f"id {ids.get(idx, idx)}"})
        return panels

    def write_regions(self, predictions: Table, folder: Path) -> list[Path]:
        """DS9 region files per test image: ``<id>.reg`` (image) and, with a WCS, ``<id>_sky.reg`` (ICRS).

        Every test image gets its files, also those without detections (then they hold no region).
        """
        det = self.detections_table(predictions)
        if "index" not in predictions.colnames:
            return []
        ids: dict[int, Any] = {}
        for k, i in enumerate(np.asarray(predictions["index"])):
            ids.setdefault(int(i), predictions["id"][k] if "id" in predictions.colnames else int(i))
        classes = tuple(self.classes)
        written = []
        d_index = np.asarray(det["index"]) if len(det) else np.zeros(0, np.int64)
        for idx, ident in ids.items():
            d = det[d_index == idx] if len(det) else det
            one = {"boxes": np.stack([np.asarray(d[k], dtype=float) for k in ("x0", "y0", "x1", "y1")], 1)
                   if len(d) else np.zeros((0, 4)),
                   "scores": np.asarray(d["score"], dtype=float) if len(d) else np.zeros(0),
                   "labels": np.array([classes.index(str(v)) if str(v) in classes else 0 for v in d["pred_class"]],
                                      dtype=np.int64) if len(d) else np.zeros(0, np.int64)}
            name = _safe(ident)
            written.append(write_ds9_regions(folder / f"{name}.reg", one, class_names=classes))
            w = self._wcs.get(idx)
            if w is not None:
                written.append(write_ds9_regions(folder / f"{name}_sky.reg", one, wcs=w, class_names=classes))
        return written

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        c = self.config
        text = super().report(predictions, metrics, tables)
        lines = ["", "Post-processing (applied before matching, in validation and test): "
                     f"{self.postprocess_summary()}.", ""]
        br = tables.get("completeness_by_brightness")
        col = c.brightness_column
        if br is not None and len(br):
            lines += [f"Completeness by {col} (score >= {c.score_threshold:g}; 68 % Wilson interval):", "",
                      f"| {col} | true boxes | found | completeness |", "|---|---|---|---|"]
            for r in br:
                lo, hi = float(r[f"{col}_min"]), float(r[f"{col}_max"])
                rng = f"< {hi:g}" if not np.isfinite(lo) else f">= {lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"
                lines.append(f"| {rng} | {r['n_true']} | {r['n_found']} | {r['completeness']:.3f} "
                             f"({r['completeness_lo']:.3f}-{r['completeness_hi']:.3f}) |")
            lines.append("")
        det = tables.get("detections")
        if det is not None:
            with_sky = "ra" in det.colnames
            lines.append(f"Detections catalogue: `tables/detections.ecsv` ({len(det)} detections"
                         f"{', with RA/Dec from each image WCS' if with_sky else ', no WCS: pixel positions only'}); "
                         f"DS9 regions: `regions/`.")
        return text + "\n".join(lines) + "\n"

    def output_files(self) -> dict[str, str]:
        files = super().output_files()
        files.update({
            "tables/detections.ecsv": "the detections catalogue: image id, box, centre (0-based pixel centres), score, "
                                      "class, matched, RA/Dec from the image's WCS",
            "tables/completeness_by_brightness.ecsv": "completeness in bins of the clump / host flux ratio",
            "plots/completeness_by_brightness.png": "completeness against the clump / host flux ratio",
            "plots/overlays/overlay_<id>.png": "one test image each: truth (green), detections (orange: matched, "
                                               "red: unmatched), host mask outline (cyan)",
            "regions/<id>.reg": "DS9 regions of each test image's detections in image coordinates",
            "regions/<id>_sky.reg": "the same in ICRS (RA/Dec), when the image has a WCS",
        })
        return files


def _safe(ident: Any) -> str:
    """A file-name-safe form of an image id."""
    s = str(ident)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s) or "image"


def brightness_plot(table: Table, name: str, path: Path, title: str = "Completeness by brightness") -> Path:
    """Completeness (with its 68 % interval) against a per-box value, one point per bin, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrotl.io import save_figure

    lo = np.asarray(table[f"{name}_min"], dtype=float)
    hi = np.asarray(table[f"{name}_max"], dtype=float)
    finite = np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
    x = np.where(finite, np.sqrt(np.where(finite, lo * hi, 1.0)), np.where(np.isfinite(lo), lo * 1.3, hi / 1.3))
    comp = np.asarray(table["completeness"], dtype=float)
    err = np.array([comp - np.asarray(table["completeness_lo"], float),
                    np.asarray(table["completeness_hi"], float) - comp])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.errorbar(x, comp, yerr=np.nan_to_num(err), fmt="o-", color="k", label="all", capsize=2)
    for col in table.colnames:
        if col.startswith("completeness_") and col not in ("completeness_lo", "completeness_hi"):
            ax.plot(x, np.asarray(table[col], dtype=float), "s--", ms=4, lw=1, label=col.removeprefix("completeness_"))
    for xi, n in zip(x, table["n_true"]):
        ax.annotate(str(int(n)), (xi, 0.02), fontsize=7, ha="center", color="grey")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"{name} (bin centre; grey: true boxes per bin)")
    ax.set_ylabel("completeness")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def overlay_plot(panel: dict[str, Any], path: Path, smooth_px: float = 0.7) -> Path:
    """One image with its true boxes (green, class and brightness), detections (orange matched, red not) and host mask.

    Boxes are in 0-based pixel-centre coordinates (the clumps convention) and drawn as such. The display
    image (only) is smoothed with a Gaussian of ``smooth_px`` pixels (0: none), as the title says: SDSS-depth
    frames in noise units are hard to read pixel by pixel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from astrotl.io import save_figure
    from astrotl.plots import display_rgb

    image = np.asarray(panel["image"], dtype=float)
    if smooth_px > 0:
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=(0, smooth_px, smooth_px))
    rgb = display_rgb(image)
    h, w = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(4.6, 4.8))
    ax.imshow(rgb, origin="upper", extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    if panel.get("mask") is not None:
        ax.contour(np.arange(w), np.arange(h), panel["mask"].astype(float), levels=[0.5], colors="cyan",
                   linewidths=0.8)
    elif panel.get("ellipse") is not None:
        from matplotlib.patches import Ellipse

        x, y, a, b, theta = panel["ellipse"]
        ax.add_patch(Ellipse((x, y), 2 * a, 2 * b, angle=theta, fill=False, ec="cyan", lw=0.8))
    bright = panel.get("brightness")
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(panel["truth"], dtype=float).reshape(-1, 4)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.3))
        label = panel["true_class"][k] if k < len(panel["true_class"]) else ""
        if bright is not None and k < len(bright) and np.isfinite(bright[k]):
            label += f" {bright[k]:.3f}"
        ax.text(x0, y1 + 0.3, label, color="lime", fontsize=6, va="top")
    matched = panel.get("matched", np.zeros(0, bool))
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(panel["detections"], dtype=float).reshape(-1, 4)):
        colour = "orange" if k < len(matched) and matched[k] else "red"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.1, ls="--"))
        ax.text(x0, y0 - 0.3, f"{float(panel['scores'][k]):.2f}", color=colour, fontsize=7, va="bottom")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"{panel.get('title', '')}: truth (green: class, {panel.get('brightness_name', 'flux_ratio')}), "
                 f"detections (orange matched, "
                 f"red unmatched),\nhost mask (cyan); g, r, i display"
                 + (f" smoothed {smooth_px:g} px" if smooth_px else ""),
                 fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
