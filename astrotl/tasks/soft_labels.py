"""Probability regression against soft labels (vote fractions): :class:`SoftLabelsTask` (``soft_labels``).

Each sample carries ``target``, a float32 tensor of ``K`` fractions that sum to 1 (e.g. the share of
volunteers who chose each answer), and optionally ``votes`` (the counts behind them). The head
produces ``K`` outputs; the task turns them into probabilities and fits them with one of four
losses:

``cross_entropy``
    cross-entropy with soft targets, ``-sum_k t_k log p_k`` with ``p = softmax(z)`` (mean over samples);
``mse``
    ``mean over N*K of (p - t)^2`` with ``p = softmax(z)``;
``rmse``
    ``sqrt(mse)`` over the batch: the quantity Perez-Carrasco et al. (2019) fit and report for CLASH;
``dirichlet_multinomial``
    the negative log-likelihood of the vote counts under a Dirichlet-multinomial whose
    concentrations are ``alpha = offset + softplus(z)`` (or ``offset + exp(z)``), as Zoobot fits
    Galaxy Zoo votes (Walmsley et al. 2022); ``p = alpha / sum(alpha)``. Needs the counts: the data
    set's ``votes`` (``data.votes_cols``, or ``data.count_col`` with ``target_cols``).

Metric definitions (test split, ``evaluate``; validation logs the same names through torchmetrics):

``rmse``
    ``sqrt( 1/(N K) * sum_i sum_k (p_ik - t_ik)^2 )``, over all samples and classes
    (Perez-Carrasco et al. 2019's definition);
``mae``
    ``1/(N K) * sum_i sum_k |p_ik - t_ik|``;
``kl``
    mean over samples of ``KL(t_i || p_i) = sum_k t_ik ln(t_ik / p_ik)`` in nats (``0 ln 0 = 0``;
    ``p`` clipped at 1e-7);
``accuracy``
    fraction of samples where ``argmax_k p_ik == argmax_k t_ik`` (ties: the first maximum);
``rmse_<name>``, ``mae_<name>``, ``bias_<name>``
    the same per class (``bias`` = mean ``p - t``);
``calibration_error``
    mean over classes of the count-weighted ``|mean p - mean t|`` in ``reliability_bins`` bins of ``p``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field
from torch import nn

from ..data import d4_augment, random_shift
from ..errors import ConfigError, DataError
from ..interfaces import ComponentConfig, DatasetInfo, ImageDataset, Task

log = logging.getLogger(__name__)

#: Predicted probabilities are clipped at this value in the KL divergence.
KL_EPS = 1e-7


class SoftLabelsTaskConfig(ComponentConfig):
    """Options of :class:`SoftLabelsTask`."""

    loss: Literal["cross_entropy", "mse", "rmse", "dirichlet_multinomial"] = Field(
        "cross_entropy", description="cross_entropy (soft targets), mse, rmse (Perez-Carrasco et al. 2019) or "
                                     "dirichlet_multinomial (vote counts, as Zoobot)")
    concentration: Literal["softplus", "exp"] = Field(
        "softplus", description="dirichlet_multinomial: concentrations = offset + softplus(z) or offset + exp(z)")
    concentration_offset: float = Field(
        1.0, gt=0, description="dirichlet_multinomial: smallest concentration (1: no U-shaped, spiky distributions)")
    augment: Literal["d4", "flip", "none"] = Field(
        "d4", description="training augmentation: d4 = random 90-degree rotations and flips")
    max_shift: float = Field(
        0.0, ge=0, lt=0.5, description="training augmentation: also shift each image by a random whole number of "
                                       "pixels, up to max_shift x its side, in x and y (edges repeated; "
                                       "Perez-Carrasco et al. 2019 used 0.05)")
    reliability_bins: int = Field(10, ge=2, description="bins of predicted probability in the reliability curve")
    rmse_by: list[str] = Field(
        default_factory=list, description="catalogue columns to group the test metrics by (e.g. band): "
                                          "tables/rmse_by_<col>.ecsv and plots/rmse_by_<col>.png")
    monitor: Literal["val_rmse", "val_loss"] = Field(
        "val_rmse", description="validation metric that checkpointing and early stopping watch (minimised)")
    sum_tolerance: float = Field(1e-3, gt=0, description="largest |sum of a target row - 1| accepted")


# -- losses -----------------------------------------------------------------------------------------------

def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets, ``mean_i( -sum_k t_ik log softmax(z_i)_k )``.

    Examples
    --------
    >>> z = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[0.5, 0.5]])
    >>> round(float(soft_cross_entropy(z, t)), 4)  # ln 2
    0.6931
    """
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mse_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over N*K of (p - t)^2``."""
    return ((probs - target) ** 2).mean()


def rmse_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean over N*K of (p - t)^2)`` (Perez-Carrasco et al. 2019); finite gradient at 0."""
    return torch.sqrt(mse_loss(probs, target).clamp_min(1e-12))


