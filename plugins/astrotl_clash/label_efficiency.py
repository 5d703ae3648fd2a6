"""``astrotl clash-label-efficiency OUT_DIR``: test RMSE against the number of labelled CLASH-like galaxies.

The grid behind Perez-Carrasco et al. (2019)'s claim that fine-tuning needs fewer labels than training
on CLASH alone::

    astrotl clash-label-efficiency runs/clash_le --sizes 10 25 50 100 --seeds 0 1 2

reads a task file with ``stages:`` (default ``tasks/clash_label_efficiency.yaml``): its **first** stage
pre-trains (the CANDELS-like domain), its **last** stage is the target domain (CLASH-like). The command

1. runs the first stage once, as an ordinary run directory ``OUT_DIR/pretrain``;
2. for every size ``n`` and seed ``s`` runs the last stage twice, into ``OUT_DIR/cells/<mode>_n<n>_seed<s>``:
   ``finetune`` with ``backbone: {weights: run:OUT_DIR/pretrain}`` (and the pre-trained head when the
   last stage has ``head_from: <first stage>``) and ``scratch`` with ``backbone: {weights: none}``
   (``--scratch-weights``) and a fresh head, both with the core's
   ``train_subset: {size: n, unit: groups, seed: s}`` (``n`` whole galaxies, all their bands, drawn
   from the target stage's training split, stratified by the class with most votes) and run seed ``s``:
   both modes of one seed see the same galaxies, so the comparison is paired. A cell trains
   ``--epochs`` epochs, or more where that would be fewer than ``--min-steps`` optimiser steps (the
   smallest subsets have a few batches per epoch); early stopping still applies;
3. writes ``OUT_DIR/label_efficiency_cells.ecsv`` (one row per cell), ``OUT_DIR/label_efficiency.ecsv``
   and ``.md`` (mean, standard deviation, min and max of the test RMSE over seeds per mode and size,
   and the paired difference scratch - finetune) and ``OUT_DIR/label_efficiency.png``.

Every run goes through the engine (:func:`astrotl.engine.run`; :func:`astrotl.engine.run_single` with a
``prepare`` hook where the head comes from the pre-training). The command is resumable: finished runs
are skipped (after checking that their configuration is the one the command would run now), an
interrupted run continues from its last checkpoint, a failed one starts again. ``OUT_DIR`` must be new,
empty or a folder this command made (``OUT_DIR/label_efficiency.json`` marks it).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

log = logging.getLogger(__name__)

COMMAND = "clash-label-efficiency"
DEFAULT_TASK = "tasks/clash_label_efficiency.yaml"
DEFAULT_SIZES = (10, 25, 50, 100)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_MIN_STEPS = 100
MODES = ("finetune", "scratch")
MARKER = "label_efficiency.json"
PRETRAIN = "pretrain"
CELLS = "cells"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        COMMAND, help="CLASH label efficiency: test RMSE vs labelled galaxies, fine-tuned vs from scratch",
        description="Pre-train once on the first stage of a two-stage task file, then train its last stage on "
                    "seeded subsets of N galaxies (the core's train_subset), fine-tuned from the pre-trained "
                    "backbone and from scratch, several seeds each; write the per-cell and summary tables "
                    "(ECSV + markdown) and a PNG. Rerunning the same command skips finished cells.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (new, empty, or made by this command)")
    p.add_argument("--task", default=DEFAULT_TASK, metavar="FILE",
                   help=f"task file with stages: the first pre-trains, the last is the target (default {DEFAULT_TASK})")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                   help=f"numbers of labelled target galaxies (default {' '.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), metavar="S",
                   help=f"seeds per cell: subset draw and run seed (default {' '.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="trainer.max_epochs of every cell (default: the last stage's)")
    p.add_argument("--pretrain-epochs", type=int, default=None, metavar="E",
                   help="trainer.max_epochs of the pre-training (default: the first stage's)")
    p.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS, metavar="S",
                   help=f"train a cell more epochs where --epochs would give fewer than S optimiser steps (small "
                        f"subsets; early stopping still applies; 0: off; default {DEFAULT_MIN_STEPS})")
    p.add_argument("--scratch-weights", default="none", metavar="WEIGHTS",
                   help="backbone weights of the from-scratch cells (default none: random initialisation; "
                        "e.g. auto or imagenet to compare with ImageNet-only fine-tuning)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every run's configuration after the stage's own settings (repeatable), "
                        "e.g. --set trainer.num_threads=1")
    p.add_argument("--target-set", dest="target_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the target-stage cells only (repeatable), e.g. --target-set data.n_train=400")
    p.add_argument("--pretrain-set", dest="pretrain_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the pre-training run only (repeatable), e.g. --pretrain-set data.n_train=1000")


# -- planning ------------------------------------------------------------------------------------------------


def _check_values(sizes, seeds, epochs, pretrain_epochs) -> None:
    from astrotl.errors import ConfigError

    if not sizes:
        raise ConfigError("--sizes needs at least one number of galaxies, e.g. --sizes 25 50 100")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise ConfigError(f"--sizes {bad[0]}: a training subset needs at least 1 galaxy; give sizes >= 1")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--sizes {' '.join(map(str, sizes))} repeats a size; give each size once")
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    bad = [s for s in seeds if s < 0]
    if bad:
        raise ConfigError(f"--seeds {bad[0]}: seeds must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))} repeats a seed; give each seed once")
    for name, value in (("--epochs", epochs), ("--pretrain-epochs", pretrain_epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} {value}: give at least 1 epoch")


def _stage_dicts(task: Path, overrides: list[str]) -> tuple[dict, dict, str, str, str | None]:
    """The raw merged configs of the first and the last stage (``--set`` applied after the stage's own), the
    stages' names and the last stage's ``head_from``."""
    from astrotl.config import apply_overrides, deep_merge, expand_env, load_yaml
    from astrotl.errors import ConfigError

    data, _ = load_yaml(task)
    stages = data.get("stages")
    if not isinstance(stages, list) or len(stages) < 2:
        n = len(stages) if isinstance(stages, list) else 0
        raise ConfigError(f"task file '{task}' has {n} stage(s); {COMMAND} needs stages: the first pre-trains, the "
                          f"last is the target domain (see {DEFAULT_TASK})")
    top = {k: v for k, v in data.items() if k != "stages"}
    out = []
    for stage in (stages[0], stages[-1]):
        if not isinstance(stage, dict) or not stage.get("name"):
            raise ConfigError(f"task file '{task}': every stage needs a name (e.g. - name: pretrain)")
        partial = {k: v for k, v in stage.items() if k not in ("name", "head_from") and v is not None}
        merged = deep_merge(top, partial)
        out.append(expand_env(apply_overrides(merged, overrides)))
    head_from = stages[-1].get("head_from")
    return out[0], out[1], str(stages[0]["name"]), str(stages[-1]["name"]), str(head_from) if head_from else None


def _resolve(raw: dict, registries, task: Path, *, name: str, output_dir: Path, updates: dict[str, Any]):
    from astrotl.config import deep_merge, resolve

    cfg = deep_merge(raw, updates)
    cfg["name"] = name
    cfg["output_dir"] = str(output_dir)
    cfg.pop("head_from", None)
    return resolve(cfg, registries, source=task, _where=f"{task} ({name})")


def cell_name(mode: str, size: int, seed: int) -> str:
    """``finetune_n25_seed0``."""
    return f"{mode}_n{size}_seed{seed}"


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of ``n_samples`` (the engine drops the last partial batch when there is more
    than one batch).

    Examples
    --------
    >>> steps_per_epoch(60, 16), steps_per_epoch(10, 16), steps_per_epoch(64, 16)
    (3, 1, 4)
    """
    return max(n_samples // batch_size, 1) if n_samples > batch_size else 1


def plan(task: str | Path, out_dir: str | Path, registries, *, sizes, seeds, epochs=None, pretrain_epochs=None,
         min_steps: int = 0, scratch_weights: str = "none", overrides=(), pretrain_overrides=(),
         target_overrides=()) -> tuple[Any, list[dict[str, Any]]]:
    """Validate everything before anything runs: the pre-training config and one entry per cell.

    A cell trains ``--epochs`` epochs (default: the last stage's ``trainer.max_epochs``), or more where
    that would be fewer than ``min_steps`` optimiser steps for its number of training stamps.

    Returns
    -------
    pretrain : astrotl.config.ResolvedConfig
    cells : list of dict
        ``mode, size, seed, name, config`` (a ResolvedConfig), ``n_train`` (stamps), ``head_from_pretrain``
        (bool) in run order (size, seed, mode).

    Raises
    ------
    astrotl.errors.ConfigError, astrotl.errors.DataError
        Bad values, a task file without two stages, or a size larger than the target training split's
        number of galaxies.
    """
    from astrotl.config import apply_overrides

    _check_values(list(sizes), list(seeds), epochs, pretrain_epochs)
    if min_steps < 0:
        from astrotl.errors import ConfigError

        raise ConfigError(f"--min-steps {min_steps}: give 0 (off) or a positive number of optimiser steps")
    task = Path(task)
    out_dir = Path(out_dir).resolve()
    first, last, first_name, last_name, head_from = _stage_dicts(task, list(overrides))
    first = apply_overrides(first, list(pretrain_overrides))
    last = apply_overrides(last, list(target_overrides))
    pre_updates: dict[str, Any] = {"trainer": {"max_epochs": pretrain_epochs}} if pretrain_epochs else {}
    pretrain = _resolve(first, registries, task, name=PRETRAIN, output_dir=out_dir, updates=pre_updates)
    head = head_from == first_name
    template = _resolve(last, registries, task, name="template", output_dir=out_dir / CELLS,
                        updates={"trainer": {"max_epochs": epochs}} if epochs else {})
    train = _train_split(template, sizes, last_name)
    base_epochs = template.run.trainer.max_epochs
    batch = template.run.trainer.batch_size
    cells = []
    for size in sizes:
        for seed in seeds:
            from astrotl.engine import subset_indices

            sub = template.run.train_subset
            n = len(subset_indices(train, size, unit="groups", seed=seed, stratify=sub.stratify))
            cell_epochs = max(base_epochs, -(-min_steps // steps_per_epoch(n, batch))) if min_steps else base_epochs
            for mode in MODES:
                finetune = mode == "finetune"
                weights = f"run:{out_dir / PRETRAIN}" if finetune else scratch_weights
                what = (f"backbone{' and head' if head else ''} from the pre-training run" if finetune else
                        f"backbone weights '{scratch_weights}', fresh head")
                updates: dict[str, Any] = {
                    "seed": seed, "backbone": {"weights": weights},
                    "train_subset": {"size": size, "unit": "groups", "seed": seed},
                    "trainer": {"max_epochs": cell_epochs},
                    "description": f"{COMMAND} cell: {mode} ({what}), {size} galaxies ({n} stamps), seed {seed}",
                }
                name = cell_name(mode, size, seed)
                cfg = _resolve(last, registries, task, name=name, output_dir=out_dir / CELLS, updates=updates)
                cells.append({"mode": mode, "size": int(size), "seed": int(seed), "name": name, "config": cfg,
                              "n_train": n, "head_from_pretrain": finetune and head})
    log.info("%s: pre-training on stage '%s', %d cells of stage '%s'", COMMAND, first_name, len(cells), last_name)
    return pretrain, cells


def _train_split(config, sizes, stage: str):
    """The target stage's training split; a size larger than its number of galaxies is a one-line DataError."""
    from astrotl.engine import default_cache_dir
    from astrotl.errors import DataError

    run = config.run
    cache = Path(run.cache_dir).expanduser() if run.cache_dir else default_cache_dir()
    ds_cls, ds_cfg = config.component("data")
    ds = ds_cls(ds_cfg, split="train", seed=run.seed, cache_dir=cache)
    groups = ds.groups() if callable(getattr(ds, "groups", None)) else None
    if groups is None:
        raise DataError(f"data set '{ds_cls.name}' of stage '{stage}' has no groups (galaxies); {COMMAND} counts "
                        f"labelled galaxies: use clash_sim or clash_votes")
    n = len(np.unique(np.asarray(groups).astype(str)))
    too_big = [s for s in sizes if s > n]
    if too_big:
        hint = " (or raise data.n_train, e.g. --target-set data.n_train=" + str(max(sizes)) + ")" \
            if "n_train" in type(ds_cfg).model_fields else ""
        raise DataError(f"--sizes {max(too_big)} is larger than the {n} galaxies in the training split of stage "
                        f"'{stage}' (data '{ds_cls.name}'); lower --sizes to at most {n}{hint}")
    return ds


# -- running ------------------------------------------------------------------------------------------------


def _check_out_dir(out_dir: Path) -> None:
    from astrotl.errors import RunDirError

    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"OUT_DIR '{out_dir}' is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise RunDirError(f"OUT_DIR '{out_dir}' holds files {COMMAND} did not write (no {MARKER}); choose a new or "
                          f"empty folder")


def _saved_config(run_dir: Path) -> dict | None:
    import yaml

    f = run_dir / "config.resolved.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else None


def check_saved(config, what: str) -> None:
    """A run directory that exists must hold a run of exactly ``config`` (else a one-line ConfigError)."""
    import yaml

    from astrotl.errors import ConfigError
    from astrotl.rundir import RunDirectory

    rd = RunDirectory(Path(config.run.output_dir) / config.run.name)
    if rd.status() is None:
        return
    saved = _saved_config(rd.path)
    now = yaml.safe_load(config.to_yaml())
    if saved is not None and saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(f"{what} '{rd.path}' was run with another configuration (differs in {', '.join(diff)}); "
                          f"rerun with the same task file and options, or use a new OUT_DIR")


def head_from_run(run_dir: str | Path):
    """A ``prepare`` hook for :func:`astrotl.engine.run_single` that starts the head from a finished run's head.

    The head's weights are read from ``<run_dir>/model.safetensors`` (the keys under the head's prefix in the
    model); a head of another shape is a one-line :class:`~astrotl.errors.ConfigError`.
    """
    from astrotl.errors import ConfigError, RunDirError

    src = Path(run_dir) / "model.safetensors"

    def prepare(asm) -> None:
        from safetensors.torch import load_file

        if not src.is_file():
            raise RunDirError(f"the pre-training run has no model.safetensors ({src}); it did not finish")
        prefix = next(name for name, mod in asm.model.named_modules() if mod is asm.head)
        prefix = f"{prefix}." if prefix else ""
        head_state = {k[len(prefix):]: v for k, v in load_file(str(src)).items() if k.startswith(prefix)}
        own = asm.head.state_dict()
        bad = [k for k in own if k not in head_state or head_state[k].shape != own[k].shape]
        if bad:
            raise ConfigError(f"the pre-training run's head does not fit the target stage's head ({bad[0]}); the "
                              f"outputs differ -- remove head_from from the task file's last stage")
        asm.head.load_state_dict(head_state)

    return prepare


def run_one(config, registries, what: str, prepare=None) -> dict[str, Any]:
    """Run (or skip, or continue) one run directory through the engine; return its metrics.

    ``prepare`` (e.g. :func:`head_from_run`) is handed to :func:`astrotl.engine.run_single`, the engine's
    single-run path (:func:`astrotl.engine.run` without stages).
    """
    import json

    from astrotl.engine import run as engine_run
    from astrotl.engine import run_single
    from astrotl.rundir import RunDirectory

    check_saved(config, what)
    rd = RunDirectory(Path(config.run.output_dir) / config.run.name)
    status = (rd.status() or {}).get("status")
    if status == "finished" and (rd.path / "metrics.json").is_file():
        log.info("%s: finished before, skipped", what)
        return json.loads((rd.path / "metrics.json").read_text()).get("metrics", {})
    resume = status is not None and rd.last_checkpoint.is_file()
    overwrite = status is not None and not resume
    log.info("%s: %s", what, "resuming" if resume else "starting")
    if prepare is None:
        result = engine_run(config, registries, overwrite=overwrite, resume=resume)
    else:
        result = run_single(config, registries, overwrite=overwrite, resume=resume, prepare=prepare)
    return result.metrics


def run_grid(task: str | Path, out_dir: str | Path, registries, *, sizes=DEFAULT_SIZES, seeds=DEFAULT_SEEDS,
             epochs=None, pretrain_epochs=None, min_steps: int = DEFAULT_MIN_STEPS, scratch_weights: str = "none",
             overrides=(), pretrain_overrides=(), target_overrides=()) -> dict[str, Any]:
    """Plan, run every missing run and write the tables and the plot; return paths and tables.

    Returns
    -------
    dict
        ``cells`` (Table, one row per cell), ``summary`` (Table, one row per mode and size),
        ``files`` (list of written paths) and ``pretrain`` (the pre-training run's metrics).
    """
    from astrotl.io import write_json

    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    pretrain, cells = plan(task, out_dir, registries, sizes=sizes, seeds=seeds, epochs=epochs,
                           pretrain_epochs=pretrain_epochs, min_steps=min_steps, scratch_weights=scratch_weights,
                           overrides=overrides,
                           pretrain_overrides=pretrain_overrides, target_overrides=target_overrides)
    check_saved(pretrain, "pre-training")
    for cell in cells:
        check_saved(cell["config"], f"cell {cell['name']}")
    settings = {"command": " ".join(["astrotl", *sys.argv[1:]]) if sys.argv else COMMAND, "task": str(task),
                "sizes": [int(s) for s in sizes], "seeds": [int(s) for s in seeds], "epochs": epochs,
                "pretrain_epochs": pretrain_epochs, "min_steps": min_steps, "scratch_weights": scratch_weights,
                "overrides": list(overrides), "pretrain_overrides": list(pretrain_overrides),
                "target_overrides": list(target_overrides),
                "pretrain_data": pretrain.component("data")[0].name,
                "target_data": cells[0]["config"].component("data")[0].name, "written_by": f"astrotl {COMMAND}"}
    write_json(out_dir / MARKER, {**settings, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    t0 = time.time()
    pre_metrics = run_one(pretrain, registries, "pre-training")
    rows = []
    for i, cell in enumerate(cells, 1):
        prepare = head_from_run(out_dir / PRETRAIN) if cell["head_from_pretrain"] else None
        m = run_one(cell["config"], registries, f"cell {i}/{len(cells)} {cell['name']}", prepare=prepare)
        rows.append(_cell_row(cell, m, out_dir))
        log.info("cell %s: test RMSE %.4f", cell["name"], rows[-1]["rmse"])
    table = cells_table(rows, pre_metrics, settings)
    summary = summarise(table)
    files = write_outputs(out_dir, table, summary)
    write_json(out_dir / MARKER, {**settings, "status": "finished", "wall_time_s": round(time.time() - t0, 1),
                                  "files": [p.name for p in files]})
    return {"cells": table, "summary": summary, "files": files, "pretrain": pre_metrics}


def _cell_row(cell: dict[str, Any], m: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    def num(key):
        v = m.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    return {"mode": cell["mode"], "size": cell["size"], "seed": cell["seed"], "n_train_stamps": int(num("n_train")),
            "rmse": num("test_rmse"), "rmse_stamp_mean": num("test_rmse_stamp_mean"), "mae": num("test_mae"),
            "best_val_rmse": num("best_val_rmse"), "max_epochs": int(cell["config"].run.trainer.max_epochs),
            "epochs_trained": int(num("epochs_trained")),
            "wall_time_s": num("wall_time_s"), "run": str(Path(CELLS) / cell["name"])}


def cells_table(rows: list[dict[str, Any]], pre_metrics: dict[str, Any], settings: dict[str, Any]) -> Table:
    """One row per cell (mode, size, seed, test RMSE, ...)."""
    names = ("mode", "size", "seed", "n_train_stamps", "rmse", "rmse_stamp_mean", "mae", "best_val_rmse",
             "max_epochs", "epochs_trained", "wall_time_s", "run")
    dtype = (str, int, int, int, float, float, float, float, int, int, float, str)
    t = Table(rows=[[r[n] for n in names] for r in rows], names=names, dtype=dtype) if rows else \
        Table(names=names, dtype=dtype)
    t["size"].description = "labelled target-domain galaxies (all their bands) in the training subset"
    t["rmse"].description = "test RMSE = sqrt(mean over stamps and classes of (p - t)^2)"
    pre = pre_metrics.get("test_rmse")
    t.meta = {"description": "label efficiency: one row per (mode, size, seed); finetune starts the backbone from "
                             "the pre-training run, scratch from --scratch-weights", **settings,
              "pretrain_test_rmse": float(pre) if isinstance(pre, (int, float)) else None}
    return t


def summarise(cells: Table) -> Table:
    """Mean, standard deviation (ddof 1), min and max of the test RMSE over seeds per mode and size, and the
    paired difference scratch - finetune over the seeds both modes ran.

    Examples
    --------
    >>> t = Table(rows=[("finetune", 10, 0, 0.2), ("finetune", 10, 1, 0.3), ("scratch", 10, 0, 0.4),
    ...                 ("scratch", 10, 1, 0.4)], names=("mode", "size", "seed", "rmse"))
    >>> s = summarise(t)
    >>> [round(float(v), 3) for v in s["rmse_mean"]], [round(float(v), 3) for v in s["gain_mean"]]
    ([0.25, 0.4], [0.15, 0.15])
    """
    rows = []
    sizes = sorted({int(s) for s in cells["size"]})
    for size in sizes:
        at = cells[np.asarray(cells["size"]) == size]
        by_mode = {m: {int(r["seed"]): float(r["rmse"]) for r in at[np.asarray(at["mode"]) == m]} for m in MODES}
        common = sorted(set(by_mode["finetune"]) & set(by_mode["scratch"]))
        gain = np.array([by_mode["scratch"][s] - by_mode["finetune"][s] for s in common], dtype=float)
        for mode in MODES:
            v = np.array(list(by_mode[mode].values()), dtype=float)
            if len(v) == 0:
                continue
            rows.append((mode, size, len(v), float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                         float(np.min(v)), float(np.max(v)), len(gain),
                         float(np.mean(gain)) if len(gain) else float("nan"),
                         float(np.std(gain, ddof=1)) if len(gain) > 1 else float("nan")))
    names = ("mode", "size", "n_seeds", "rmse_mean", "rmse_std", "rmse_min", "rmse_max", "n_pairs", "gain_mean",
             "gain_std")
    dtype = (str, int, int, float, float, float, float, int, float, float)
    t = Table(rows=rows, names=names, dtype=dtype) if rows else Table(names=names, dtype=dtype)
    t.meta = {"description": "test RMSE over seeds per mode and number of labelled galaxies (std: sample standard "
                             "deviation, ddof 1); gain = RMSE(scratch) - RMSE(finetune) for the same seed and subset, "
                             "mean and std over seeds (positive: fine-tuning is better)", **dict(cells.meta)}
    return t


def markdown(summary: Table) -> str:
    """The summary as a markdown table: one row per size, both modes side by side, and the paired gain."""
    lines = ["| galaxies | fine-tuned RMSE (mean ± std) | from scratch RMSE (mean ± std) | scratch - fine-tuned "
             "(paired, mean ± std) | seeds |", "|---|---|---|---|---|"]

    def fmt(mean, std):
        if not np.isfinite(mean):
            return "n/a"
        return f"{mean:.4f} ± {std:.4f}" if np.isfinite(std) else f"{mean:.4f}"

    for size in sorted({int(s) for s in summary["size"]}):
        at = summary[np.asarray(summary["size"]) == size]
        row = {str(r["mode"]): r for r in at}
        ft, sc = row.get("finetune"), row.get("scratch")
        any_row = ft if ft is not None else sc
        cells = [fmt(float(r["rmse_mean"]), float(r["rmse_std"])) if r is not None else "n/a" for r in (ft, sc)]
        gain = fmt(float(any_row["gain_mean"]), float(any_row["gain_std"]))
        n = max(int(r["n_seeds"]) for r in (ft, sc) if r is not None)
        lines.append(f"| {size} | {cells[0]} | {cells[1]} | {gain} | {n} |")
    return "\n".join(lines) + "\n"


def label_efficiency_plot(cells: Table, summary: Table, path: Path) -> Path:
    """Test RMSE against labelled galaxies: mean ± std per mode (lines) and every seed (points)."""
    import astrotl.plots  # noqa: F401 -- selects the non-interactive backend
    import matplotlib.pyplot as plt

    from astrotl.io import save_figure

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    labels = {"finetune": "fine-tuned from pre-training", "scratch": "from scratch"}
    for k, mode in enumerate(MODES):
        s = summary[np.asarray(summary["mode"]) == mode]
        if len(s) == 0:
            continue
        x = np.asarray(s["size"], dtype=float)
        ax.errorbar(x, np.asarray(s["rmse_mean"], float), yerr=np.nan_to_num(np.asarray(s["rmse_std"], float)),
                    marker="o", capsize=3, color=f"C{k}", label=labels[mode])
        c = cells[np.asarray(cells["mode"]) == mode]
        jitter = 1.0 + 0.03 * (2 * k - 1)
        ax.scatter(np.asarray(c["size"], float) * jitter, np.asarray(c["rmse"], float), s=10, color=f"C{k}", alpha=0.4)
    ax.set_xscale("log")
    sizes = sorted({int(v) for v in summary["size"]})
    ax.set_xticks(sizes, [str(v) for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled target galaxies (all bands)")
    ax.set_ylabel("test RMSE (vote fractions)")
    data = cells.meta.get("target_data")
    ax.set_title(f"Label efficiency (data: {data})" if data else "Label efficiency")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_outputs(out_dir: Path, cells: Table, summary: Table) -> list[Path]:
    """Write the cells and summary tables (ECSV), the markdown summary and the PNG (atomically)."""
    from astrotl.io import write_table, write_text

    out_dir = Path(out_dir)
    files = [out_dir / "label_efficiency_cells.ecsv", out_dir / "label_efficiency.ecsv",
             out_dir / "label_efficiency.md", out_dir / "label_efficiency.png"]
    write_table(files[0], cells)
    write_table(files[1], summary)
    write_text(files[2], markdown(summary))
    label_efficiency_plot(cells, summary, files[3])
    return files


def run(args, out) -> int:
    res = run_grid(args.task, args.out_dir, args.registries, sizes=args.sizes, seeds=args.seeds, epochs=args.epochs,
                   pretrain_epochs=args.pretrain_epochs, min_steps=args.min_steps, scratch_weights=args.scratch_weights,
                   overrides=args.overrides, pretrain_overrides=args.pretrain_overrides,
                   target_overrides=args.target_overrides)
    out.write(markdown(res["summary"]))
    out.write(f"wrote {', '.join(str(p) for p in res['files'])}\n")
    return 0
