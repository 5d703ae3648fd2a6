"""Real-image evaluation of open/globular cluster classifiers: as they are, and cross-validated.

:func:`evaluate_run` applies a finished run's model (e.g. trained on ``clustertype_sim``) to the real
Stellarium cluster images (``clustertype_stellarium``, every labelled image) and scores it with the run's
own task: accuracy, F1 and ROC AUC of ``globular``, the confusion matrix and the ROC curve::

    astrotl clustertype-evaluate runs/clustertype --out runs/clustertype_on_stellarium

:func:`cross_validate` fine-tunes on the real images with k-fold cross-validation: one ordinary
:func:`astrotl.engine.run` per fold, the fold chosen by the data set's ``n_folds`` / ``fold`` options
(test = fold ``i``, validation = fold ``i + 1``, training = the rest; stratified, whole overlap groups),
so that every real image is tested exactly once; it reports the mean and standard deviation over the
folds and the scores of the pooled out-of-fold predictions::

    astrotl clustertype-cv tasks/clustertype_stellarium.yaml --out runs/clustertype_cv.ecsv
    astrotl clustertype-cv tasks/clustertype_stellarium.yaml --set backbone.weights=none \\
        --set name=clustertype_stellarium_scratch --out runs/clustertype_cv_scratch.ecsv
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from astrotl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Test metrics the cross-validation table keeps per fold (when the task reports them).
CV_METRICS = ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc")


def stellarium_data_section(meta: dict[str, Any], root: str | None = None) -> dict[str, Any]:
    """The ``data:`` section that shows the Stellarium images to a model trained on ``meta``'s data:
    the same image size and band names (one grey channel), every image (``predict`` split)."""
    bands = list(meta.get("bands") or ["L"])
    if len(bands) not in (1, 3):
        raise DataError(f"the run's model takes {len(bands)} bands {bands}; the Stellarium images have 1 (grey) or "
                        f"3 (R, G, B) channels: give --data with a data section that matches the model")
    section: dict[str, Any] = {"name": "clustertype_stellarium", "size": int(meta.get("image_size") or 64),
                               "color": "grayscale" if len(bands) == 1 else "rgb", "bands": bands,
                               "pixel_norm": "dataset"}
    if root:
        section["root"] = root
    return section


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` wrote and measured."""

    out: Path
    metrics: dict[str, Any]
    tables: dict[str, Table]
    line: str


def evaluate_run(run_dir: str | Path, registries, *, out: str | Path, overrides: list[str] | None = None,
                 data_file: str | Path | None = None, split: str = "predict", root: str | None = None,
                 overwrite: bool = False, device: str = "auto", batch_size: int | None = None) -> EvaluationResult:
    """Apply a finished classification run to labelled (by default the Stellarium) images and score it.

    Parameters
    ----------
    run_dir : path-like
        A finished classification run, e.g. ``runs/clustertype``.
    registries : astrotl.plugins.Registries
        Component registries.
    out : path-like
        Output folder: ``predictions.ecsv``, ``metrics.json``, ``tables/``, ``plots/``, ``report.md``.
    overrides, data_file : optional
        Data section changes as ``astrotl predict`` takes them. Without both, the data section is
        :func:`stellarium_data_section` for the run's model (``root``: the Stellarium cache).
    split : str
        Split of the data to score (default ``predict``: every image; unlabelled ones are predicted, not
        scored).
    overwrite : bool
        Replace what astrotl wrote in ``out`` before.

    Returns
    -------
    EvaluationResult
    """
    import yaml

    from astrotl.explain import check_output_dir, open_output_dir
    from astrotl.io import write_json, write_text
    from astrotl.loadrun import load_run
    from astrotl.predict import predict

    check_output_dir(out, overwrite=overwrite)
    out = Path(out)
    loaded = load_run(run_dir, registries)
    task_cls, _ = loaded.config.component("task")
    if getattr(task_cls, "kind", None) != "classification":
        raise ConfigError(f"'{loaded.path}' is a {getattr(task_cls, 'kind', '?')} run; clustertype-evaluate scores "
                          f"classifiers")
    section = stellarium_data_section(loaded.meta, root) if data_file is None and not overrides else None
    rd = open_output_dir(out)
    try:
        if section is not None:  # the data section used, kept with the outputs (and read back by predict)
            data_file = write_text(out / "data.yaml", yaml.safe_dump({"data": section}, sort_keys=False))
        pred_path = predict(run_dir, registries, out=out / "predictions.ecsv", overrides=overrides,
                            data_file=data_file, overwrite=True, batch_size=batch_size, device=device, split=split)
        used = load_run(run_dir, registries, overrides=overrides, data_file=data_file).config.to_dict()["data"]
        table = Table.read(pred_path, format="ascii.ecsv")
        metrics, tables, line = score_predictions(loaded, table, out, f"{loaded.path} on {used.get('name')}")
        write_json(out / "metrics.json", {"metrics": metrics, "headline": line, "run": str(loaded.path),
                                          "data": used, "split": split})
    finally:
        rd.close()
    return EvaluationResult(out, metrics, tables, line)


