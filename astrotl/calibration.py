"""Probability calibration: temperature scaling, expected calibration error, reliability diagrams.

A network trained with cross-entropy on a few hundred labels is usually over-confident: its top-class
probability exceeds its accuracy. Temperature scaling (Guo et al. 2017) divides every logit by one number
``T`` fitted on held-out data (the validation split) by minimising the negative log-likelihood; ``T > 1``
softens over-confident predictions. The predicted class of a single model does not change.

The classification task fits ``T`` after training when ``task.calibration: temperature``; the value is a
buffer of the model (``temperature`` in ``model.safetensors``), so ``astrotl predict`` applies it too.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> labels = torch.randint(0, 3, (2000,), generator=g)
>>> logits = 2.0 * torch.nn.functional.one_hot(labels, 3).float() + torch.randn(2000, 3, generator=g)
>>> # the true posterior is softmax(2 x logits) (unit Gaussian noise): softmax(5 x logits) is over-confident
>>> T = fit_temperature(lambda t: torch.softmax(5 * logits / t, dim=1), labels)
>>> 2.0 < T < 3.0
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table

log = logging.getLogger(__name__)

__all__ = ["fit_temperature", "nll", "expected_calibration_error", "reliability_table", "reliability_plot",
           "T_MIN", "T_MAX"]

#: Bounds of the fitted temperature.
T_MIN, T_MAX = 0.05, 20.0


def nll(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    p = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if len(y) == 0:
        return float("nan")
    return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())


def fit_temperature(probs_at: Callable[[float], torch.Tensor], labels: torch.Tensor | np.ndarray,
                    t_min: float = T_MIN, t_max: float = T_MAX, iters: int = 40) -> float:
    """The temperature minimising the NLL of ``probs_at(T)`` (``[N, K]`` probabilities) on ``labels``.

    A coarse log-spaced grid followed by golden-section refinement in ``log T`` (deterministic, no
    gradients: ``probs_at`` may average over test-time transforms). Returns 1.0 without labelled samples.
    """
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if len(y) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return nll(probs_at(math.exp(log_t)), y)

    lo, hi = math.log(t_min), math.log(t_max)
    grid = np.linspace(lo, hi, 25)
    values = [loss(v) for v in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = loss(d)
    cands = [(values[best], grid[best]), (fc, c), (fd, d)]
    return float(math.exp(min(cands)[1]))


def _top(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


def _conf_correct(probs, labels, confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    if confidence is not None:
        return np.asarray(confidence, float), np.asarray(correct, float)
    return _top(probs, labels)


def expected_calibration_error(probs, labels, n_bins: int = 15, *, confidence=None, correct=None) -> float:
    """Top-label expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width bins.

    Give ``probs`` ``[N, K]`` and ``labels`` ``[N]``, or the per-sample ``confidence`` and ``correct`` directly.
    """
    conf, ok = _conf_correct(probs, labels, confidence, correct)
    if len(conf) == 0:
        return float("nan")
    table = reliability_table(confidence=conf, correct=ok, n_bins=n_bins)
    n = np.asarray(table["n"], dtype=float)
    acc = np.nan_to_num(np.asarray(table["accuracy"], float))
    gap = np.abs(acc - np.nan_to_num(np.asarray(table["confidence"], float)))
    return float((n * gap).sum() / n.sum())


def reliability_table(probs=None, labels=None, n_bins: int = 15, *, confidence=None, correct=None) -> Table:
    """Per confidence bin: its edges, number of samples, mean confidence and accuracy (NaN when empty)."""
    conf, ok = _conf_correct(probs, labels, confidence, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = which == b
        k = int(m.sum())
        rows.append((edges[b], edges[b + 1], k, float(conf[m].mean()) if k else np.nan,
                     float(ok[m].mean()) if k else np.nan))
    return Table(rows=rows, names=("bin_low", "bin_high", "n", "confidence", "accuracy"),
                 meta={"description": "reliability: mean top-class probability and accuracy per confidence bin"})


def reliability_plot(tables: dict[str, Table], path: str | Path, title: str = "Reliability diagram") -> Path:
    """Accuracy against confidence per bin for each table (e.g. ``{"before (ECE 0.12)": ..., "after": ...}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for (label, t), style in zip(tables.items(), ("-o", "-s", "-^", "-v")):
        keep = np.asarray(t["n"]) > 0
        ax.plot(np.asarray(t["confidence"])[keep], np.asarray(t["accuracy"])[keep], style, ms=4, label=label)
        centres = 0.5 * (np.asarray(t["bin_low"]) + np.asarray(t["bin_high"]))
        ax_n.step(centres, np.asarray(t["n"]), where="mid", label=label)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax_n.set_xlabel("confidence (top-class probability)")
    ax_n.set_ylabel("samples")
    return save_figure(fig, path)
