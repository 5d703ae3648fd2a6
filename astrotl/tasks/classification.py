"""Generic image classification: cross-entropy fine-tuning, accuracy metrics, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator
from torch import nn

from ..interfaces import Backbone, ComponentConfig, DatasetInfo, Head, Task
from ..plots import binned_accuracy_plot, confusion_matrix_plot, roc_curve_plot



def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with class weights applied per *sample* (the weight of its own class), label smoothing or not.

    Without smoothing this is ``torch.nn.functional.cross_entropy(..., weight=weight)``: the weighted mean over the
    batch. With smoothing, torch also weights each class's share of the smoothed target by that class's weight, so
    with strong weights (inverse frequency on an imbalanced set) the smoothing term pulls every sample towards
    the rare classes: GZ1 with balanced weights and smoothing 0.1 predicted mostly the rare classes (test accuracy
    0.16). Here the smoothed loss of each sample is weighted by its class's weight instead.
    """
    if weight is None or not label_smoothing:
        return nn.functional.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    keep = target >= 0
    per_sample = nn.functional.cross_entropy(logits[keep], target[keep], reduction="none",
                                             label_smoothing=label_smoothing)
    w = weight.to(per_sample)[target[keep]]
    return (per_sample * w).sum() / w.sum()

class ClassificationTaskConfig(ComponentConfig):
    augment: Literal["d4", "flips", "flip", "rot90", "none"] = Field(
        "d4", description="training augmentation: a random element of this symmetry group per image (d4 = 90-degree "
                          "rotations and mirror flips, Wei et al. 2020; see astrotl.symmetry); labels follow "
                          "label_symmetry")
    label_symmetry: dict[str, dict[str, str]] | None = Field(
        None, description="what each class becomes under a left-right mirror and a quarter turn, e.g. {flip: {CW: ACW, "
                          "ACW: CW}}; unlisted classes are invariant (default: the data set's declaration, else all)")
    max_shift: float = Field(
        0.0, ge=0, lt=0.5, description="training augmentation: also shift each image by a random whole number of "
                                       "pixels, up to max_shift x its side, in x and y (edges repeated)")
    tta: Literal["none", "flip", "flips", "rot90", "d4"] = Field(
        "none", description="test-time augmentation: average the probabilities over this symmetry group (un-permuted "
                            "by label_symmetry) in the test predictions and `astrotl predict`")
    calibration: Literal["none", "temperature"] = Field(
        "none", description="temperature: fit one temperature on the validation split after training (lowest NLL); "
                            "calibrated probabilities in predictions.ecsv, ECE before/after, reliability diagram")
    class_weights: Literal["none", "balanced"] = Field("none", description="weight the loss by inverse class frequency")
    class_weights_from: float = Field(
        0.0, ge=0, lt=1, description="deferred re-weighting (Cao et al. 2019): the class weights apply from this "
                                     "fraction of the training epochs on (e.g. 0.67); before it every image counts "
                                     "alike while the features are learnt; 0 = weighted from the start")
    logit_adjustment: float = Field(
        0.0, ge=0, description="train on logits + tau * log(class prior of the training split) (Menon et al. 2021; "
                               "1.0 is their default): the unadjusted logits then predict as if every class were "
                               "equally frequent, the rule that maximises balanced accuracy; an alternative to "
                               "class_weights: balanced (not both)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="target = (1 - s) one-hot + s / K; with class "
                                   "weights each sample is weighted by the weight of its own class")
    combine: dict[str, list[str]] = Field(
        default_factory=dict, description="combined classes to score too, e.g. {'1+2': ['1', '2']}")
    accuracy_vs: list[str] = Field(
        default_factory=list, description="catalogue columns to bin accuracy against (e.g. mag_F555W)")
    n_bins: int = Field(6, ge=2, description="bins for accuracy_vs (equal-count)")

    @model_validator(mode="after")
    def _one_imbalance_correction(self):
        if self.class_weights != "none" and self.logit_adjustment > 0:
            raise ValueError("class_weights: balanced and logit_adjustment both correct for class imbalance (together "
                             "they correct twice); set class_weights: none or logit_adjustment: 0")
        return self

    @model_validator(mode="after")
    def _deferred_weights_need_weights(self):
        if self.class_weights_from > 0 and self.class_weights == "none":
            raise ValueError("class_weights_from defers class weights, but class_weights is none; set class_weights: "
                             "balanced or remove class_weights_from")
        return self

    @model_validator(mode="after")
    def _combine_nonempty(self):
        for key, members in self.combine.items():
            if len(members) < 2:
                raise ValueError(f"combine['{key}'] must list at least two classes, got {members}")
        return self