def _task_for(loaded):
    from astrotl.interfaces import DatasetInfo

    meta = loaded.meta
    info = DatasetInfo(bands=tuple(meta.get("bands") or ()), classes=tuple(meta.get("classes") or ()),
                       image_size=meta.get("image_size"))
    task_cls, task_cfg = loaded.config.component("task")
    return task_cls(task_cfg, info)


def score_predictions(loaded, table: Table, out: Path, title: str) -> tuple[dict[str, Any], dict[str, Table], str]:
    """Score a predictions table with the run's task: tables under ``out/tables``, plots under ``out/plots``,
    ``out/report.md``; returns ``(metrics, tables, one-line summary)``."""
    from astrotl.engine import rows_table
    from astrotl.io import write_table, write_text

    task = _task_for(loaded)
    metrics, tables = task.evaluate(table, rows_table([]))
    if "accuracy" not in metrics:
        raise DataError(f"no labelled samples among the {len(table)} predictions; score data with labels "
                        f"(classes {list(task.classes)})")
    for name, t in tables.items():
        write_table(out / "tables" / f"{name}.ecsv", t)
    plots = task.plots(table, rows_table([]), metrics, Table(), out / "plots")
    line = (f"{title}: {metrics['n_evaluated']} labelled images, " + task.headline(metrics)
            + "".join(f", {k.replace('_', ' ')} {metrics[k]:.3f}" for k in ("f1", "roc_auc") if k in metrics))
    lines = [f"# {title}", "", f"**{line}**", "", task.report(table, metrics, tables), "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    write_text(out / "report.md", "\n".join(lines))
    return metrics, tables, line


# -- cross-validation ---------------------------------------------------------------------------------


@dataclass
class CVResult:
    """Per-fold metrics (``table``), the pooled out-of-fold scores and the summary line."""

    table: Table
    pooled: dict[str, Any]
    line: str


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def cross_validate(task_file: str | Path, registries, *, out: str | Path, folds: int = 5,
                   overrides: list[str] | None = None, overwrite: bool = False, reuse: bool = False) -> CVResult:
    """k-fold cross-validation of a ``clustertype_stellarium`` task: one run per fold, then mean +- std.

    Parameters
    ----------
    task_file : path-like
        A task file with ``data: {name: clustertype_stellarium, ...}``.
    registries : astrotl.plugins.Registries
        Component registries.
    out : path-like
        The per-fold table (``.ecsv``); its meta holds the mean, standard deviation and pooled scores.
    folds : int
        Number of folds ``k`` (3 .. 20).
    overrides : list of str, optional
        ``--set`` overrides for every fold (e.g. ``backbone.weights=none``).
    overwrite : bool
        Replace earlier fold runs and ``out``.
    reuse : bool
        Keep a fold's finished run when its configuration is the one this call would run.

    Returns
    -------
    CVResult
    """
    import yaml

    from astrotl.config import load_config
    from astrotl.engine import run
    from astrotl.io import check_output_file, write_table
    from astrotl.rundir import RunDirectory

    if not 3 <= folds <= 20:
        raise ConfigError(f"--folds {folds}: use 3 to 20 folds (5 is usual)")
    check_output_file(out, overwrite=overwrite, suffixes=(".ecsv",))
    pooled_file = Path(out).with_name(Path(out).stem + "_predictions.ecsv")
    check_output_file(pooled_file, overwrite=overwrite, suffixes=(".ecsv",))
    base = load_config(task_file, registries, overrides)
    if base.stages:
        raise ConfigError("clustertype-cv runs one training per fold; give a task file without stages")
    if base.component("data")[0].name != "clustertype_stellarium":
        raise ConfigError(f"clustertype-cv needs data: {{name: clustertype_stellarium}}, '{task_file}' has "
                          f"'{base.component('data')[0].name}'; the folds are that data set's n_folds / fold options")
    configs = [load_config(task_file, registries, [*(overrides or []), f"data.n_folds={folds}", f"data.fold={i}",
                                                   f"name={base.run.name}_fold{i}"]) for i in range(folds)]
    rows, oof = [], []
    for i, cfg in enumerate(configs):
        rd = RunDirectory(Path(cfg.run.output_dir) / cfg.run.name)
        same = False
        if reuse and (rd.status() or {}).get("status") == "finished" and (rd.path / "config.resolved.yaml").is_file():
            same = yaml.safe_load((rd.path / "config.resolved.yaml").read_text()) == yaml.safe_load(cfg.to_yaml())
        if same:
            log.info("fold %d/%d: reusing the finished run %s", i + 1, folds, rd.path)
            import json

            metrics = json.loads((rd.path / "metrics.json").read_text())["metrics"]
            path = rd.path
        else:
            log.info("fold %d/%d: %s", i + 1, folds, rd.path)
            result = run(cfg, registries, overwrite=overwrite)
            metrics, path = result.metrics, result.path
        row = {"fold": i, "run": str(path), "n_train": metrics.get("n_train"), "n_val": metrics.get("n_val"),
               "n_test": metrics.get("n_test"), "epochs_trained": metrics.get("epochs_trained")}
        for m in CV_METRICS:
            v = metrics.get(f"test_{m}")
            row[m] = float(v) if isinstance(v, (int, float)) else float("nan")
        rows.append(row)
        preds = Table.read(Path(path) / "predictions.ecsv", format="ascii.ecsv")
        if "fold" not in preds.colnames:
            preds["fold"] = np.full(len(preds), i)
        oof.append(preds)
    table = Table(rows=[[r[k] for k in rows[0]] for r in rows], names=list(rows[0]))
    summary = {m: dict(zip(("mean", "std"), _mean_std(list(table[m])))) for m in CV_METRICS}
    pooled_preds = vstack(oof, metadata_conflicts="silent")
    from astrotl.loadrun import load_run

    loaded = load_run(rows[-1]["run"], registries)
    task = _task_for(loaded)
    from astrotl.engine import rows_table

    pooled, _ = task.evaluate(pooled_preds, rows_table([]))
    pooled = {k: v for k, v in pooled.items() if isinstance(v, (int, float))}
    table.meta.update({"task_file": str(task_file), "overrides": list(overrides or []), "folds": folds,
                       "mean_std": summary, "pooled_out_of_fold": pooled,
                       "description": "one row per fold: test = fold i, val = fold i+1, train = the rest "
                                      "(clustertype_stellarium n_folds/fold); meta: mean and sample std over folds, "
                                      "scores of all out-of-fold predictions pooled"})
    write_table(out, table)
    write_table(pooled_file, pooled_preds)
    parts = [f"{m.replace('_', ' ')} {summary[m]['mean']:.3f} +- {summary[m]['std']:.3f}"
             for m in ("accuracy", "f1", "roc_auc") if math.isfinite(summary[m]["mean"])]
    pooled_parts = [f"{m.replace('_', ' ')} {pooled[m]:.3f}" for m in ("accuracy", "f1", "roc_auc") if m in pooled]
    line = (f"{folds}-fold CV of {base.run.name} ({int(pooled.get('n_evaluated', 0))} images): "
            + ", ".join(parts) + "; pooled out-of-fold: " + ", ".join(pooled_parts))
    return CVResult(table, pooled, line)
