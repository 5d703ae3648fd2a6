"""Generic plots written by tasks (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.table import Table  # noqa: E402

from .io import save_figure  # noqa: E402


def confusion_matrix_plot(cm: np.ndarray, classes: list[str], path: Path, title: str = "Confusion matrix",
                          xlabel: str = "predicted class", ylabel: str = "true class") -> Path:
    """Row-normalised confusion matrix with counts in each cell."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.1 * n + 1.5))
    im = ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{frac[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                    color="white" if frac[i, j] > 0.55 else "black", fontsize=9)
    ax.set_xticks(range(n), classes)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return save_figure(fig, path)


def training_curves_plot(history: Table, path: Path) -> Path:
    """Loss (train and validation) and every other validation metric against epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.asarray(history["epoch"]) if len(history) else np.array([])
    for col, style in (("train_loss", "-o"), ("val_loss", "-s")):
        if col in history.colnames:
            y = np.asarray(history[col], dtype=float)
            axes[0].plot(epochs, y, style, label=col, ms=3)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    others = [c for c in history.colnames if c.startswith("val_") and c != "val_loss"]
    for col in others:
        axes[1].plot(epochs, np.asarray(history[col], dtype=float), "-o", ms=3, label=col)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation metric")
    if others:
        axes[1].legend()
    fig.suptitle("Training curves")
    return save_figure(fig, path)


def binned_accuracy_plot(table: Table, column: str, path: Path) -> Path:
    """Accuracy (with binomial errors) in bins of a catalogue column."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    centres = np.asarray(table["bin_centre"], dtype=float)
    acc = np.asarray(table["accuracy"], dtype=float)
    err = np.asarray(table["accuracy_err"], dtype=float)
    ax.errorbar(centres, acc, yerr=err, fmt="o-", capsize=3)
    for x, y, n in zip(centres, acc, table["n"]):
        ax.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel(column)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy vs {column}")
    return save_figure(fig, path)
