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


def roc_curve_plot(curve: Table, path: Path) -> Path:
    """ROC curve (true-positive against false-positive rate) with its AUC."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(curve["fpr"], curve["tpr"], lw=2, label=f"AUC = {curve.meta.get('auc', float('nan')):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(curve.meta.get("description", "ROC curve"), fontsize=9)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _panel_grid(k: int, size: float = 3.2):
    ncols = min(k, 4)
    nrows = int(np.ceil(k / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:k]), ncols


def predicted_vs_true_plot(true: np.ndarray, pred: np.ndarray, names: list[str], path: Path,
                           title: str = "Predicted vs true fraction", hexbin_above: int = 400) -> Path:
    """One panel per target: predicted probability against true fraction, with the 1:1 line.

    Parameters
    ----------
    true, pred : ndarray, shape (N, K)
        True fractions and predicted probabilities.
    names : list of str
        The K target names (panel titles).
    path : Path
        PNG to write (atomically).
    hexbin_above : int
        A hexbin density replaces the scatter above this many samples.
    """
    true = np.asarray(true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    fig, axes, ncols = _panel_grid(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        t, p = true[:, j], pred[:, j]
        if len(t) > hexbin_above:
            ax.hexbin(t, p, gridsize=30, extent=(0, 1, 0, 1), mincnt=1, bins="log", cmap="viridis")
        else:
            ax.scatter(t, p, s=8, alpha=0.6, edgecolors="none")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((p - t) ** 2))) if len(t) else float("nan")
        ax.set_title(f"{name} (RMSE {rmse:.3f})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("true fraction")
        if j % ncols == 0:
            ax.set_ylabel("predicted probability")
    fig.suptitle(title)
    return save_figure(fig, path)


def residual_histograms_plot(true: np.ndarray, pred: np.ndarray, names: list[str], path: Path,
                             title: str = "Residuals (predicted - true)") -> Path:
    """One histogram of ``p - t`` per target, with its mean and standard deviation."""
    d = np.asarray(pred, dtype=float) - np.asarray(true, dtype=float)
    fig, axes, ncols = _panel_grid(len(names), size=3.0)
    lim = max(float(np.nanmax(np.abs(d))) if d.size else 0.0, 0.05)
    bins = np.linspace(-lim, lim, 31)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(d[:, j], bins=bins, color="C0", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        mean = float(np.mean(d[:, j])) if len(d) else float("nan")
        std = float(np.std(d[:, j])) if len(d) else float("nan")
        ax.set_title(f"{name}: mean {mean:+.3f}, sd {std:.3f}", fontsize=9)
        ax.set_xlabel("p - t")
        if j % ncols == 0:
            ax.set_ylabel("samples")
    fig.suptitle(title)
    return save_figure(fig, path)


def reliability_plot(table: Table, path: Path, title: str = "Reliability") -> Path:
    """Mean true fraction against mean predicted probability per bin, one curve per target.

    ``table`` has columns ``target``, ``n``, ``mean_pred``, ``mean_true`` (see
    :func:`astrotl.tasks.soft_labels.reliability_table`); empty bins are skipped.
    """
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for name in dict.fromkeys(str(t) for t in table["target"]):
        sub = table[np.asarray(table["target"]).astype(str) == name]
        m = np.asarray(sub["n"]) > 0
        ax.plot(np.asarray(sub["mean_pred"], float)[m], np.asarray(sub["mean_true"], float)[m], "-o", ms=3,
                label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("mean true fraction")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    return save_figure(fig, path)


def grouped_metric_plot(table: Table, column: str, metric: str, path: Path, title: str | None = None) -> Path:
    """Bar plot of ``metric`` per value of ``column`` (e.g. test RMSE per band), with each bar's sample count."""
    labels = [str(v) for v in table[column]]
    values = np.asarray(table[metric], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(labels) + 1.5), 3.6))
    bars = ax.bar(range(len(labels)), values, color="C0")
    for bar, n in zip(bars, table["n"] if "n" in table.colnames else [None] * len(labels)):
        if n is not None:
            ax.annotate(f"N={int(n)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_xlabel(column)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by {column}")
    return save_figure(fig, path)


