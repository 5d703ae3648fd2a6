"""k-fold cross-validation: stable numbers (and models) from a few hundred labels.

With ``cv: {k: 5}`` in a task file, ``astrotl run`` pools the data set's training and validation splits,
deals them into ``k`` folds (stratified by class; all samples of one group -- ``data.group_col`` -- in
the same fold) and trains ``k`` ordinary runs ``<run>/folds/<i>/``, fold ``i`` validating (checkpoint
selection, early stopping, calibration) on fold ``i`` and training on the others. The test split is not
touched: every fold model is tested on it, and the run reports the mean +- standard deviation over
folds of every test metric (``cv.ecsv``, ``metrics.json``, ``report.md``).

With ``test: fold`` (for data sets too small to spare a test split) the test split is pooled too: fold ``i``
is fold model ``i``'s test set, fold ``i + 1`` (mod ``k``) its validation set and the other ``k - 2`` folds
its training set, so every labelled sample is tested exactly once. The run then also scores the pooled
out-of-fold predictions (``pooled_test_*`` in ``metrics.json``; ``predictions.ecsv`` with a ``fold`` column).

Options::

    cv:
      k: 5            # folds
      keep: none      # or ensemble: the run's predictions.ecsv averages the k models' class probabilities
      refit: false    # true: one more run, <run>/refit/, on all training + validation labels for the
                      #   median best epoch of the folds; it becomes the run's model (astrotl predict,
                      #   weights: run:<run>)
      seed: 0         # fold assignment
      test: split     # or fold: test each fold model on its own fold (k >= 3; no ensemble or refit)

``--resume`` skips finished folds and continues the one that stopped. Each fold directory is a complete
run (``astrotl predict <run>/folds/2`` works); the k fold models can also be combined on new data with
``astrotl predict`` per fold and ``astrotl ensemble``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table, vstack

from .config import ResolvedConfig
from .errors import ConfigError, RunDirError
from .io import atomic_path, write_json, write_table, write_text
from .rundir import RunDirectory

log = logging.getLogger(__name__)

FOLDS_DIR = "folds"
REFIT_DIR = "refit"

__all__ = ["fold_assignment", "PooledDataset", "run_cv", "FOLDS_DIR", "REFIT_DIR"]


def fold_assignment(labels: np.ndarray, k: int, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """A fold number ``0..k-1`` per sample: stratified by label, whole groups kept together, seeded.

    Units (samples, or groups when given) are shuffled per class (a group's most common label) and dealt
    round-robin into the folds, the dealing continuing across classes so that the folds differ in size by
    at most one unit.

    Examples
    --------
    >>> f = fold_assignment(np.array([0] * 6 + [1] * 4), k=2)
    >>> [int((f == i).sum()) for i in range(2)], [int(((f == i) & (np.arange(10) >= 6)).sum()) for i in range(2)]
    ([5, 5], [2, 2])
    """
    labels = np.asarray(labels)
    n = len(labels)
    if groups is not None:
        uniq, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        unit_labels = np.array([np.bincount(labels[inverse == g][labels[inverse == g] >= 0]).argmax()
                                if (labels[inverse == g] >= 0).any() else -1 for g in range(len(uniq))])
    else:
        inverse = np.arange(n)
        unit_labels = labels
    if len(unit_labels) < k:
        raise ConfigError(f"cv.k={k} folds but the pooled splits hold only {len(unit_labels)} "
                          f"{'groups' if groups is not None else 'samples'}; lower cv.k")
    rng = np.random.default_rng(seed)
    unit_fold = np.empty(len(unit_labels), dtype=np.int64)
    start = 0
    for c in np.unique(unit_labels):
        members = rng.permutation(np.flatnonzero(unit_labels == c))
        unit_fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return unit_fold[inverse]


class PooledDataset(torch.utils.data.Dataset):
    """Several data sets (the training and validation splits) as one, keeping ``catalog()``, ``labels()``,
    ``groups()`` and any other per-sample array method (concatenated)."""

    collate_fn = None

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        #: the first part's collation (an instance attribute: the engine's loaders look here too)
        self.collate_fn = getattr(type(self.parts[0]), "collate_fn", None) or vars(self.parts[0]).get("collate_fn")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        sample = dict(self.parts[part][int(i - self.offsets[part])])
        sample["index"] = int(i)
        return sample

    def info(self):
        return self.parts[0].info()

    def catalog(self) -> Table:
        return vstack([p.catalog() for p in self.parts], metadata_conflicts="silent")

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("parts", "offsets", "collate_fn"):
            raise AttributeError(name)
        attrs = [getattr(p, name, None) for p in self.parts]
        if any(a is None for a in attrs):
            if name == "groups":
                return None  # groups only when every part has them
            raise AttributeError(name)
        if not all(callable(a) for a in attrs):
            return attrs[0]

        def pooled(*args, **kwargs):
            values = [a(*args, **kwargs) for a in attrs]
            if all(isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == len(p)
                   for v, p in zip(values, self.parts)):
                return np.concatenate(values)
            return values[0]

        return pooled


def _pooled_groups(pooled: PooledDataset) -> np.ndarray | None:
    groups = getattr(pooled, "groups", None)
    return np.asarray(groups()) if callable(groups) else None


def _fold_prepare(k: int, seed: int, fold: int | None, temperature: float | None = None, test_fold: bool = False):
    """A ``prepare`` hook for :func:`astrotl.engine.run_single`: swap in fold ``fold``'s training and
    validation sets (``None``: train on everything, for the refit); with ``test_fold`` the test split is
    pooled too and fold ``fold`` becomes the test set, fold ``fold + 1`` (mod ``k``) the validation set."""

    def prepare(asm) -> None:
        from .engine import TrainSubset

        splits = ("train", "val", "test") if test_fold else ("train", "val")
        pooled = PooledDataset([asm.datasets[s] for s in splits])
        labels = np.asarray(pooled.labels()) if callable(getattr(pooled, "labels", None)) else np.full(len(pooled), -1)
        folds = fold_assignment(labels, k, seed, _pooled_groups(pooled))
        if fold is None:
            train_idx = np.arange(len(pooled))
            val_idx = np.flatnonzero(folds == 0)  # not used for selection (validation is off in the refit)
        elif test_fold:
            val = (fold + 1) % k
            train_idx, val_idx = np.flatnonzero((folds != fold) & (folds != val)), np.flatnonzero(folds == val)
            asm.datasets["test"] = TrainSubset(pooled, np.flatnonzero(folds == fold))
        else:
            train_idx, val_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        asm.datasets["train"] = TrainSubset(pooled, train_idx)
        asm.datasets["val"] = TrainSubset(pooled, val_idx)
        for split in splits:
            asm.datasets[split].collate_fn = pooled.collate_fn
        for split in splits:
            asm.task.check_data(asm.datasets[split], split)
        if callable(getattr(asm.task, "set_class_counts", None)) and asm.info.classes:
            lab = np.asarray(asm.datasets["train"].labels())
            asm.task.set_class_counts(np.bincount(lab[lab >= 0], minlength=len(asm.info.classes)))
        if temperature is not None and hasattr(asm.model, "temperature"):
            with torch.no_grad():
                asm.model.temperature.fill_(float(temperature))
            asm.task.config = asm.task.config.model_copy(update={"calibration": "none"})
            asm.task.calibration = {"temperature": float(temperature), "n_val": 0, "skipped": True,
                                    "note": "the mean of the fold models' temperatures (the refit has no "
                                            "held-out data)"}
        log.info("cv %s: %d training, %d validation samples", "refit" if fold is None else f"fold {fold}",
                 len(train_idx), 0 if fold is None else len(val_idx))

    return prepare


def _fold_config(config: ResolvedConfig, name: str, **trainer_updates) -> ResolvedConfig:
    run = config.run.model_copy(update={"cv": None, "name": name})
    if trainer_updates:
        t = config.run.trainer
        updates = dict(trainer_updates)
        if "early_stopping" in updates:
            updates["early_stopping"] = t.early_stopping.model_copy(update=updates["early_stopping"])
        run = run.model_copy(update={"trainer": t.model_copy(update=updates)})
    return dataclasses.replace(config, run=run)


def _best_epoch(run_dir: Path, monitor: str, mode: str) -> int | None:
    f = run_dir / "history.ecsv"
    if not f.is_file():
        return None
    hist = Table.read(f, format="ascii.ecsv")
    if monitor not in hist.colnames or not len(hist):
        return None
    values = np.asarray(hist[monitor], dtype=float)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    i = int(np.argmax(np.where(ok, values, -np.inf)) if mode == "max" else np.argmin(np.where(ok, values, np.inf)))
    return int(hist["epoch"][i])


def _result(sd: RunDirectory):
    from .engine import RunResult

    data = json.loads((sd.path / "metrics.json").read_text())
    return RunResult(sd.path, data.get("metrics", {}), data.get("headline", ""))


def _run_member(cfg, sd: RunDirectory, registries, resume: bool, callbacks, prepare):
    from .engine import run_single

    status = (sd.status() or {}).get("status")
    if resume and status == "finished":
        log.info("%s: finished before, skipped", sd.path.name)
        return _result(sd)
    st_resume = resume and sd.last_checkpoint.is_file()
    st_overwrite = not st_resume and sd.path.exists() and status is not None
    return run_single(cfg, registries, overwrite=st_overwrite, resume=st_resume, callbacks=callbacks, rundir=sd,
                      prepare=prepare)


def run_cv(config: ResolvedConfig, registries, *, overwrite: bool = False, resume: bool = False, callbacks=None):
    """Run the ``k`` fold runs (and the refit) of ``config`` inside one run directory; return its RunResult."""
    from .engine import RunResult, _check_resume_config, _now, is_main_process

    cv = config.run.cv
    task_cls, _ = config.component("task")
    if cv.keep == "ensemble" and getattr(task_cls, "kind", "") != "classification":
        raise ConfigError(f"cv.keep: ensemble averages class probabilities, which task '{task_cls.name}' "
                          f"({task_cls.kind}) does not predict; use cv.keep: none")
    t0 = time.time()
    root = RunDirectory(Path(config.run.output_dir) / config.run.name)
    main = is_main_process()
    if main:
        if resume:
            if root.status() is None:
                raise RunDirError(f"nothing to resume: '{root.path}' holds no astrotl run; run without --resume")
            _check_resume_config(root, config)
        else:
            root.check(overwrite=overwrite, resume=False)
            root.prepare(overwrite=overwrite, resume=False)
        write_text(root.path / "config.resolved.yaml", config.to_yaml())
        root.write_status(status="running", started=_now(), kind="cv", folds=cv.k, resumed=resume)
    monitor = config.run.trainer.monitor or task_cls.monitor
    mode = task_cls.monitor_mode if monitor == task_cls.monitor else ("min" if "loss" in monitor else "max")
    results: dict[str, Any] = {}
    refit = None
    try:
        for i in range(cv.k):
            sd = RunDirectory(root.path / FOLDS_DIR / str(i))
            log.info("cv: fold %d of %d", i + 1, cv.k)
            cfg = _fold_config(config, f"{config.run.name}_fold{i}")
            results[str(i)] = _run_member(cfg, sd, registries, resume, callbacks,
                                          _fold_prepare(cv.k, cv.seed, i, test_fold=cv.test == "fold"))
            if main:
                root.write_status(current_fold=i)
        best_epochs = [e for e in (_best_epoch(results[f].path, monitor, mode) for f in results) if e is not None]
        if cv.refit:
            epochs = int(np.median(np.asarray(best_epochs) + 1)) if best_epochs else config.run.trainer.max_epochs
            temps = [r.metrics.get("test_temperature") for r in results.values()]
            temps = [float(t) for t in temps if isinstance(t, (int, float))]
            cfg = _fold_config(config, f"{config.run.name}_refit", max_epochs=epochs, limit_val_batches=0,
                               early_stopping={"enabled": False})
            log.info("cv: refit on all training + validation labels for %d epochs", epochs)
            refit = _run_member(cfg, RunDirectory(root.path / REFIT_DIR), registries, resume, callbacks,
                                _fold_prepare(cv.k, cv.seed, None, float(np.mean(temps)) if temps else None))
    except KeyboardInterrupt:
        if main:
            root.write_status(status="interrupted", ended=_now())
        raise
    except Exception as exc:
        if main:
            root.write_status(status="failed", ended=_now(), error=" ".join(str(exc).split()))
        raise
    if not main:
        return RunResult(root.path, {}, "")
    metrics, headline = _write_cv_outputs(config, root, results, refit, best_epochs, registries)
    root.write_status(status="finished", ended=_now(), wall_time_s=round(time.time() - t0, 1), headline=headline)
    return RunResult(root.path, metrics, headline)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _fold_predictions(config: ResolvedConfig, results: dict[str, Any]) -> tuple[list[Table], Any, list[str]] | None:
    """Each fold's ``predictions.ecsv``, the task (built from the fold models' classes and bands) and the
    ``p_<class>`` columns; ``None`` when a fold has none or they lack class probabilities."""
    from .interfaces import DatasetInfo
    from .loadrun import read_model_metadata

    tables = [Table.read(r.path / "predictions.ecsv", format="ascii.ecsv") for r in results.values()
              if (r.path / "predictions.ecsv").is_file()]
    if len(tables) != len(results) or not tables or not len(tables[0]):
        return None
    meta = read_model_metadata(next(iter(results.values())).path / "model.safetensors")
    classes = [str(c) for c in meta.get("classes") or []]
    cols = [f"p_{c}" for c in classes]
    if not classes or any(c not in t.colnames for t in tables for c in cols):
        return None
    task_cls, task_cfg = config.component("task")
    task = task_cls(task_cfg, DatasetInfo(bands=tuple(meta.get("bands") or ()), classes=tuple(classes)))
    return tables, task, cols


def _pooled_out_of_fold(config: ResolvedConfig, results: dict[str, Any]) -> tuple[Table, dict[str, Any]] | None:
    """``cv.test: fold``: the fold models' predictions on their own test folds stacked (a ``fold`` column added)
    and evaluated by the task as one set (every labelled sample once)."""
    got = _fold_predictions(config, results)
    if got is None:
        return None
    tables, task, _ = got
    for name, t in zip(results, tables):
        t["fold"] = np.full(len(t), int(name))
    out = vstack(tables, metadata_conflicts="silent")
    test, _ = task.evaluate(out, Table({"index": np.array([], dtype=np.int64)}))
    return out, test


def _ensemble(config: ResolvedConfig, results: dict[str, Any]) -> tuple[Table, dict[str, Any], Any] | None:
    """The fold models' test predictions averaged (class probabilities), evaluated by the task."""
    got = _fold_predictions(config, results)
    if got is None:
        return None
    tables, task, cols = got
    classes = [c.removeprefix("p_") for c in cols]
    out = tables[0].copy()
    probs = np.mean([np.stack([np.asarray(t[c], dtype=float) for c in cols], axis=1) for t in tables], axis=0)
    for j, c in enumerate(cols):
        out[c] = probs[:, j]
    pred = probs.argmax(axis=1)
    out["pred_class"] = [classes[j] for j in pred]
    out["pred_prob"] = probs[np.arange(len(pred)), pred]
    for c in ("pred_class_raw", "pred_prob_raw"):
        if c in out.colnames:
            out.remove_column(c)
    out.meta["ensemble"] = {"members": [str(r.path) for r in results.values()], "combine": "mean of p_<class>"}
    test, tables_out = task.evaluate(out, Table({"index": np.array([], dtype=np.int64)}))
    return out, test, task


