"""Generic image classification: cross-entropy fine-tuning, accuracy metrics, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator
from torch import nn

from ..data import d4_augment
from ..interfaces import ComponentConfig, DatasetInfo, Task
from ..plots import binned_accuracy_plot, confusion_matrix_plot, training_curves_plot


class ClassificationTaskConfig(ComponentConfig):
    augment: Literal["d4", "flip", "none"] = Field(
        "d4", description="training augmentation: d4 = random 90-degree rotations and flips (Wei et al. 2020)")
    class_weights: Literal["none", "balanced"] = Field("none", description="weight the loss by inverse class frequency")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    combine: dict[str, list[str]] = Field(
        default_factory=dict, description="combined classes to score too, e.g. {'1+2': ['1', '2']}")
    accuracy_vs: list[str] = Field(
        default_factory=list, description="catalogue columns to bin accuracy against (e.g. mag_F555W)")
    n_bins: int = Field(6, ge=2, description="bins for accuracy_vs (equal-count)")

    @model_validator(mode="after")
    def _combine_nonempty(self):
        for key, members in self.combine.items():
            if len(members) < 2:
                raise ValueError(f"combine['{key}'] must list at least two classes, got {members}")
        return self


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
    Config = ClassificationTaskConfig

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

    # -- model and loss ---------------------------------------------------------------------------
    def output_dim(self) -> int:
        return len(self.classes)

    def set_class_counts(self, counts: np.ndarray) -> None:
        """Called by the engine with the training-set class counts (for ``class_weights: balanced``)."""
        if self.config.class_weights == "balanced":
            counts = np.maximum(np.asarray(counts, dtype=float), 1.0)
            w = counts.sum() / (len(counts) * counts)
            self._class_weight = torch.as_tensor(w, dtype=torch.float32)

    def batch_augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.config.augment == "d4":
            batch["image"] = d4_augment(batch["image"])
        elif self.config.augment == "flip":
            img = batch["image"]
            mask = torch.rand(img.shape[0], device=img.device) < 0.5
            batch["image"] = torch.where(mask[:, None, None, None], torch.flip(img, dims=(-1,)), img)
        return batch

    def training_loss(self, model: nn.Module, batch: dict[str, Any]):
        logits = model(batch["image"])
        weight = self._class_weight.to(logits.device) if self._class_weight is not None else None
        loss = nn.functional.cross_entropy(logits, batch["label"], weight=weight,
                                           label_smoothing=self.config.label_smoothing)
        return loss, logits

    def make_metrics(self) -> nn.ModuleDict:
        import torchmetrics  # imported here: it takes seconds, and `astrotl list` does not need it

        n = len(self.classes)
        return nn.ModuleDict({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes=n, average="micro"),
            "balanced_acc": torchmetrics.classification.MulticlassAccuracy(num_classes=n, average="macro"),
        })

    def update_metrics(self, metrics: nn.ModuleDict, outputs, batch) -> None:
        for m in metrics.values():
            m.update(outputs, batch["label"])

    # -- prediction and evaluation ----------------------------------------------------------------
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probs = torch.softmax(model(batch["image"]).float(), dim=1).cpu().numpy()
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
            rows.append(row)
        return rows

    def _labelled(self, predictions: Table) -> tuple[np.ndarray, np.ndarray]:
        if "true_class" not in predictions.colnames:
            return np.array([], int), np.array([], int)
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([str(t) in index for t in predictions["true_class"]], dtype=bool)
        true = np.array([index[str(t)] for t in predictions["true_class"][keep]], dtype=int)
        pred = np.array([index[str(p)] for p in predictions["pred_class"][keep]], dtype=int)
        return true, pred

    def evaluate(self, predictions: Table):
        true, pred = self._labelled(predictions)
        n = len(self.classes)
        metrics: dict[str, Any] = {"n_evaluated": int(len(true)), "n_classes": n, "chance_accuracy": 1.0 / n}
        tables: dict[str, Table] = {}
        if len(true) == 0:
            return metrics, tables
        cm = confusion_matrix(true, pred, n)
        s = classification_scores(cm)
        metrics.update(accuracy=s["accuracy"], balanced_accuracy=s["balanced_accuracy"], macro_f1=s["macro_f1"])
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

    def plots(self, predictions: Table, metrics: dict[str, Any], history: Table, plot_dir: Path) -> list[Path]:
        out = []
        true, pred = self._labelled(predictions)
        if len(true):
            cm = confusion_matrix(true, pred, len(self.classes))
            out.append(confusion_matrix_plot(cm, self.classes, plot_dir / "confusion_matrix.png",
                                             title=f"Confusion matrix (test, N={len(true)})"))
        if len(history):
            out.append(training_curves_plot(history, plot_dir / "training_curves.png"))
        for column in self.config.accuracy_vs:
            if column in predictions.colnames and len(true):
                out.append(binned_accuracy_plot(self._binned(predictions, column), column,
                                                plot_dir / f"accuracy_vs_{column}.png"))
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
