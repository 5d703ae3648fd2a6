"""The PHANGS-HST four-class star-cluster classification task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from pydantic import Field

from astrotl.tasks.classification import ClassificationTask, ClassificationTaskConfig


class PhangsClusterTaskConfig(ClassificationTaskConfig):
    combine: dict[str, list[str]] = Field(
        default_factory=lambda: {"1+2": ["1", "2"]},
        description="combined classes scored too; Class 1+2 is the PHANGS 'standard' cluster sample")
    accuracy_vs: list[str] = Field(default_factory=lambda: ["mag_F555W"],
                                   description="catalogue columns to bin accuracy against")


class PhangsClusterTask(ClassificationTask):
    """Four-class PHANGS-HST cluster morphology (1 symmetric, 2 asymmetric, 3 association, 4 artifact)."""

    name = "phangs_clusters"
    Config = PhangsClusterTaskConfig
    default_dataset = "phangs_sim"

    def evaluate(self, predictions: Table, truth: Table | None = None):
        metrics, tables = super().evaluate(predictions, truth)
        if "subclass" in predictions.colnames and "true_class" in predictions.colnames and len(predictions):
            rows = []
            sub = np.asarray(predictions["subclass"]).astype(str)
            true = np.asarray(predictions["true_class"]).astype(str)
            pred = np.asarray(predictions["pred_class"]).astype(str)
            for s in sorted(set(sub), key=lambda v: [float(p) if p.replace('.', '').isdigit() else 99 for p in v.split(".")]):
                m = sub == s
                row = {"subclass": s, "true_class": true[m][0], "n": int(m.sum()),
                       "accuracy": float((true[m] == pred[m]).mean())}
                for c in self.classes:
                    row[f"frac_pred_{c}"] = float((pred[m] == c).mean())
                rows.append(row)
            tables["per_subclass"] = Table(rows=rows, meta={"description": "accuracy and predicted-class fractions per PHANGS sub-class"})
            for r in rows:
                metrics[f"accuracy_subclass_{r['subclass']}"] = r["accuracy"]
        return metrics, tables

    def plots(self, predictions: Table, truth: Table, metrics: dict[str, Any], history: Table,
              plot_dir: Path) -> list[Path]:
        out = super().plots(predictions, truth, metrics, history, plot_dir)
        if "true_class" in predictions.colnames and len(predictions):
            cm12 = self._combined_matrix(predictions)
            from astrotl.plots import confusion_matrix_plot

            out.append(confusion_matrix_plot(cm12, ["1+2", "3", "4"], plot_dir / "confusion_matrix_class12.png",
                                             title="Confusion matrix, Class 1+2 combined"))
        return out

    def _combined_matrix(self, predictions: Table) -> np.ndarray:
        merge = {"1": 0, "2": 0, "3": 1, "4": 2}
        t = [merge.get(str(v), -1) for v in predictions["true_class"]]
        p = [merge.get(str(v), -1) for v in predictions["pred_class"]]
        cm = np.zeros((3, 3), dtype=int)
        for a, b in zip(t, p):
            if a >= 0 and b >= 0:
                cm[a, b] += 1
        return cm

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        text = super().report(predictions, metrics, tables)
        sub = tables.get("per_subclass")
        if sub is not None:
            text += "\n| sub-class | true class | N | accuracy |\n|---|---|---|---|\n"
            for r in sub:
                text += f"| {r['subclass']} | {r['true_class']} | {r['n']} | {r['accuracy']:.3f} |\n"
        return text