def _default_temperature(state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: a model saved before calibration existed has temperature 1."""
    state_dict.setdefault(f"{prefix}temperature", torch.ones(()))


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def classification_scores(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class recall/precision/F1, balanced accuracy and macro-F1 from a confusion matrix."""
    cm = np.asarray(cm, dtype=float)
    total = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.full_like(tp, np.nan), where=support > 0)
    precision = np.divide(tp, predicted, out=np.full_like(tp, np.nan), where=predicted > 0)
    denom = precision + recall
    f1 = np.where(np.isfinite(denom) & (denom > 0), 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    f1 = np.where(support > 0, f1, np.nan)
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
        "macro_f1": float(np.nanmean(f1)) if np.any(support > 0) else float("nan"),
        "recall": recall, "precision": precision, "f1": f1, "support": support.astype(int),
    }


class ClassificationTask(Task):
    """Fine-tune a backbone + head to classify images into the data set's classes."""

    name = "classification"
    kind = "classification"
    Config = ClassificationTaskConfig
    headline_metric = "accuracy"
    higher_is_better = True

    def __init__(self, config: ClassificationTaskConfig, info: DatasetInfo):
        super().__init__(config, info)
        if not info.classes:
            from ..errors import ConfigError

            raise ConfigError(f"task '{self.name}' needs a data set with classes; this one has none "
                              f"(a regression data set needs a regression task)")
        self.classes = list(info.classes)
        unknown = sorted({c for members in config.combine.values() for c in members} - set(self.classes))
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"task.combine names classes {unknown} that the data set does not have; classes are {self.classes}")
        self._class_weight: torch.Tensor | None = None
        self._weights_on = config.class_weights_from == 0  # deferred re-weighting switches them on in set_progress
        self._logit_offset: torch.Tensor | None = None  # tau * log(prior), added to the logits in the training loss
        from ..symmetry import LabelSymmetry

        declared = config.label_symmetry
        if declared is None:
            declared = (info.extra or {}).get("label_symmetry")
        #: How the classes transform under mirrors and quarter turns (augmentation permutes labels, TTA un-permutes).
        self.symmetry = LabelSymmetry.from_declaration(declared, self.classes)
        #: Set by :meth:`calibrate`: the fitted temperature and the validation NLL / ECE before and after.
        self.calibration: dict[str, Any] | None = None

    # -- model and loss ---------------------------------------------------------------------------
    def output_dim(self) -> int:
        return len(self.classes)

    def build_model(self, backbone: Backbone, head: Head) -> nn.Module:
        """``head(backbone(x))`` with a ``temperature`` buffer (1 until :meth:`calibrate` fits it).

        The buffer travels in ``model.safetensors``, so ``astrotl predict`` applies the calibration; a model
        saved before calibration existed loads with temperature 1.
        """
        model = super().build_model(backbone, head)
        model.register_buffer("temperature", torch.ones(()))
        model._register_load_state_dict_pre_hook(_default_temperature)  # module level: picklable (ddp_spawn)
        return model

    def set_class_counts(self, counts: np.ndarray) -> None:
        """Called by the engine with the training-set class counts (``class_weights``, ``logit_adjustment``)."""
        counts = np.maximum(np.asarray(counts, dtype=float), 1.0)
        if self.config.class_weights == "balanced":
            w = counts.sum() / (len(counts) * counts)
            self._class_weight = torch.as_tensor(w, dtype=torch.float32)
        if self.config.logit_adjustment > 0:
            prior = counts / counts.sum()
            self._logit_offset = torch.as_tensor(self.config.logit_adjustment * np.log(prior), dtype=torch.float32)

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        """Deferred re-weighting: class weights from epoch ``round(class_weights_from * max_epochs)`` on."""
        self._weights_on = epoch >= round(self.config.class_weights_from * max_epochs)

    def batch_augment(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A random shift of up to ``max_shift`` x the side (labels unchanged), then one random element of the
        ``augment`` group per image (labels permuted by the label symmetry)."""
        if self.config.max_shift > 0:
            from ..data import random_shift

            batch["image"] = random_shift(batch["image"], self.config.max_shift, generator)
        if self.config.augment == "none":
            return batch
        from ..symmetry import draw_elements, transform_batch

        elems = draw_elements(self.config.augment, batch["image"].shape[0], generator)
        batch["image"] = transform_batch(batch["image"], elems)
        if "label" in batch and not self.symmetry.trivial:
            batch["label"] = self.symmetry.permute_labels(batch["label"], elems)
        return batch

    def training_loss(self, model: nn.Module, batch: dict[str, Any]):
        logits = model(batch["image"])
        weight = self._class_weight.to(logits.device) if self._class_weight is not None and self._weights_on else None
        # logit adjustment: the loss sees logits + tau log(prior); the model's own logits (returned, and used by
        # validation metrics and predictions) are then those of a uniform class prior
        fitted = logits + self._logit_offset.to(logits) if self._logit_offset is not None else logits
        return weighted_cross_entropy(fitted, batch["label"], weight, self.config.label_smoothing), logits

    def make_metrics(self):
        import torchmetrics  # imported here: it takes seconds, and `astrotl list` does not need it

        n = len(self.classes)
        return torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes=n, average="micro"),
            "balanced_acc": torchmetrics.classification.MulticlassAccuracy(num_classes=n, average="macro"),
        })

    def update_metrics(self, metrics, outputs, batch) -> None:
        keep = batch["label"] >= 0
        if keep.any():
            metrics.update(outputs[keep], batch["label"][keep])

    # -- prediction and evaluation ----------------------------------------------------------------
    def _temperature(self, model: nn.Module) -> float:
        t = getattr(model, "temperature", None)
        return float(t) if t is not None else 1.0

    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per sample: true class, predicted class and ``p_<class>``.

        The probabilities are averaged over the ``tta`` group (un-permuted by the label symmetry) and
        divided by the model's temperature; when calibrated, ``pred_class_raw`` / ``pred_prob_raw`` are
        the uncalibrated prediction.
        """
        from ..symmetry import average_probabilities, tta_logits

        logits = tta_logits(model, batch["image"], self.config.tta)
        temperature = self._temperature(model)
        probs = average_probabilities(logits, self.config.tta, self.symmetry, temperature).cpu().numpy()
        raw = average_probabilities(logits, self.config.tta, self.symmetry).cpu().numpy() \
            if temperature != 1.0 else None
        pred = probs.argmax(axis=1)
        labels = batch.get("label")
        labels = labels.cpu().numpy() if labels is not None else None
        rows = []
        for i, idx in enumerate(batch["index"].cpu().numpy()):
            row: dict[str, Any] = {"index": int(idx)}
            if labels is not None and labels[i] >= 0:
                row["true_class"] = self.classes[int(labels[i])]
            elif labels is not None:
                row["true_class"] = ""
            row["pred_class"] = self.classes[int(pred[i])]
            row["pred_prob"] = float(probs[i, pred[i]])
            for j, c in enumerate(self.classes):
                row[f"p_{c}"] = float(probs[i, j])
            if raw is not None:
                row["pred_class_raw"] = self.classes[int(raw[i].argmax())]
                row["pred_prob_raw"] = float(raw[i].max())
            rows.append(row)
        return rows

    # -- calibration ------------------------------------------------------------------------------
    #: Fewest labelled validation samples a temperature is fitted on (fewer: the temperature stays 1).
    min_calibration_samples: int = 20

    def calibrate(self, model: nn.Module, loader, device: torch.device | str | None = None) -> dict[str, Any] | None:
        """Fit the model's temperature on ``loader`` (the validation split) when ``calibration: temperature``.

        Called by the engine after the best checkpoint is loaded. The probabilities are those of
        :meth:`predict_batch` (with test-time augmentation when ``tta`` is on). Sets ``model.temperature``
        and :attr:`calibration` (temperature, validation NLL and ECE before and after); returns the latter.
        """
        if self.config.calibration == "none" or not hasattr(model, "temperature"):
            return None
        import logging

        from ..calibration import expected_calibration_error, fit_temperature, nll, reliability_table
        from ..symmetry import average_probabilities, tta_logits

        log = logging.getLogger(__name__)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        was_training = model.training
        model.eval()
        logits, labels = [], []
        with torch.inference_mode():
            for batch in loader:
                y = batch["label"]
                keep = y >= 0
                if keep.any():
                    logits.append(tta_logits(model, batch["image"][keep].to(device), self.config.tta).cpu())
                    labels.append(y[keep].cpu())
        model.train(was_training)
        n = int(sum(len(y) for y in labels))
        if n < self.min_calibration_samples:
            log.warning("calibration: only %d labelled validation samples (need %d); temperature left at 1", n,
                        self.min_calibration_samples)
            self.calibration = {"temperature": 1.0, "n_val": n, "skipped": True}
            return self.calibration
        z = torch.cat(logits, dim=1)
        y = torch.cat(labels)

        def probs_at(t: float) -> torch.Tensor:
            return average_probabilities(z, self.config.tta, self.symmetry, t)

        t = fit_temperature(probs_at, y)
        before, after = probs_at(1.0), probs_at(t)
        with torch.no_grad():
            model.temperature.fill_(t)
        self.calibration = {
            "temperature": t, "n_val": n, "skipped": False,
            "val_nll_before": nll(before, y), "val_nll_after": nll(after, y),
            "val_ece_before": expected_calibration_error(before.numpy(), y.numpy()),
            "val_ece_after": expected_calibration_error(after.numpy(), y.numpy()),
            "val_reliability_before": reliability_table(before.numpy(), y.numpy()),
            "val_reliability_after": reliability_table(after.numpy(), y.numpy()),
        }
        log.info("calibration: temperature %.3f on %d validation samples; NLL %.4f -> %.4f, ECE %.4f -> %.4f", t, n,
                 self.calibration["val_nll_before"], self.calibration["val_nll_after"],
                 self.calibration["val_ece_before"], self.calibration["val_ece_after"])
        return self.calibration

    def _test_calibration(self, predictions: Table) -> dict[str, Any]:
        """Test-set ECE of the calibrated (``pred_*``) and, when present, the uncalibrated (``pred_*_raw``) columns."""
        from ..calibration import expected_calibration_error, reliability_table

        if "true_class" not in predictions.colnames:
            return {}
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([str(t) in index for t in predictions["true_class"]], dtype=bool)
        if not keep.any():
            return {}
        true = np.array([str(t) for t in predictions["true_class"][keep]])
        out: dict[str, Any] = {}
        for suffix, key in (("", "after"), ("_raw", "before")):
            if f"pred_class{suffix}" not in predictions.colnames or f"pred_prob{suffix}" not in predictions.colnames:
                continue
            conf = np.asarray(predictions[f"pred_prob{suffix}"], dtype=float)[keep]
            ok = np.array([str(p) for p in predictions[f"pred_class{suffix}"][keep]]) == true
            out[f"ece_{key}"] = expected_calibration_error(None, None, confidence=conf, correct=ok)
            out[f"reliability_{key}"] = reliability_table(confidence=conf, correct=ok)
        return out

    def _labelled(self, predictions: Table) -> tuple[np.ndarray, np.ndarray]:
        if "true_class" not in predictions.colnames:
            return np.array([], int), np.array([], int)
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([str(t) in index for t in predictions["true_class"]], dtype=bool)
        true = np.array([index[str(t)] for t in predictions["true_class"][keep]], dtype=int)
        pred = np.array([index[str(p)] for p in predictions["pred_class"][keep]], dtype=int)
        return true, pred

    def _probabilities(self, predictions: Table) -> tuple[np.ndarray, np.ndarray]:
        """True class index and the ``[N, K]`` probabilities of the labelled rows."""
        index = {c: i for i, c in enumerate(self.classes)}
        if "true_class" not in predictions.colnames or any(f"p_{c}" not in predictions.colnames for c in self.classes):
            return np.array([], int), np.zeros((0, len(self.classes)))
        keep = np.array([str(t) in index for t in predictions["true_class"]], dtype=bool)
        true = np.array([index[str(t)] for t in predictions["true_class"][keep]], dtype=int)
        probs = np.stack([np.asarray(predictions[f"p_{c}"], dtype=float)[keep] for c in self.classes], axis=1) \
            if keep.any() else np.zeros((0, len(self.classes)))
        return true, probs

    def roc(self, predictions: Table) -> tuple[dict[str, float], Table | None]:
        """ROC AUC (binary: of the second class; else macro one-vs-rest) and, for two classes, the ROC curve."""
        from torchmetrics.functional.classification import binary_auroc, binary_roc, multiclass_auroc

        true, probs = self._probabilities(predictions)
        if len(true) == 0 or len(np.unique(true)) < 2:
            return {}, None
        t = torch.as_tensor(true)
        p = torch.as_tensor(probs, dtype=torch.float32)
        if len(self.classes) == 2:
            fpr, tpr, thr = binary_roc(p[:, 1], t)
            auc = float(binary_auroc(p[:, 1], t))
            curve = Table({"threshold": thr.numpy(), "fpr": fpr.numpy(), "tpr": tpr.numpy()},
                          meta={"description": f"ROC curve for class '{self.classes[1]}' (positive) vs '{self.classes[0]}'",
                                "auc": auc})
            return {"roc_auc": auc}, curve
        return {"roc_auc": float(multiclass_auroc(p, t, num_classes=len(self.classes), average="macro"))}, None

    def evaluate(self, predictions: Table, truth: Table | None = None):
        true, pred = self._labelled(predictions)
        n = len(self.classes)
        metrics: dict[str, Any] = {"n_evaluated": int(len(true)), "n_classes": n, "chance_accuracy": 1.0 / n}
        tables: dict[str, Table] = {}
        if len(true) == 0:
            return metrics, tables
        cm = confusion_matrix(true, pred, n)
        s = classification_scores(cm)
        metrics.update(accuracy=s["accuracy"], balanced_accuracy=s["balanced_accuracy"], macro_f1=s["macro_f1"])
        if len(self.classes) == 2:
            metrics["f1"] = float(s["f1"][1])
        auc, curve = self.roc(predictions)
        metrics.update(auc)
        if curve is not None:
            tables["roc"] = curve
        for i, c in enumerate(self.classes):
            metrics[f"accuracy_class_{c}"] = float(s["recall"][i])
        tables["per_class"] = Table({
            "class": self.classes,
            "description": list(self.info.class_descriptions or [""] * n),
            "support": s["support"], "recall": s["recall"], "precision": s["precision"], "f1": s["f1"],
        }, meta={"description": "per-class scores; recall is the per-class accuracy"})
        cm_table = Table({"true_class": self.classes}, meta={"description": "rows: true class, columns: predicted class (counts)"})
        for j, c in enumerate(self.classes):
            cm_table[f"pred_{c}"] = cm[:, j]
        tables["confusion"] = cm_table
        for key, members in self.config.combine.items():
            idx = [self.classes.index(m) for m in members]
            in_true = np.isin(true, idx)
            in_pred = np.isin(pred, idx)
            # recall of the combined class, and the accuracy of the problem with those classes merged
            metrics[f"combined_{key}_recall"] = float((in_true & in_pred).sum() / in_true.sum()) if in_true.any() else float("nan")
            metrics[f"combined_{key}_precision"] = float((in_true & in_pred).sum() / in_pred.sum()) if in_pred.any() else float("nan")
            merged_true = np.where(in_true, -1, true)
            merged_pred = np.where(in_pred, -1, pred)
            metrics[f"combined_{key}_accuracy"] = float((merged_true == merged_pred).mean())
        for column in self.config.accuracy_vs:
            if column in predictions.colnames:
                tables[f"accuracy_vs_{column}"] = self._binned(predictions, column)
        from ..calibration import nll
        from ..symmetry import group_elements

        metrics["tta_transforms"] = len(group_elements(self.config.tta))
        true_p, probs = self._probabilities(predictions)
        if len(true_p):
            metrics["nll"] = nll(probs, true_p)
        cal = self._test_calibration(predictions)
        if "ece_after" in cal:
            metrics["ece"] = cal["ece_after"]
            tables["reliability"] = cal["reliability_after"]
        if "ece_before" in cal:
            metrics["ece_uncalibrated"] = cal["ece_before"]
            tables["reliability_uncalibrated"] = cal["reliability_before"]
        if self.calibration is not None:
            metrics["temperature"] = float(self.calibration["temperature"])
        return metrics, tables

    def _binned(self, predictions: Table, column: str) -> Table:
        true, pred = self._labelled(predictions)
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([str(t) in index for t in predictions["true_class"]], dtype=bool)
        values = np.asarray(predictions[column][keep], dtype=float)
        ok = np.isfinite(values)
        edges = np.unique(np.quantile(values[ok], np.linspace(0, 1, self.config.n_bins + 1)))
        which = np.clip(np.digitize(values, edges[1:-1]), 0, len(edges) - 2)
        rows = []
        for b in range(len(edges) - 1):
            m = ok & (which == b)
            n = int(m.sum())
            acc = float((true[m] == pred[m]).mean()) if n else float("nan")
            err = float(np.sqrt(acc * (1 - acc) / n)) if n else float("nan")
            rows.append((edges[b], edges[b + 1], 0.5 * (edges[b] + edges[b + 1]), n, acc, err))
        return Table(rows=rows, names=("bin_low", "bin_high", "bin_centre", "n", "accuracy", "accuracy_err"),
                     meta={"column": column})

    def plots(self, predictions: Table, truth: Table, metrics: dict[str, Any], history: Table,
              plot_dir: Path) -> list[Path]:
        out = []
        true, pred = self._labelled(predictions)
        if len(true):
            cm = confusion_matrix(true, pred, len(self.classes))
            out.append(confusion_matrix_plot(cm, self.classes, plot_dir / "confusion_matrix.png",
                                             title=f"Confusion matrix (test, N={len(true)})"))
        _, curve = self.roc(predictions)
        if curve is not None:
            out.append(roc_curve_plot(curve, plot_dir / "roc_curve.png"))
        for column in self.config.accuracy_vs:
            if column in predictions.colnames and len(true):
                out.append(binned_accuracy_plot(self._binned(predictions, column), column,
                                                plot_dir / f"accuracy_vs_{column}.png"))
        if self.config.calibration != "none":
            from ..calibration import reliability_plot

            cal = self._test_calibration(predictions)
            curves = {}
            if "reliability_before" in cal:
                curves[f"test, uncalibrated (ECE {cal['ece_before']:.3f})"] = cal["reliability_before"]
            if "reliability_after" in cal:
                t = (self.calibration or {}).get("temperature", 1.0)
                curves[f"test, T = {t:.2f} (ECE {cal['ece_after']:.3f})"] = cal["reliability_after"]
            if not curves and self.calibration and not self.calibration.get("skipped"):
                curves = {"validation, uncalibrated": self.calibration["val_reliability_before"],
                          "validation, calibrated": self.calibration["val_reliability_after"]}
            if curves:
                out.append(reliability_plot(curves, plot_dir / "reliability.png"))
        return out

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        if "accuracy" not in metrics:
            return "No labelled test samples: predictions only.\n"
        lines = [
            f"Test set: {metrics['n_evaluated']} labelled samples, {metrics['n_classes']} classes "
            f"(chance accuracy {metrics['chance_accuracy']:.2f}).",
            "",
            f"- overall accuracy: **{metrics['accuracy']:.3f}**",
            f"- balanced accuracy: {metrics['balanced_accuracy']:.3f}",
            f"- macro F1: {metrics['macro_f1']:.3f}",
        ]
        if "roc_auc" in metrics:
            lines.append(f"- ROC AUC: {metrics['roc_auc']:.3f}"
                         + (f" (class '{self.classes[1]}' positive); F1 of '{self.classes[1]}': {metrics['f1']:.3f}"
                            if len(self.classes) == 2 else " (macro one-vs-rest)"))
        lines.append(self._tta_line())
        if self.calibration is not None:
            lines.append(self._calibration_line(metrics))
        for key in self.config.combine:
            lines.append(f"- combined class {key}: recall {metrics[f'combined_{key}_recall']:.3f}, "
                         f"precision {metrics[f'combined_{key}_precision']:.3f}, "
                         f"accuracy with {key} merged {metrics[f'combined_{key}_accuracy']:.3f}")
        pc = tables.get("per_class")
        if pc is not None:
            lines += ["", "| class | description | N | accuracy (recall) | precision | F1 |", "|---|---|---|---|---|---|"]
            for r in pc:
                lines.append(f"| {r['class']} | {r['description']} | {r['support']} | {r['recall']:.3f} | "
                             f"{r['precision']:.3f} | {r['f1']:.3f} |")
        return "\n".join(lines) + "\n"

    def _tta_line(self) -> str:
        from ..symmetry import group_elements

        n = len(group_elements(self.config.tta))
        sym = "" if self.symmetry.trivial else f"; label symmetry {self.symmetry.describe()}"
        aug = f"training augmentation: {self.config.augment}{sym}"
        if n == 1:
            return f"- test-time augmentation: off; {aug}"
        return f"- test-time augmentation: on, probabilities averaged over the {n} transforms of `{self.config.tta}`; {aug}"

    def _calibration_line(self, metrics: dict[str, Any]) -> str:
        c = self.calibration or {}
        if c.get("note"):
            return f"- calibration: temperature {c['temperature']:.3f}, {c['note']}"
        if c.get("skipped"):
            return f"- calibration: skipped (only {c.get('n_val')} labelled validation samples); temperature 1"
        line = (f"- calibration: temperature {c['temperature']:.3f} fitted on {c['n_val']} validation samples (NLL "
                f"{c['val_nll_before']:.4f} -> {c['val_nll_after']:.4f}, ECE {c['val_ece_before']:.4f} -> "
                f"{c['val_ece_after']:.4f})")
        if "ece_uncalibrated" in metrics and "ece" in metrics:
            line += f"; test ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f}"
        return line

    def headline(self, metrics: dict[str, Any]) -> str:
        if "accuracy" not in metrics:
            return ""
        return f"test accuracy {metrics['accuracy']:.3f} (chance {metrics.get('chance_accuracy', float('nan')):.2f})"

    def output_files(self) -> dict[str, str]:
        return {"predictions.ecsv": "one row per test sample: catalogue columns, true and predicted class, "
                                    "per-class probabilities p_<class>",
                "tables/confusion.ecsv": "confusion matrix (rows: true class); `tables/per_class.ecsv`: recall, "
                                         "precision, F1 per class",
                **({"plots/reliability.png": "reliability diagram (accuracy vs confidence) before and after temperature "
                                             "scaling; `tables/reliability*.ecsv`: its bins; predictions.ecsv holds "
                                             "calibrated p_<class> and the uncalibrated pred_class_raw, pred_prob_raw"}
                   if self.config.calibration != "none" else {})}