def display_rgb(image: np.ndarray, stretch: str = "asinh", percent: float = 99.5) -> np.ndarray:
    """A display image ``[H, W, 3]`` in [0, 1] from a band stack ``[C, H, W]`` (astropy.visualization).

    One or two bands: each band through :func:`astropy.visualization.simple_norm` (``stretch``,
    ``percent``), shown grey (one band) or as (band 0, mean, band 1). Three or more bands: the last
    three (reddest last in the usual blue-to-red band order) through
    :func:`astropy.visualization.make_lupton_rgb` after scaling each band to its ``percent`` percentile.
    """
    from astropy.visualization import make_lupton_rgb, simple_norm

    img = np.nan_to_num(np.asarray(image, dtype=float))
    if img.ndim == 2:
        img = img[None]

    def norm(band):
        if np.ptp(band) == 0:
            return np.zeros_like(band)
        return np.clip(np.asarray(simple_norm(band, stretch, percent=percent)(band), dtype=float), 0, 1)

    if img.shape[0] == 1:
        g = norm(img[0])
        return np.stack([g, g, g], axis=-1)
    if img.shape[0] == 2:
        a, b = norm(img[0]), norm(img[1])
        return np.stack([b, 0.5 * (a + b), a], axis=-1)
    bands = []
    for band in img[-3:][::-1]:  # R, G, B = the last three bands, reddest first
        band = band - np.percentile(band, 1)
        top = np.percentile(band, percent)
        bands.append(band / top if top > 0 else band)
    rgb = make_lupton_rgb(bands[0], bands[1], bands[2], minimum=0, stretch=0.5, Q=8)
    return rgb.astype(float) / 255.0


def completeness_purity_plot(curve: Table, path: Path, score_threshold: float | None = None,
                             title: str = "Completeness and purity") -> Path:
    """Completeness, purity and F1 against the detection-score threshold (a detection task's curves)."""
    t = np.asarray(curve["score_threshold"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for col, style in (("completeness", "-"), ("purity", "--"), ("f1", ":")):
        ax.plot(t, np.asarray(curve[col], dtype=float), style, label=col, lw=1.8)
    if score_threshold is not None:
        ax.axvline(score_threshold, color="grey", lw=0.8, label=f"score >= {score_threshold:g}")
    f1 = np.nan_to_num(np.asarray(curve["f1"], dtype=float), nan=-1)
    if len(f1) and f1.max() >= 0:
        best = int(np.argmax(f1))
        ax.plot(t[best], f1[best], "k*", ms=9, label=f"best F1 {f1[best]:.2f} at {t[best]:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def detection_overlay_plot(panels: list[dict], path: Path, title: str = "Truth and detections",
                           ncols: int = 4) -> Path:
    """A grid of images with their true boxes (green) and detections (orange, with scores).

    Each panel is a dict with ``image`` (``[C, H, W]``, shown through :func:`display_rgb`), ``truth``
    and ``detections`` (``[N, 4]`` boxes ``x0, y0, x1, y1`` in pixel edges), optional ``scores`` and
    ``title``.
    """
    from matplotlib.patches import Rectangle

    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        rgb = display_rgb(p["image"])
        ax.imshow(rgb, origin="upper", extent=(0, rgb.shape[1], rgb.shape[0], 0), interpolation="nearest")
        for x0, y0, x1, y1 in np.asarray(p.get("truth", np.zeros((0, 4))), dtype=float).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))
        scores = p.get("scores")
        for k, (x0, y0, x1, y1) in enumerate(np.asarray(p.get("detections", np.zeros((0, 4))), dtype=float).reshape(-1, 4)):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="orange", lw=1.0, ls="--"))
            if scores is not None and k < len(scores):
                ax.text(x0, y0, f"{float(scores[k]):.2f}", color="orange", fontsize=6, va="bottom")
        ax.set_title(p.get("title", ""), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
