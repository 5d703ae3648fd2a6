"""The ``clash_morphology`` task: per-galaxy, per-band vote fractions as Perez-Carrasco et al. (2019).

:class:`ClashMorphologyTask` is the core's ``soft_labels`` task (:mod:`astrotl.tasks.soft_labels`)
with the paper's defaults and outputs:

* the loss defaults to ``rmse`` (the paper's), the test metrics are grouped by ``band`` by default
  (``tables/rmse_by_band.ecsv``, ``plots/rmse_by_band.png``) and the per-band rows come in
  wavelength order (F225W ... F160W) with the pivot wavelength and the RMSE of each class;
* ``plots/rmse_band_class.png``: RMSE per band and class (where does the network struggle?);
* ``tables/catalogue.ecsv``: one row per (galaxy, band) with the five probabilities;
* metric definitions in the report, the paper's RMSE and the one its public code computes.

Metric definitions (beyond :mod:`astrotl.tasks.soft_labels`):

``rmse``
    ``sqrt( 1/(N K) sum_i sum_k (p_ik - t_ik)^2 )`` over all N test stamps and K = 5 classes (the
    paper's RMSE);
``rmse_stamp_mean``
    ``1/N sum_i sqrt( 1/K sum_k (p_ik - t_ik)^2 )``: the mean of per-stamp RMSEs, which is what the
    paper's public Keras code (``K.sqrt(K.mean(K.square(y_pred - y_true), axis=-1))``, averaged by
    ``model.evaluate``) returns; never larger than ``rmse``;
``mae_<class>``
    ``1/N sum_i |p_ik - t_ik|`` per class;
``rmse_vote_noise`` (simulated data only)
    RMSE between the sampled vote fractions (the targets) and the vote model's expected fractions
    (``true_<class>`` of the simulator's catalogue): how far a perfect predictor of the vote model
    would still be from the noisy targets;
``rmse_vs_expected`` (simulated data only)
    RMSE of the predictions against the vote model's expected fractions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from pydantic import Field

from astrotl.tasks.soft_labels import SoftLabelsTask, SoftLabelsTaskConfig, soft_label_scores

from .simulate import CLASH_BANDS

log = logging.getLogger(__name__)

__all__ = ["ClashMorphologyTask", "ClashMorphologyTaskConfig", "PAPER_RMSE", "band_order", "stamp_mean_rmse"]

#: Test-set RMSE of Perez-Carrasco et al. (2019) on real CLASH stamps.
PAPER_RMSE = 0.0991


class ClashMorphologyTaskConfig(SoftLabelsTaskConfig):
    """Options of :class:`ClashMorphologyTask` (those of ``soft_labels`` with the paper's defaults)."""

    loss: Literal["cross_entropy", "mse", "rmse", "dirichlet_multinomial"] = Field(
        "rmse", description="rmse (Perez-Carrasco et al. 2019), cross_entropy (soft targets), mse or "
                            "dirichlet_multinomial (vote counts)")
    rmse_by: list[str] = Field(
        default_factory=lambda: ["band"],
        description="catalogue columns to group the test metrics by (default band: 16 rows for CLASH)")


def band_order(values) -> list[str]:
    """Band names in CLASH wavelength order (F225W ... F160W); names CLASH did not use follow, sorted.

    Examples
    --------
    >>> band_order(["F160W", "F435W", "F225W", "X"])
    ['F225W', 'F435W', 'F160W', 'X']
    """
    rank = {b: i for i, b in enumerate(CLASH_BANDS)}
    return sorted({str(v) for v in values}, key=lambda b: (rank.get(b.upper(), len(rank)), b))


def stamp_mean_rmse(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean over stamps of the per-stamp RMSE over classes (the paper's public code's loss and score).

    Examples
    --------
    >>> t = np.array([[1.0, 0.0], [0.5, 0.5]]); p = np.array([[0.8, 0.2], [0.5, 0.5]])
    >>> round(stamp_mean_rmse(t, p), 4)  # (0.2 + 0) / 2
    0.1
    """
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.mean(np.sqrt(np.mean(d ** 2, axis=1)))) if len(d) else float("nan")


class ClashMorphologyTask(SoftLabelsTask):
    """CLASH morphology as vote fractions per galaxy and band (Perez-Carrasco et al. 2019): RMSE per band, catalogue."""

    name = "clash_morphology"
    Config = ClashMorphologyTaskConfig
    default_dataset = "clash_sim"

    # -- evaluation ----------------------------------------------------------------------------------
    def _expected(self, predictions: Table, ok: np.ndarray) -> np.ndarray | None:
        """The simulator's expected vote fractions (``cat_true_<class>``) of the evaluated rows, if present."""
        cols = [f"cat_true_{n}" for n in self.names]
        if not all(c in predictions.colnames for c in cols):
            return None
        exp = np.stack([np.ma.filled(np.ma.asarray(predictions[c], dtype=np.float64), np.nan) for c in cols], axis=1)
        exp = exp[ok]
        return exp if np.isfinite(exp).all() else None

    def _grouped(self, predictions: Table, column: str) -> Table:
        table = super()._grouped(predictions, column)
        if column != "band" or len(table) == 0:
            return table
        true, pred, ok = self._arrays(predictions)
        bands = np.array([str(v) for v in np.ma.filled(np.ma.asarray(predictions[column][ok]).astype(str), "")])
        order = {b: i for i, b in enumerate(band_order(table[column]))}
        table = table[np.argsort([order[str(b)] for b in table[column]], kind="stable")]
        pivots = [CLASH_BANDS[str(b).upper()].pivot_nm if str(b).upper() in CLASH_BANDS else np.nan
                  for b in table[column]]
        table.add_column(np.asarray(pivots, dtype=float), name="pivot_nm", index=1)
        table["rmse_stamp_mean"] = [stamp_mean_rmse(true[bands == b], pred[bands == b]) for b in table[column]]
        for j, n in enumerate(self.names):
            per = [soft_label_scores(true[bands == b], pred[bands == b])["rmse_per_class"][j] for b in table[column]]
            table[f"rmse_{n}"] = np.asarray(per, dtype=float)
        for j, n in enumerate(self.names):
            table[f"mean_true_{n}"] = [float(true[bands == b, j].mean()) for b in table[column]]
        table.meta["description"] = ("test metrics per band in wavelength order: rmse over the band's stamps and all "
                                     "classes, rmse_<class> per class, mean_true_<class> the mean vote fraction")
        return table

    def evaluate(self, predictions: Table, truth: Table | None = None):
        """The ``soft_labels`` metrics and tables plus ``rmse_stamp_mean``, the catalogue and the vote-noise floor."""
        metrics, tables = super().evaluate(predictions, truth)
        true, pred, ok = self._arrays(predictions)
        tables["catalogue"] = self._catalogue(predictions)
        if len(true) == 0:
            return metrics, tables
        metrics["rmse_stamp_mean"] = stamp_mean_rmse(true, pred)
        if "galaxy_id" in predictions.colnames:
            metrics["n_galaxies"] = int(len(set(np.asarray(predictions["galaxy_id"][ok]).astype(str))))
        if "band" in predictions.colnames:
            metrics["n_bands"] = int(len(set(np.asarray(predictions["band"][ok]).astype(str))))
        expected = self._expected(predictions, ok)
        if expected is not None:
            metrics["rmse_vote_noise"] = soft_label_scores(true, expected)["rmse"]
            metrics["rmse_vs_expected"] = soft_label_scores(expected, pred)["rmse"]
        return metrics, tables

    def _catalogue(self, predictions: Table) -> Table:
        """One row per (galaxy, band): ids, the five probabilities, the predicted class and the targets."""
        cols = [c for c in ("id", "galaxy_id", "band", "cluster", "object") if c in predictions.colnames]
        cols += [f"p_{n}" for n in self.names if f"p_{n}" in predictions.colnames]
        cols += [c for c in ("pred_class",) if c in predictions.colnames]
        cols += [f"true_{n}" for n in self.names if f"true_{n}" in predictions.colnames]
        cols += [c for c in ("true_class",) if c in predictions.colnames]
        out = Table(predictions[cols], copy=True) if cols else Table()
        out.meta = {"description": "one row per (galaxy, band): predicted probabilities p_<class>, argmax pred_class, "
                                   "and the vote fractions true_<class> (targets) where known",
                    "classes": list(self.names)}
        return out

    # -- plots and report ------------------------------------------------------------------------------
    def plots(self, predictions: Table, truth: Table | None, metrics: dict[str, Any], history: Table | None,
              plot_dir: Path) -> list[Path]:
        out = super().plots(predictions, truth, metrics, history, plot_dir)
        if "band" in self.config.rmse_by and "band" in predictions.colnames:
            table = self._grouped(predictions, "band")
            if len(table):
                out.append(band_class_plot(table, self.names, Path(plot_dir) / "rmse_band_class.png"))
        return out

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        text = super().report(predictions, metrics, tables)
        if "rmse" not in metrics:
            return text
        lines = ["", "Definitions (Perez-Carrasco et al. 2019): one sample is one band of one galaxy; "
                 "p_ik is the predicted probability of class k for stamp i (softmax over "
                 f"{', '.join(self.names)}), t_ik the fraction of classifiers who chose it.", "",
                 f"- RMSE = sqrt( 1/(N K) sum_i sum_k (p_ik - t_ik)^2 ) = **{metrics['rmse']:.4f}** "
                 f"(N = {metrics['n_evaluated']} stamps, K = {len(self.names)}); the paper reports {PAPER_RMSE} on "
                 f"real CLASH test stamps.",
                 f"- mean per-stamp RMSE, 1/N sum_i sqrt( 1/K sum_k (p_ik - t_ik)^2 ) = "
                 f"{metrics['rmse_stamp_mean']:.4f}: what the paper's public Keras code computes as its loss and "
                 f"test score (never larger than the RMSE).",
                 "- per-class MAE = 1/N sum_i |p_ik - t_ik|: "
                 + ", ".join(f"{n} {metrics[f'mae_{n}']:.4f}" for n in self.names if f"mae_{n}" in metrics) + "."]
        if "rmse_vote_noise" in metrics:
            lines += [f"- simulated data: the sampled vote fractions differ from the vote model's expected fractions "
                      f"by RMSE {metrics['rmse_vote_noise']:.4f} (the vote-noise floor: a perfect model of the "
                      f"simulated classifiers scores about this); the predictions differ from the expected fractions "
                      f"by RMSE {metrics['rmse_vs_expected']:.4f}. Simulated numbers are not comparable with the "
                      f"paper's {PAPER_RMSE}."]
        if "n_galaxies" in metrics:
            lines += [f"- {metrics['n_galaxies']} galaxies in {metrics.get('n_bands', '?')} band(s); "
                      f"`tables/catalogue.ecsv` has one row per (galaxy, band) with the five probabilities."]
        return text + "\n".join(lines) + "\n"

    def output_files(self) -> dict[str, str]:
        files = super().output_files()
        files["tables/catalogue.ecsv"] = "one row per (galaxy, band): id, galaxy_id, band, p_<class>, pred_class, " \
                                         "true_<class>"
        if "band" in self.config.rmse_by:
            files["tables/rmse_by_band.ecsv"] = "test metrics per band in wavelength order, with RMSE per class"
            files["plots/rmse_band_class.png"] = "RMSE per band (rows) and class (columns)"
        return files


def band_class_plot(table: Table, names: list[str], path: Path) -> Path:
    """Heat map of RMSE per band (rows, wavelength order) and class (columns), with the band's overall RMSE."""
    import astrotl.plots  # noqa: F401 -- selects the non-interactive backend
    import matplotlib.pyplot as plt

    from astrotl.io import save_figure

    bands = [str(b) for b in table["band"]]
    m = np.stack([np.asarray(table[f"rmse_{n}"], dtype=float) for n in names], axis=1)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3.0, 0.32 * len(bands) + 1.6))
    im = ax.imshow(m, cmap="viridis", aspect="auto", vmin=0.0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 * np.nanmax(m) else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    overall = np.asarray(table["rmse"], dtype=float)
    ax.set_yticks(range(len(bands)), [f"{b} ({r:.3f})" for b, r in zip(bands, overall)])
    ax.set_xlabel("class")
    ax.set_ylabel("band (RMSE over all classes)")
    ax.set_title("Test RMSE per band and class")
    fig.colorbar(im, ax=ax, label="RMSE")
    return save_figure(fig, path)