def _write_cv_outputs(config: ResolvedConfig, root: RunDirectory, results: dict[str, Any], refit, best_epochs,
                      registries) -> tuple[dict[str, Any], str]:
    cv = config.run.cv
    task_cls, _ = config.component("task")
    names = list(results)
    per_fold = {n: _numeric(results[n].metrics) for n in names}
    keys = sorted({k for m in per_fold.values() for k in m if k.startswith(("test_", "best_"))})
    table = Table({"fold": names, **{k: [per_fold[n].get(k, np.nan) for n in names] for k in keys}},
                  meta={"description": f"{cv.k}-fold cross-validation: each fold model's metrics (test: the "
                                       f"common test split; best_: its own validation fold)"})
    write_table(root.path / "cv.ecsv", table)
    summary: dict[str, Any] = {}
    for k in keys:
        vals = np.asarray([per_fold[n].get(k, np.nan) for n in names], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            summary[f"{k}_mean"] = float(vals.mean())
            summary[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    summary["cv_folds"] = cv.k
    if best_epochs:
        summary["cv_best_epoch_median"] = float(np.median(np.asarray(best_epochs) + 1))
    head_key = f"test_{task_cls.headline_metric}"
    headline = ""
    if f"{head_key}_mean" in summary:
        headline = (f"{cv.k}-fold CV: test {task_cls.headline_metric.replace('_', ' ')} "
                    f"{summary[f'{head_key}_mean']:.3f} +- {summary[f'{head_key}_std']:.3f}")
    if cv.test == "fold":
        headline = headline.replace("-fold CV:", "-fold CV (each fold tested once):")
        pooled = _pooled_out_of_fold(config, results)
        if pooled is None:
            log.warning("cv: the fold predictions could not be pooled (no p_<class> columns)")
        else:
            write_table(root.path / "predictions.ecsv", pooled[0])
            summary.update({f"pooled_test_{k}": v for k, v in _numeric(pooled[1]).items()
                            if not k.startswith(("n_", "chance"))})
            summary["pooled_n_test"] = len(pooled[0])
            if task_cls.headline_metric in pooled[1]:
                headline += f"; pooled out-of-fold ({len(pooled[0])}): {pooled[1][task_cls.headline_metric]:.3f}"
    ens = _ensemble(config, results) if cv.keep == "ensemble" else None
    if cv.keep == "ensemble" and ens is None:
        log.warning("cv: the fold predictions could not be combined (no labelled test split or no p_<class> columns)")
    if ens is not None:
        preds, test, _ = ens
        write_table(root.path / "predictions.ecsv", preds)
        summary.update({f"ensemble_test_{k}": v for k, v in _numeric(test).items()
                        if not k.startswith(("n_", "chance"))})
        if task_cls.headline_metric in test:
            headline += f"; ensemble of {cv.k}: {test[task_cls.headline_metric]:.3f}"
    if refit is not None:
        summary.update({f"refit_{k}": v for k, v in _numeric(refit.metrics).items() if k.startswith("test_")})
        if refit.metrics.get(head_key) is not None:
            headline += f"; refit on all labels: {float(refit.metrics[head_key]):.3f}"
        for name in ("model.safetensors", "backbone.safetensors"):
            src = refit.path / name
            if src.is_file():
                with atomic_path(root.path / name) as tmp:
                    shutil.copyfile(src, tmp)
        if ens is None and (refit.path / "predictions.ecsv").is_file():
            with atomic_path(root.path / "predictions.ecsv") as tmp:
                shutil.copyfile(refit.path / "predictions.ecsv", tmp)
    write_json(root.path / "metrics.json", {"metrics": summary, "headline": headline,
                                            "headline_metric": task_cls.headline_metric,
                                            "higher_is_better": task_cls.higher_is_better,
                                            "folds": {n: results[n].metrics for n in names},
                                            **({"refit": refit.metrics} if refit is not None else {})})
    scalar = [(k, float(v)) for k, v in summary.items()]
    write_table(root.path / "metrics.ecsv", Table(rows=scalar, names=("metric", "value")))
    _write_report(config, root, results, refit, summary, headline, keys)
    registries.pm.hook.astrotl_run_finished(run_dir=root.path, config=config.to_dict(), metrics=summary)
    return summary, headline


def _write_report(config, root, results, refit, summary, headline, keys) -> None:
    cv = config.run.cv
    names = list(results)
    lines = [f"# Run `{config.run.name}` ({cv.k}-fold cross-validation)", ""]
    if config.run.description:
        lines += [config.run.description.strip(), ""]
    if headline:
        lines += [f"**{headline}**", ""]
    if cv.test == "fold":
        lines += [f"The training, validation and test splits were pooled and dealt into {cv.k} folds (stratified by "
                  f"class, groups kept whole, seed {cv.seed}); fold model *i* is tested on fold *i*, validates on fold "
                  f"*i + 1* (mod {cv.k}) and trains on the rest, so every sample is tested once.", ""]
    else:
        lines += [f"The training and validation splits were pooled and dealt into {cv.k} folds (stratified by "
                  f"class, groups kept whole, seed {cv.seed}); fold *i* validates on fold *i* and trains on the rest. "
                  f"Every fold model is tested on the same test split.", ""]
    shown = [k for k in keys if k.startswith("test_") and not k.startswith(("test_tta", "test_temperature"))
             and "_class_" not in k][:8]  # per-class accuracies would push ROC AUC and the like off the table
    if shown:
        lines += ["| fold | " + " | ".join(k.removeprefix("test_") for k in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for n in names:
            vals = [results[n].metrics.get(k) for k in shown]
            lines.append(f"| [{n}]({FOLDS_DIR}/{n}/report.md) | " +
                         " | ".join(f"{v:.4g}" if isinstance(v, (int, float)) else "" for v in vals) + " |")
        lines.append("| **mean +- std** | " + " | ".join(
            f"{summary.get(f'{k}_mean', float('nan')):.4g} +- {summary.get(f'{k}_std', float('nan')):.2g}"
            for k in shown) + " |")
        lines.append("")
    if "cv_best_epoch_median" in summary:
        lines += [f"Median best epoch over folds: {summary['cv_best_epoch_median']:g}.", ""]
    pooled = [k for k in summary if k.startswith("pooled_test_")]
    if pooled:
        lines += [f"**Pooled out-of-fold** ({summary.get('pooled_n_test', 0)} samples, each tested once; "
                  "`predictions.ecsv`, `fold` column): " +
                  ", ".join(f"{k.removeprefix('pooled_test_')} {summary[k]:.4g}" for k in pooled[:6]), ""]
    ens = [k for k in summary if k.startswith("ensemble_test_")]
    if ens:
        lines += [f"**Ensemble** of the {cv.k} fold models (mean class probabilities; `predictions.ecsv`): " +
                  ", ".join(f"{k.removeprefix('ensemble_test_')} {summary[k]:.4g}" for k in ens[:6]), ""]
    if refit is not None:
        lines += [f"**Refit** on all training + validation labels ([refit/report.md]({REFIT_DIR}/report.md)): "
                  f"{refit.headline}. Its weights are this run's `model.safetensors` and `backbone.safetensors`.", ""]
    lines += ["Files: `cv.ecsv` (each fold's metrics), `metrics.json` (mean/std, pooled, ensemble, refit), "
              f"`{FOLDS_DIR}/<i>/` (ordinary runs).", ""]
    write_text(root.path / "report.md", "\n".join(lines))