def concentrations(outputs: torch.Tensor, kind: str = "softplus", offset: float = 1.0) -> torch.Tensor:
    """Dirichlet concentrations from the head's outputs: ``offset + softplus(z)`` or ``offset + exp(z)``."""
    if kind == "exp":
        return offset + torch.exp(outputs.clamp(max=20.0))
    return offset + nn.functional.softplus(outputs)


def dirichlet_multinomial_nll(alpha: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of vote counts under a Dirichlet-multinomial, per sample.

    With ``n_k`` votes for answer ``k``, ``N = sum_k n_k`` and ``A = sum_k alpha_k``::

        log P(n | alpha) = ln G(A) + ln G(N + 1) - ln G(N + A)
                           + sum_k [ln G(n_k + alpha_k) - ln G(alpha_k) - ln G(n_k + 1)]

    (``G`` the gamma function), the probability of the ordered-blind counts, as Zoobot's loss.

    Parameters
    ----------
    alpha : Tensor, shape (B, K)
        Concentrations (> 0).
    votes : Tensor, shape (B, K)
        Vote counts (>= 0); a sample without votes contributes 0.

    Returns
    -------
    Tensor, shape (B,)
    """
    votes = votes.to(alpha.dtype)
    n = votes.sum(dim=1)
    a = alpha.sum(dim=1)
    log_p = (torch.lgamma(a) + torch.lgamma(n + 1) - torch.lgamma(n + a)
             + (torch.lgamma(votes + alpha) - torch.lgamma(alpha) - torch.lgamma(votes + 1)).sum(dim=1))
    return -log_p


# -- metric definitions (numpy; the test split) -----------------------------------------------------------

def soft_label_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE, KL and argmax accuracy of predicted probabilities ``pred`` against fractions ``true``.

    Parameters
    ----------
    true, pred : ndarray, shape (N, K)

    Returns
    -------
    dict
        ``rmse`` = sqrt(mean over N*K of (p - t)^2), ``mae``, ``mse``, ``kl`` (mean over samples of
        KL(t || p), nats, p clipped at 1e-7), ``accuracy`` (argmax p == argmax t), and per-class
        arrays ``rmse_per_class``, ``mae_per_class``, ``bias_per_class`` (mean p - t).

    Examples
    --------
    >>> t = np.array([[1.0, 0.0], [0.5, 0.5]]); p = np.array([[0.8, 0.2], [0.5, 0.5]])
    >>> round(soft_label_scores(t, p)["rmse"], 4)  # sqrt((0.04 + 0.04 + 0 + 0) / 4)
    0.1414
    """
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if len(t) == 0:
        nan = float("nan")
        k = t.shape[1] if t.ndim == 2 else 0
        return {"rmse": nan, "mae": nan, "mse": nan, "kl": nan, "accuracy": nan,
                "rmse_per_class": np.full(k, nan), "mae_per_class": np.full(k, nan), "bias_per_class": np.full(k, nan)}
    d = p - t
    pc = np.clip(p, KL_EPS, None)
    pc = pc / pc.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_terms = np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0) / pc), 0.0)
    return {
        "rmse": float(np.sqrt(np.mean(d ** 2))),
        "mae": float(np.mean(np.abs(d))),
        "mse": float(np.mean(d ** 2)),
        "kl": float(np.mean(kl_terms.sum(axis=1))),
        "accuracy": float(np.mean(np.argmax(p, axis=1) == np.argmax(t, axis=1))),
        "rmse_per_class": np.sqrt(np.mean(d ** 2, axis=0)),
        "mae_per_class": np.mean(np.abs(d), axis=0),
        "bias_per_class": np.mean(d, axis=0),
    }


