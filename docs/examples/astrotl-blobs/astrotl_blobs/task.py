"""Round-versus-elongated classification: loss, metrics, predictions and evaluation."""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics
from astropy.table import Table
from pydantic import Field
from torch import nn

from astrotl import ComponentConfig, Task
from astrotl.data import d4_augment


class BlobShapeConfig(ComponentConfig):
    augment: bool = Field(True, description="random 90-degree rotations and flips of training batches")


class BlobShapeTask(Task):
    """Classify blobs as round or elongated (example plugin task)."""

    name = "blob_shape"
    Config = BlobShapeConfig
    default_dataset = "blobs_sim"
    monitor = "val_loss"
    headline_metric = "accuracy"
    higher_is_better = True

    def batch_augment(self, batch, generator=None):
        if self.config.augment:
            batch["image"] = d4_augment(batch["image"], generator=generator)
        return batch

    def training_loss(self, model: nn.Module, batch):
        logits = model(batch["image"])
        return nn.functional.cross_entropy(logits, batch["label"]), logits

    def make_metrics(self):
        return torchmetrics.MetricCollection(
            {"acc": torchmetrics.classification.MulticlassAccuracy(num_classes=self.output_dim(), average="micro")})

    def update_metrics(self, metrics, outputs, batch) -> None:
        metrics.update(outputs, batch["label"])

    def predict_batch(self, model: nn.Module, batch):
        probs = torch.softmax(model(batch["image"]), dim=1).cpu().numpy()
        rows = []
        for i, idx in enumerate(batch["index"].cpu().numpy()):
            rows.append({"index": int(idx), "true_class": self.info.classes[int(batch["label"][i])],
                         "pred_class": self.info.classes[int(probs[i].argmax())], "p_long": float(probs[i, 1])})
        return rows

    def evaluate(self, predictions: Table, truth: Table):
        correct = np.asarray(predictions["true_class"]) == np.asarray(predictions["pred_class"])
        metrics = {"accuracy": float(correct.mean()), "n_evaluated": len(predictions),
                   "chance_accuracy": 1.0 / len(self.info.classes)}
        per_class = Table({"class": list(self.info.classes),
                           "accuracy": [float(correct[np.asarray(predictions["true_class"]) == c].mean())
                                        for c in self.info.classes]})
        return metrics, {"per_class": per_class}

    def report(self, predictions, metrics, tables) -> str:
        return f"Test accuracy {metrics['accuracy']:.3f} on {metrics['n_evaluated']} blobs.\n"