def reliability_table(true: np.ndarray, pred: np.ndarray, names: list[str], n_bins: int = 10) -> Table:
    """Mean true fraction against mean predicted probability in ``n_bins`` equal-width bins of ``p``, per class."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for j, name in enumerate(names):
        which = np.clip(np.digitize(p[:, j], edges[1:-1]), 0, n_bins - 1) if len(p) else np.zeros(0, int)
        for b in range(n_bins):
            m = which == b
            n = int(m.sum())
            rows.append((name, edges[b], edges[b + 1], n,
                         float(p[m, j].mean()) if n else float("nan"), float(t[m, j].mean()) if n else float("nan")))
    return Table(rows=rows, names=("target", "bin_low", "bin_high", "n", "mean_pred", "mean_true"),
                 dtype=(str, float, float, int, float, float),
                 meta={"description": "per class: mean true fraction vs mean predicted probability in bins of the "
                                      "predicted probability (a calibrated model lies on the diagonal)"})


def calibration_error(table: Table) -> float:
    """Mean over classes of the count-weighted ``|mean_pred - mean_true|`` over the reliability bins."""
    errs = []
    for name in dict.fromkeys(table["target"]):
        sub = table[table["target"] == name]
        n = np.asarray(sub["n"], dtype=float)
        if n.sum() == 0:
            continue
        gap = np.abs(np.asarray(sub["mean_pred"], float) - np.asarray(sub["mean_true"], float))
        errs.append(float(np.nansum(n * np.nan_to_num(gap)) / n.sum()))
    return float(np.mean(errs)) if errs else float("nan")


def _column(table: Table, name: str) -> np.ndarray:
    col = table[name]
    return np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)


class SoftLabelsTask(Task):
    """Probability regression against soft labels (vote fractions): RMSE, KL, reliability curves."""

    name = "soft_labels"
    Config = SoftLabelsTaskConfig
    kind = "soft_labels"
    monitor = "val_rmse"
    monitor_mode = "min"
    headline_metric = "rmse"
    higher_is_better = False

    def __init__(self, config: SoftLabelsTaskConfig, info: DatasetInfo):
        super().__init__(config, info)
        if not info.targets:
            raise ConfigError(f"task '{self.name}' needs a data set with targets (soft labels); this one has none: set "
                              f"data.target_cols (or data.votes_cols) to the columns holding the fractions")
        if len(info.targets) < 2:
            raise ConfigError(f"task '{self.name}' needs at least 2 targets (fractions over K >= 2 answers), got "
                              f"{list(info.targets)}; list every answer's column in data.target_cols")
        self.names = [str(n) for n in info.targets]
        self.monitor = config.monitor

    # -- data ----------------------------------------------------------------------------------------------
    def output_dim(self) -> int:
        return len(self.names)

    def check_data(self, dataset: ImageDataset, split: str) -> None:
        """Targets of every sample are ``K`` non-negative fractions summing to 1; votes where the loss needs them."""
        if split == "predict":
            return
        dname = getattr(dataset, "name", "") or type(dataset).__name__
        where = f"{split} split of data set '{dname}'"
        info = dataset.info()
        if info.targets is not None and [str(n) for n in info.targets] != self.names:
            raise DataError(f"{where} has targets {list(info.targets)}, the training split {self.names}; give every "
                            f"split the same target columns in the same order")
        values = self._targets_of(dataset, where)
        if values.ndim != 2 or values.shape[1] != len(self.names):
            raise DataError(f"{where}: targets have shape {list(values.shape)}, expected [N, {len(self.names)}] for "
                            f"targets {self.names}; give one fraction per target")
        from ..datasets.common import check_target_rows

        kw = dict(where=where, names=self.names, tol=self.config.sum_tolerance, allow_unlabelled=split == "test",
                  what="sample", fix_sum="fix the targets, or set data.normalize_targets: true to renormalise rows")
        try:
            check_target_rows(values, **kw)
        except DataError as exc:
            ids = self._ids(dataset)
            if ids is not None:  # the same error again, naming the sample's catalogue id too
                try:
                    check_target_rows(values, ids=ids, **kw)
                except DataError as named:
                    raise named from None
            raise exc from None
        if self.config.loss == "dirichlet_multinomial":
            votes = dataset.votes() if callable(getattr(dataset, "votes", None)) else \
                (dataset[0].get("votes") if len(dataset) else None)
            if votes is None:
                raise DataError(f"{where} has no vote counts, which loss: dirichlet_multinomial needs; set data.count_col "
                                f"(number of voters) or data.votes_cols (raw counts), or use loss: cross_entropy")
        if split == "test" and self.config.rmse_by:
            cols = dataset.catalog().colnames
            for col in self.config.rmse_by:
                if col not in cols:
                    from ..errors import did_you_mean

                    raise DataError(f"task.rmse_by names column '{col}', which the test catalogue does not have"
                                    f"{did_you_mean(col, cols)}; add it to data.extra_columns, or remove it from "
                                    f"rmse_by (columns: {', '.join(cols[:15])})")

    @staticmethod
    def _ids(dataset: ImageDataset) -> np.ndarray | None:
        try:
            cat = dataset.catalog()
        except Exception:  # noqa: BLE001 -- ids only improve the message
            return None
        return np.asarray(cat["id"]) if "id" in cat.colnames and len(cat) == len(dataset) else None

    @staticmethod
    def _targets_of(dataset: ImageDataset, where: str) -> np.ndarray:
        getter = getattr(dataset, "targets", None)
        values = getter() if callable(getter) else None
        if values is None:  # a data set without targets(): read the samples
            rows = []
            for i in range(len(dataset)):
                sample = dataset[i]
                if "target" not in sample:
                    raise DataError(f"{where}: sample {i} has no 'target'; a soft_labels data set gives each sample "
                                    f"'target' (K fractions): set data.target_cols")
                rows.append(np.asarray(sample["target"], dtype=np.float64))
            values = np.stack(rows) if rows else np.zeros((0, 0))
        return np.asarray(values, dtype=np.float64)

    # -- training ------------------------------------------------------------------------------------------
    def batch_augment(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        if self.config.augment == "d4":
            batch["image"] = d4_augment(batch["image"], generator)
        elif self.config.augment == "flip":
            img = batch["image"]
            mask = (torch.rand(img.shape[0], generator=generator) < 0.5).to(img.device)
            batch["image"] = torch.where(mask[:, None, None, None], torch.flip(img, dims=(-1,)), img)
        if self.config.max_shift > 0:
            batch["image"] = random_shift(batch["image"], self.config.max_shift, generator)
        return batch

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities from the head's outputs: softmax, or normalised Dirichlet concentrations."""
        if self.config.loss == "dirichlet_multinomial":
            alpha = concentrations(outputs, self.config.concentration, self.config.concentration_offset)
            return alpha / alpha.sum(dim=1, keepdim=True)
        return torch.softmax(outputs, dim=1)

    def loss_from_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The configured loss of the head's outputs ``[B, K]`` against the batch's targets (or votes)."""
        c = self.config
        if c.loss == "dirichlet_multinomial":
            if "votes" not in batch:
                raise DataError("loss: dirichlet_multinomial needs vote counts ('votes' in each sample); set "
                                "data.count_col or data.votes_cols")
            alpha = concentrations(outputs, c.concentration, c.concentration_offset)
            return dirichlet_multinomial_nll(alpha, batch["votes"].to(alpha.dtype)).mean()
        target = batch["target"].to(outputs.dtype)
        if c.loss == "cross_entropy":
            return soft_cross_entropy(outputs, target)
        probs = torch.softmax(outputs, dim=1)
        return mse_loss(probs, target) if c.loss == "mse" else rmse_loss(probs, target)

    def training_loss(self, model: nn.Module, batch: dict[str, Any]):
        outputs = model(batch["image"]).float()
        loss = self.loss_from_outputs(outputs, batch)
        return loss, self.probabilities(outputs).detach()

    def make_metrics(self):
        """``rmse`` (all samples and classes), ``mae``, ``kl`` (mean KL(t || p)) and ``accuracy`` (argmax)."""
        import torchmetrics

        return torchmetrics.MetricCollection({
            "rmse": torchmetrics.MeanSquaredError(squared=False),
            "mae": torchmetrics.MeanAbsoluteError(),
            "kl": torchmetrics.KLDivergence(log_prob=False, reduction="mean"),
            "accuracy": torchmetrics.classification.MulticlassAccuracy(num_classes=len(self.names), average="micro"),
        }, compute_groups=False)

    def update_metrics(self, metrics, outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        probs = outputs.float()
        target = batch["target"].to(probs.device).float()
        ok = torch.isfinite(target).all(dim=1)
        if not bool(ok.any()):
            return
        probs, target = probs[ok], target[ok]
        metrics["rmse"].update(probs.flatten(), target.flatten())
        metrics["mae"].update(probs.flatten(), target.flatten())
        metrics["kl"].update(target, probs.clamp_min(KL_EPS))  # KLDivergence(p, q) is KL(p || q)
        metrics["accuracy"].update(probs, target.argmax(dim=1))

    # -- prediction and evaluation -------------------------------------------------------------------------
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        outputs = model(batch["image"]).float()
        probs = self.probabilities(outputs).cpu().numpy()
        alpha = concentrations(outputs, self.config.concentration, self.config.concentration_offset).cpu().numpy() \
            if self.config.loss == "dirichlet_multinomial" else None
        target = batch.get("target")
        target = target.float().cpu().numpy() if target is not None else None
        rows = []
        for i, idx in enumerate(batch["index"].cpu().numpy()):
            row: dict[str, Any] = {"index": int(idx)}
            if target is not None:
                labelled = bool(np.isfinite(target[i]).all())
                for j, n in enumerate(self.names):
                    row[f"true_{n}"] = np.float32(target[i, j])  # float32 as in the data: 0.1, not 0.10000000149
                row["true_class"] = self.names[int(np.argmax(target[i]))] if labelled else ""
            for j, n in enumerate(self.names):
                row[f"p_{n}"] = float(probs[i, j])
            row["pred_class"] = self.names[int(np.argmax(probs[i]))]
            if alpha is not None:
                for j, n in enumerate(self.names):
                    row[f"alpha_{n}"] = float(alpha[i, j])
            rows.append(row)
        return rows

    def _arrays(self, predictions: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true [N, K], pred [N, K], mask of evaluated rows) from the predictions table."""
        pcols = [f"p_{n}" for n in self.names]
        tcols = [f"true_{n}" for n in self.names]
        n = len(predictions)
        if not all(c in predictions.colnames for c in pcols + tcols):
            return np.zeros((0, len(self.names))), np.zeros((0, len(self.names))), np.zeros(n, dtype=bool)
        true = np.stack([_column(predictions, c) for c in tcols], axis=1) if n else np.zeros((0, len(self.names)))
        pred = np.stack([_column(predictions, c) for c in pcols], axis=1) if n else np.zeros((0, len(self.names)))
        ok = np.isfinite(true).all(axis=1) & np.isfinite(pred).all(axis=1)
        return true[ok], pred[ok], ok

    def evaluate(self, predictions: Table, truth: Table | None = None):
        """Metrics (see the module docstring) and tables ``per_target``, ``reliability``, ``rmse_by_<col>``."""
        true, pred, ok = self._arrays(predictions)
        metrics: dict[str, Any] = {"n_evaluated": int(len(true)), "n_targets": len(self.names)}
        tables: dict[str, Table] = {}
        if len(true) == 0:
            return metrics, tables
        s = soft_label_scores(true, pred)
        metrics.update(rmse=s["rmse"], mae=s["mae"], mse=s["mse"], kl=s["kl"], accuracy=s["accuracy"])
        base = soft_label_scores(true, np.broadcast_to(true.mean(axis=0), true.shape))
        metrics["rmse_mean_baseline"] = base["rmse"]
        rel = reliability_table(true, pred, self.names, self.config.reliability_bins)
        metrics["calibration_error"] = calibration_error(rel)
        for j, n in enumerate(self.names):
            metrics[f"rmse_{n}"] = float(s["rmse_per_class"][j])
            metrics[f"mae_{n}"] = float(s["mae_per_class"][j])
            metrics[f"bias_{n}"] = float(s["bias_per_class"][j])
        tables["per_target"] = Table({
            "target": self.names, "n": np.full(len(self.names), len(true)),
            "rmse": s["rmse_per_class"], "mae": s["mae_per_class"], "bias": s["bias_per_class"],
            "mean_true": true.mean(axis=0), "mean_pred": pred.mean(axis=0),
        }, meta={"description": "per target: RMSE and MAE of p - t over the test samples, bias = mean(p - t)"})
        tables["reliability"] = rel
        for col in self.config.rmse_by:
            if col in predictions.colnames:
                tables[f"rmse_by_{col}"] = self._grouped(predictions, col)
            else:
                log.warning("soft_labels: rmse_by column '%s' is not in the predictions table; skipped", col)
        return metrics, tables

    def _grouped(self, predictions: Table, column: str) -> Table:
        true, pred, ok = self._arrays(predictions)
        values = np.array([str(v) for v in np.ma.filled(np.ma.asarray(predictions[column][ok]).astype(str), "")],
                          dtype=str)
        rows = []
        for value in sorted(set(values), key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v)):
            m = values == value
            s = soft_label_scores(true[m], pred[m])
            rows.append((value, int(m.sum()), s["rmse"], s["mae"], s["kl"], s["accuracy"]))
        return Table(rows=rows, names=(column, "n", "rmse", "mae", "kl", "accuracy"),
                     dtype=(str, int, float, float, float, float),
                     meta={"column": column, "description": f"test metrics per value of '{column}' "
                                                            f"(rmse over the group's samples and all classes)"})

    def plots(self, predictions: Table, truth: Table | None, metrics: dict[str, Any], history: Table | None,
              plot_dir: Path) -> list[Path]:
        from ..plots import grouped_metric_plot, predicted_vs_true_plot, reliability_plot, residual_histograms_plot

        true, pred, _ = self._arrays(predictions)
        out: list[Path] = []
        if len(true) == 0:
            return out
        plot_dir = Path(plot_dir)
        out.append(predicted_vs_true_plot(true, pred, self.names, plot_dir / "predicted_vs_true.png",
                                          title=f"Predicted vs true fraction (test, N={len(true)})"))
        out.append(residual_histograms_plot(true, pred, self.names, plot_dir / "residuals.png"))
        out.append(reliability_plot(reliability_table(true, pred, self.names, self.config.reliability_bins),
                                    plot_dir / "reliability.png"))
        for col in self.config.rmse_by:
            if col in predictions.colnames:
                out.append(grouped_metric_plot(self._grouped(predictions, col), col, "rmse",
                                               plot_dir / f"rmse_by_{col}.png"))
        return out

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        if "rmse" not in metrics:
            return "No test samples with targets: predictions only.\n"
        lines = [
            f"Test set: {metrics['n_evaluated']} samples with soft labels over {metrics['n_targets']} targets "
            f"({', '.join(self.names)}); loss `{self.config.loss}`.",
            "",
            f"- RMSE: **{metrics['rmse']:.4f}** = sqrt(mean over all N x K sample-class pairs of (p - t)^2), "
            f"Perez-Carrasco et al. (2019)'s definition (predicting the test mean for every sample would give "
            f"{metrics['rmse_mean_baseline']:.4f})",
            f"- MAE: {metrics['mae']:.4f} (mean |p - t| over all N x K pairs)",
            f"- mean KL(t || p): {metrics['kl']:.4f} nats",
            f"- accuracy of argmax p against argmax t: {metrics['accuracy']:.3f}",
            f"- calibration error (mean over classes of the count-weighted |mean p - mean t| in "
            f"{self.config.reliability_bins} bins): {metrics['calibration_error']:.4f}",
        ]
        pt = tables.get("per_target")
        if pt is not None:
            lines += ["", "| target | mean true | mean predicted | RMSE | MAE | bias (p - t) |",
                      "|---|---|---|---|---|---|"]
            for r in pt:
                lines.append(f"| {r['target']} | {r['mean_true']:.3f} | {r['mean_pred']:.3f} | {r['rmse']:.4f} | "
                             f"{r['mae']:.4f} | {r['bias']:+.4f} |")
        for col in self.config.rmse_by:
            t = tables.get(f"rmse_by_{col}")
            if t is None:
                continue
            lines += ["", f"By `{col}`:", "", f"| {col} | N | RMSE | MAE | KL | accuracy |", "|---|---|---|---|---|---|"]
            for r in t:
                lines.append(f"| {r[col]} | {r['n']} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['kl']:.4f} | "
                             f"{r['accuracy']:.3f} |")
        return "\n".join(lines) + "\n"

    def headline(self, metrics: dict[str, Any]) -> str:
        """``test RMSE 0.0991 (240 samples)``."""
        value = metrics.get("rmse")
        if value is None:
            return ""
        n = metrics.get("n_evaluated")
        return f"test RMSE {float(value):.4f}" + (f" ({int(n)} samples)" if n is not None else "")

    def output_files(self) -> dict[str, str]:
        files = {
            "predictions.ecsv": "one row per test sample: catalogue columns, true_<target> and p_<target> per target, "
                                "true_class / pred_class (argmax)"
                                + (", alpha_<target> (Dirichlet concentrations)"
                                   if self.config.loss == "dirichlet_multinomial" else ""),
            "tables/per_target.ecsv": "RMSE, MAE and bias (p - t) per target",
            "tables/reliability.ecsv": "mean true fraction vs mean predicted probability in bins, per target",
            "plots/predicted_vs_true.png": "predicted probability vs true fraction, one panel per target",
            "plots/residuals.png": "histograms of p - t per target",
            "plots/reliability.png": "reliability curves (mean true fraction vs mean predicted probability)",
        }
        for col in self.config.rmse_by:
            files[f"tables/rmse_by_{col}.ecsv"] = f"test metrics per value of '{col}'"
            files[f"plots/rmse_by_{col}.png"] = f"test RMSE per value of '{col}'"
        return files


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
