"""Grids of runs and ensembles: ``astrotl compare``.

A task file (any task: classification, soft labels, detection, multi-stage) plus a grid of config values and
a list of seeds make a set of *cells*; each cell is an ordinary run directory ``OUT/cells/<cell>/``::

    compare:
      grid:
        backbone.weights: {random: none, gz1: "run:runs/gz1_pretrain", imagenet: imagenet}
        train_subset.size: [100, 300, 1000]
      seeds: [0, 1, 2]
      ensemble: true              # combine the seeds of each grid point (astrotl ensemble)

    astrotl compare tasks/compare_backbones.yaml [--grid optim.lr=1e-3,3e-4] [--seeds 0,1] [--workers 2]

What happens, in order:

1. **Plan.** Every cell's config (the task file, ``--set`` overrides, one value per grid key, the seed) is
   validated with :func:`astrotl.config.resolve` before anything runs: an unknown grid key, an empty axis or
   a cell that does not validate is one :class:`~astrotl.errors.ConfigError` and nothing is written.
   Named pretrained weights that cannot be had (``run:`` of a run that does not exist, ImageNet not in a
   local cache) mark their cells *skipped* with the reason; ``weights: auto`` falls back to random
   initialisation inside the run, which the report flags from ``run.json``.
2. **Resume.** A cell whose ``run.json`` says ``finished`` is kept (if its configuration still matches);
   ``failed`` cells are reported and run again only with ``--retry-failed``; interrupted cells continue
   from their last checkpoint. So rerunning the same command after a kill continues the grid.
3. **Run** (``executor``): ``processes`` -- worker processes on this machine, ``workers`` of them
   (default ``min(cells, cores)``), each cell with ``trainer.num_threads = cores // workers`` unless the
   task sets it; ``local`` / ``debug`` / ``slurm`` -- through submitit (``slurm``: one job array, resources
   from ``compare.slurm``, a cell that reaches its time limit is requeued and resumes).
4. **Report**: ``OUT/report.md`` and ``OUT/index.html`` (every cell linked), ``summary.ecsv`` (mean and
   std over seeds per grid point of every test metric), ``cells.ecsv``, ``paired.ecsv`` (paired
   differences where seeds match, t-test and sign test), ``learning_curve.png`` when the grid has a
   training-size axis, and with ``ensemble`` the combined predictions ``ensembles/<group>.ecsv`` and
   ``ensembles.ecsv`` (the ensemble's accuracy against its members').

Cell names are made from the grid values (``weights-gz1__size-100__seed-0``), so they are stable across
reruns and readable in a file browser.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import html
import itertools
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.table import Table

from .config import (CompareConfig, CompareEnsembleConfig, ResolvedConfig, apply_overrides, expand_env, load_yaml,
                     resolve)
from .errors import AstrotlError, ConfigError, DataError, RunDirError, WeightsError, did_you_mean
from .io import make_dirs, save_figure, write_json, write_table, write_text
from .rundir import RunDirectory

try:  # requeue support when submitit is installed (it duck-types on ``checkpoint``; the base class is documentation)
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is optional
    _Checkpointable = object

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "Axis", "Cell", "CellJob", "CellSpec", "Plan", "compare", "make_plan", "execute",
           "write_report", "paired_comparison", "parse_grid_option", "parse_seeds", "run_cell", "collect_cells",
           "summarise", "ensemble_groups"]

#: How cells run: own worker processes, or submitit's local, debug (in this process) or SLURM executor.
EXECUTORS = ("processes", "local", "debug", "slurm")
SUBMITIT_EXECUTORS = ("local", "debug", "slurm")
STATE_FILE = "compare.json"
LOCK_FILE = ".compare.lock"
CELLS_DIR = "cells"
#: Trainer keys that say how a cell runs, not what it computes: they may differ between a finished cell and
#: the grid that finds it (e.g. another number of workers gives other num_threads).
RUNTIME_KEYS = ("num_threads", "progress_bar", "num_workers", "logger", "log_every_n_steps", "devices",
                "accelerator", "strategy", "num_nodes")
#: Grid keys that make a learning curve's x axis (first match), unless ``compare.curve_x`` names one.
SIZE_KEYS = ("train_subset.size", "data.n_train")
#: Test metrics shown next to the headline metric when ``compare.metrics`` is not given (those present).
DEFAULT_METRICS = ("balanced_accuracy", "macro_f1", "roc_auc", "mae", "kl", "precision", "recall")
#: Keys a grid may not set: compare sets them itself.
RESERVED_KEYS = ("name", "output_dir", "compare", "stages")


# -- parsing ---------------------------------------------------------------------------------------


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; a number was meant (as in ``--set``)."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
        return float(value)
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    return value


def parse_grid_option(item: str) -> tuple[str, list[Any]]:
    """``"key=v1,v2"`` (``--grid``) -> ``("key", [v1, v2])``; values are read as YAML (``1e-3``, ``null``,
    ``[0.5, 0.5]``, ``run:runs/x``)."""
    if "=" not in item:
        raise ConfigError(f"--grid '{item}' is not of the form key=v1,v2 (e.g. --grid optim.lr=1e-3,3e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or not all(key.split(".")):
        raise ConfigError(f"--grid '{item}': empty key; use a dotted config key, e.g. --grid train_subset.size=100,300")
    if raw.strip() == "":
        return key, []
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError:
        raise ConfigError(f"--grid '{item}': cannot read the values as a comma-separated list; quote a value "
                          f"that holds a comma, a colon followed by a space or a bracket") from None
    return key, [_number(v) for v in values]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip() != ""]
    except ValueError:
        raise ConfigError(f"--seeds '{text}' is not a comma-separated list of integers (e.g. --seeds 0,1,2)") from None
    return seeds


def _label(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def safe_name(text: str, *, inner: bool = False) -> str:
    """A run-name-safe version of ``text``: letters, digits, ``_ . -``, starting with a letter or digit
    (``inner``: a part after the start of a name, which may keep a leading ``-`` as in ``lr--1``)."""
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(text))
    s = s.rstrip("-") if inner else s.strip("-._")
    return s or "x"


# -- the plan --------------------------------------------------------------------------------------


@dataclass
class Axis:
    """One grid key with its values and their labels (the labels name cells and rows of the report)."""

    key: str
    values: list[Any]
    labels: list[str]
    short: str = ""

    def value_of(self, label: str) -> Any:
        return self.values[self.labels.index(label)]


@dataclass
class CellSpec:
    """What a worker needs to run one cell (picklable: it travels to processes and SLURM jobs)."""

    name: str
    config: dict[str, Any]
    source: str | None
    path: str
    mode: str = "fresh"  # fresh | resume | overwrite
    disable_plugins: tuple[str, ...] = ()
    log_file: str | None = None


@dataclass
class Cell:
    """One grid point x seed: an ordinary run directory ``OUT/cells/<name>``."""

    name: str
    settings: dict[str, str]
    seed: int
    raw: dict[str, Any]
    config: ResolvedConfig
    path: Path
    state: str = "run"  # run | finished | failed | skipped
    mode: str = "fresh"  # fresh | resume | overwrite (when state is run)
    note: str | None = None
    error: str | None = None

    @property
    def point(self) -> tuple[str, ...]:
        """The grid point (the settings without the seed)."""
        return tuple(self.settings.values())


@dataclass
class Plan:
    """Everything ``astrotl compare`` will do, validated before any cell runs."""

    source: Path
    out: Path
    base: ResolvedConfig
    options: CompareConfig
    axes: list[Axis]
    seeds: list[int]
    cells: list[Cell]
    executor: str
    workers: int
    threads: int | None
    ensemble: CompareEnsembleConfig | None
    disable_plugins: tuple[str, ...] = ()
    command: str = ""
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def to_run(self) -> list[Cell]:
        return [c for c in self.cells if c.state == "run"]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("finished", "failed", "skipped", "run", "interrupted")}
        for c in self.cells:
            out[c.state] = out.get(c.state, 0) + 1
        return out


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a config mapping; a ``stages`` list is keyed by stage name."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if k == "stages" and isinstance(v, list) and not prefix:
                for i, st in enumerate(v):
                    name = st.get("name", str(i)) if isinstance(st, dict) else str(i)
                    out.update(_flatten(st, f"stages.{name}."))
            elif isinstance(v, dict) and v:
                out.update(_flatten(v, f"{key}."))
            else:
                out[key] = v
    return out


def _stage_of(stages: list, ref: str, key: str) -> dict:
    for i, st in enumerate(stages):
        if isinstance(st, dict) and (st.get("name") == ref or str(i) == ref):
            return st
    names = [st.get("name") for st in stages if isinstance(st, dict)]
    raise ConfigError(f"compare.grid: '{key}' names stage '{ref}'{did_you_mean(ref, names)}, which the task file does "
                      f"not have (stages: {', '.join(map(str, names))})")


def _set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a raw config (``stages.<name>.<key>`` sets it inside that stage)."""
    parts = key.split(".")
    node = data
    i = 0
    while i < len(parts) - 1:
        k = parts[i]
        if k == "stages" and node is data:
            if len(parts) < 3:
                raise ConfigError(f"compare.grid: '{key}' would replace a whole stage; vary a key inside it, e.g. "
                                  f"stages.<name>.optim.lr")
            if not isinstance(node.get("stages"), list):
                raise ConfigError(f"compare.grid: '{key}' names a stage, but the task file has no stages")
            node = _stage_of(node["stages"], parts[i + 1], key)
            i += 2
            continue
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError(f"compare.grid: '{key}': '{k}' is a value, not a section; it cannot hold '{parts[-1]}'")
        node = node[k]
        i += 1
    node[parts[-1]] = copy.deepcopy(value)


def _has_key(resolved: dict[str, Any], key: str) -> bool:
    flat = _flatten(resolved)
    return key in flat or any(k.startswith(key + ".") for k in flat)


def _make_axes(grid: dict[str, Any]) -> list[Axis]:
    axes: list[Axis] = []
    for key, spec in grid.items():
        key = str(key)
        if isinstance(spec, dict):
            labels, values = [str(k) for k in spec], list(spec.values())
        elif isinstance(spec, (list, tuple)):
            values = list(spec)
            labels = [_label(v) for v in values]
        else:
            raise ConfigError(f"compare.grid: axis '{key}' must be a list of values or a mapping label: value, "
                              f"not {spec!r}")
        if not values:
            raise ConfigError(f"compare.grid: axis '{key}' has no values; give at least one (e.g. {key}: [a, b]) or "
                              f"remove it")
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise ConfigError(f"compare.grid: axis '{key}' gives the value '{dup[0]}' twice; each value once")
        axes.append(Axis(key, values, labels))
    leaves = [a.key.split(".")[-1] for a in axes]
    for a, leaf in zip(axes, leaves):
        a.short = leaf if leaves.count(leaf) == 1 and leaf != "seed" else a.key
    return axes


def _cell_names(points: list[tuple[tuple[str, ...], int]], axes: list[Axis]) -> list[str]:
    names = []
    for labels, seed in points:
        parts = [f"{safe_name(a.short)}-{safe_name(lab, inner=True)}" for a, lab in zip(axes, labels)]
        parts.append(f"seed-{seed}")
        name = "__".join(parts)
        if len(name) > 120:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[:100].rstrip('-_.')}-{digest}"
        names.append(name)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if names.count(n) > 1:  # two values that differ only in characters a file name cannot hold
            seen[n] = seen.get(n, 0) + 1
            names[i] = f"{n}-{seen[n]}"
    return names


def _import_submitit(executor: str):
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"compare.executor: {executor} runs cells through submitit, which is not installed; "
                          f"`pip install submitit` (or use executor: processes on this machine)") from None
    return submitit


def _read_state(out: Path) -> dict[str, Any]:
    f = out / STATE_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        raise RunDirError(f"'{f}' is not readable JSON; it was damaged: move it away (the cells' run directories "
                          f"are kept) and run again") from None
    if not isinstance(data, dict) or data.get("format") != "astrotl-compare":
        raise RunDirError(f"'{f}' was not written by astrotl compare; choose another --out")
    return data


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"compare output '{out}' is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
        raise RunDirError(f"compare output '{out}' is not empty and holds no {STATE_FILE}: it is not an astrotl "
                          f"compare folder; choose another --out (astrotl will not write into it)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_lock(out: Path) -> None:
    f = out / LOCK_FILE
    if not f.is_file():
        return
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError):
        return
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and _pid_alive(info["pid"]) \
            and info["pid"] != os.getpid():
        raise RunDirError(f"another astrotl compare (pid {info['pid']}, started {info.get('started')}) is writing "
                          f"'{out}'; wait for it to end or stop it, then run again")


@contextlib.contextmanager
def _lock(out: Path):
    _check_lock(out)
    write_json(out / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            (out / LOCK_FILE).unlink()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _config_diff(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring where and how a run runs (output_dir, RUNTIME_KEYS)."""
    a, b = _flatten(saved), _flatten(new)
    ignore = re.compile(r"^(stages\.[^.]+\.)?(output_dir|cache_dir|trainer\.(" + "|".join(RUNTIME_KEYS) + "))$")
    return sorted(k for k in set(a) | set(b) if not ignore.match(k) and a.get(k) != b.get(k))


def _saved_config(path: Path) -> dict[str, Any] | None:
    f = path / "config.resolved.yaml"
    if not f.is_file():
        return None
    try:
        return yaml.safe_load(f.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None


def weights_problem(cfg: ResolvedConfig) -> str | None:
    """Why the explicitly named backbone weights of ``cfg`` (or of any of its stages) cannot be had, else None.

    ``none``, ``auto`` (falls back with a warning inside the run) and ``stage:`` are never a problem; ``run:<dir>``
    must hold a finished run's backbone; ``imagenet``, weight tags and ``hf-hub:`` must be found offline (or be
    downloadable where downloads are allowed). Files are left to the run itself.
    """
    from .weights import locate, resolve_run_dir

    for st in cfg.stages or [cfg]:
        cls, bb = st.component("backbone")
        spec = str(getattr(bb, "weights", "") or "").strip()
        low = spec.lower()
        if not spec or low in ("none", "auto") or spec.startswith("stage:"):
            continue
        try:
            if spec.startswith("run:"):
                resolve_run_dir(spec)
                continue
            if not hasattr(cls, "pretrained_request"):
                continue
            probe = cls.__new__(cls)  # class-level knowledge only (architecture, tags): no weights are loaded
            req = probe.pretrained_request() if low in ("imagenet", "pretrained") else probe.named_request(spec)
            if req is not None and locate(req) is None:
                return req.missing_message()
        except WeightsError as exc:
            return " ".join(str(exc).split())
        except Exception as exc:  # noqa: BLE001 -- a backbone that needs its instance: the run will tell
            log.debug("weights probe of %s skipped: %s", spec, exc)
    return None


def make_plan(source: str | Path, registries, *, overrides: Sequence[str] = (), grid: Sequence[str] = (),
              seeds: str | Sequence[int] | None = None, out: str | Path | None = None, workers: int | None = None,
              executor: str | None = None, retry_failed: bool = False, ensemble: str | None = None,
              disable_plugins: Sequence[str] = (), command: str = "") -> Plan:
    """Read the task file and its ``compare`` block (merged with the command-line options), validate every
    cell and find what is already done. Writes nothing.

    Raises
    ------
    ConfigError
        Unknown grid key, empty axis, a cell that does not validate, bad seeds or ensemble axes, an executor
        that needs submitit when it is not installed.
    RunDirError
        ``out`` is not a compare folder, another compare is writing it, or a finished cell was made with
        another configuration.
    """
    source = Path(source)
    data, lines = load_yaml(source)
    data = expand_env(apply_overrides(data, list(overrides)))
    base = resolve(data, registries, source=source, lines=lines)
    opts = base.run.compare or CompareConfig()

    # -- merge the command line over the compare block
    grid_spec: dict[str, Any] = dict(opts.grid)
    for item in grid:
        key, values = parse_grid_option(item)
        grid_spec[key] = values
    if seeds is None:
        seed_list = list(opts.seeds) if opts.seeds is not None else [base.run.seed]
    else:
        seed_list = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("compare: the list of seeds is empty; give at least one (compare.seeds: [0, 1, 2] or "
                          "--seeds 0,1,2)")
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"compare: seed {next(s for s in seed_list if seed_list.count(s) > 1)} is given twice; "
                          f"list each seed once")
    executor = executor or opts.executor
    if executor not in EXECUTORS:
        raise ConfigError(f"compare.executor: '{executor}' is not one of {', '.join(EXECUTORS)}")
    if executor in SUBMITIT_EXECUTORS:
        _import_submitit(executor)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    out_path = Path(out or opts.out or Path(base.run.output_dir) / f"{base.run.name}_compare")

    for key in grid_spec:
        root = str(key).split(".")[0]
        if str(key) in RESERVED_KEYS or (root in ("name", "output_dir", "compare")):
            raise ConfigError(f"compare.grid: '{key}' cannot be varied: compare names every cell and puts it under "
                              f"{out_path}/{CELLS_DIR}/")
        if str(key) in opts.seed_keys:
            raise ConfigError(f"compare.grid: '{key}' is set from compare.seeds (seed_keys); give the seeds in "
                              f"compare.seeds or --seeds instead")
    axes = _make_axes(grid_spec)

    # -- ensembles
    ens: CompareEnsembleConfig | None
    if ensemble is not None:
        ens = CompareEnsembleConfig(over=[s.strip() for s in str(ensemble).split(",") if s.strip()] or ["seed"])
    elif opts.ensemble is True:
        ens = CompareEnsembleConfig()
    elif isinstance(opts.ensemble, CompareEnsembleConfig):
        ens = opts.ensemble
    else:
        ens = None
    if ens is not None:
        valid = ["seed", *(a.key for a in axes)]
        for o in ens.over:
            if o not in valid:
                raise ConfigError(f"compare.ensemble.over: '{o}'{did_you_mean(o, valid)} is neither 'seed' nor a grid "
                                  f"key; choose from {', '.join(valid)}")
        final = base.stages[-1] if base.stages else base
        task_cls = final.component("task")[0]
        if getattr(task_cls, "kind", "") == "detection":
            raise ConfigError(f"compare.ensemble combines one class per sample (classification, soft labels); task "
                              f"'{task_cls.name}' is a detection task with many rows per image: drop ensemble")

    # -- cells
    base_resolved = base.to_dict()
    all_keys = list(_flatten(base_resolved))
    raw_base = {k: v for k, v in copy.deepcopy(data).items() if k != "compare"}
    combos = list(itertools.product(*[list(zip(a.labels, a.values)) for a in axes])) if axes else [()]
    points = [(tuple(lab for lab, _ in combo), seed) for combo in combos for seed in seed_list]
    names = _cell_names(points, axes)
    cells_dir = out_path / CELLS_DIR
    cells: list[Cell] = []
    k = 0
    for combo in combos:
        for seed in seed_list:
            name = names[k]
            k += 1
            raw = copy.deepcopy(raw_base)
            for a, (_, value) in zip(axes, combo):
                _set_key(raw, a.key, value)
            for sk in opts.seed_keys:
                _set_key(raw, sk, seed)
            raw["name"] = name
            raw["output_dir"] = str(cells_dir.resolve())
            settings = {a.key: lab for a, (lab, _) in zip(axes, combo)}
            cfg = _resolve_cell(raw, registries, source, lines, name, settings, axes, base_resolved, all_keys)
            cells.append(Cell(name, settings, seed, raw, cfg, cells_dir / name))

    # -- what is done already
    _check_out(out_path)
    _check_lock(out_path)
    state = _read_state(out_path)
    records = state.get("cells", {}) if isinstance(state.get("cells"), dict) else {}
    for c in cells:
        _disk_state(c, records.get(c.name) or {}, retry_failed)
    for c in cells:
        if c.state == "run":
            problem = weights_problem(c.config)
            if problem:
                c.state, c.note = "skipped", f"weights unavailable: {problem}"

    # -- workers and threads
    cores = _cores()
    n_run = len([c for c in cells if c.state == "run"])
    if executor == "debug":
        n_workers = 1
    elif executor == "slurm":
        n_workers = min(max(n_run, 1), opts.slurm.array_parallelism)
    else:
        n_workers = workers or opts.workers or min(max(n_run, 1), cores)
    if executor in ("processes", "local") and n_workers > cores:
        log.warning("compare: %d workers on %d CPU cores: each cell gets 1 thread and they compete for the cores",
                    n_workers, cores)
    threads = opts.slurm.cpus_per_task if executor == "slurm" else max(1, cores // n_workers)
    user_threads = any(a.key.endswith("trainer.num_threads") for a in axes) or \
        (raw_base.get("trainer") or {}).get("num_threads") is not None
    for c in cells:
        if c.state != "run":
            continue
        if c.raw.get("trainer") is None:
            c.raw["trainer"] = {}
        trainer = c.raw["trainer"]
        if not isinstance(trainer, dict):
            continue
        if not user_threads:
            trainer["num_threads"] = threads
        if executor != "debug" and "progress_bar" not in trainer:
            trainer["progress_bar"] = False  # cells write to log files: a progress bar there is noise
        c.config = resolve(c.raw, registries, source=source, lines=lines)
    return Plan(source=source, out=out_path, base=base, options=opts, axes=axes, seeds=seed_list, cells=cells,
                executor=executor, workers=n_workers, threads=None if user_threads else threads, ensemble=ens,
                disable_plugins=tuple(disable_plugins), command=command, states=records)


def _resolve_cell(raw, registries, source, lines, name, settings, axes, base_resolved, all_keys) -> ResolvedConfig:
    try:
        return resolve(raw, registries, source=source, lines=lines)
    except ConfigError as exc:
        msg = " ".join(str(exc).split())
        for a in axes:
            if not _has_key(base_resolved, a.key) and re.search(rf"unknown key '{re.escape(a.key)}'", msg):
                raise ConfigError(f"compare.grid: unknown key '{a.key}'{did_you_mean(a.key, all_keys)}; grid keys "
                                  f"are dotted paths of the task file, e.g. optim.lr, backbone.weights, "
                                  f"train_subset.size") from None
        where = ", ".join(f"{k}={v}" for k, v in settings.items()) or "the task file itself"
        raise ConfigError(f"compare cell '{name}' ({where}) is invalid, so no cell was run: {msg}") from None


def _disk_state(cell: Cell, record: dict[str, Any], retry_failed: bool) -> None:
    rd = RunDirectory(cell.path)
    st = rd.status()
    if st is None:
        if cell.path.exists():
            if not rd.is_astrotl_run():
                rd.check(overwrite=False, resume=False)  # a folder astrotl did not make: refuse before anything runs
            else:
                cell.mode = "overwrite"  # killed before its run.json was written
        if record.get("status") == "failed" and not retry_failed:  # failed before its run directory was made
            cell.state, cell.error = "failed", record.get("error")
        return
    status = st.get("status")
    saved = _saved_config(cell.path)
    diff = _config_diff(saved, cell.config.to_dict()) if saved is not None else []
    if status == "finished":
        if diff:
            raise RunDirError(f"cell '{cell.name}' in '{cell.path.parent}' finished with another configuration "
                              f"({', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''} changed since); results would "
                              f"mix two setups: use another --out, or move that cell away to run it again")
        cell.state = "finished"
        return
    if status == "failed":
        if retry_failed:
            cell.state, cell.mode = "run", "overwrite"
        else:
            cell.state, cell.error = "failed", st.get("error") or record.get("error")
        return
    # running (a killed grid), interrupted or unreadable: continue where it stopped, or start again
    cell.state = "run"
    cell.mode = "resume" if not diff and status in ("running", "interrupted") else "overwrite"


# -- running one cell ------------------------------------------------------------------------------


def _resumable(rd: RunDirectory, cfg: ResolvedConfig) -> bool:
    from .engine import _check_resume_config
    from .rundir import check_checkpoint_file

    if (rd.status() or {}).get("status") not in ("running", "interrupted", "failed"):
        return False
    if not cfg.stages:
        if not rd.last_checkpoint.is_file():
            return False
        try:
            check_checkpoint_file(rd.last_checkpoint)
        except RunDirError:
            return False
    try:
        _check_resume_config(rd, cfg)
    except ConfigError:
        return False
    return True


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Run one cell (in whatever process an executor gives it); return ``{"status", "headline", "error", ...}``.

    A finished cell is not run again. With ``mode="resume"`` (an interrupted cell, or a SLURM job requeued
    after its time limit) the run continues from its last checkpoint when it can, else starts again. Errors
    are returned, not raised, so one bad cell does not stop the grid.
    """
    from .engine import run
    from .plugins import load_registries
    from .rundir import mark_interrupted

    t0 = time.time()
    rd = RunDirectory(spec.path)
    try:
        regs = load_registries(disable=spec.disable_plugins)
        cfg = resolve(spec.config, regs, source=spec.source)
        st = rd.status() or {}
        if st.get("status") == "finished" and spec.mode != "overwrite":
            return {"status": "finished", "headline": st.get("headline"), "already": True, "wall_s": 0.0}
        exists = rd.path.is_dir() and rd.is_astrotl_run()
        resume = exists and spec.mode != "overwrite" and _resumable(rd, cfg)
        overwrite = exists and not resume
        log.info("cell %s: %s", spec.name, "resuming" if resume else "starting again" if overwrite else "starting")
        result = run(cfg, regs, resume=resume, overwrite=overwrite)
        return {"status": "finished", "headline": result.headline, "resumed": resume,
                "wall_s": round(time.time() - t0, 1)}
    except AstrotlError as exc:
        return {"status": "failed", "error": " ".join(str(exc).split()), "wall_s": round(time.time() - t0, 1)}
    except SystemExit:  # submitit's requeue after a time limit or preemption: the next job resumes
        mark_interrupted("requeue")
        _mark_interrupted(rd.path, "requeue")
        raise
    except Exception as exc:  # noqa: BLE001 -- a bug in one cell must not stop the grid; the log has the traceback
        log.exception("cell %s failed", spec.name)
        return {"status": "failed", "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500],
                "wall_s": round(time.time() - t0, 1)}


def _mark_interrupted(path: Path, signame: str) -> None:
    """Status ``interrupted`` for a cell (and its stages) still marked ``running``: it stopped without the
    engine seeing it (a requeue's ``SystemExit``, a signal between two stages). Never raises."""
    from .stages import stage_dirs

    for d in [path, *stage_dirs(path)]:
        rd = RunDirectory(d)
        try:
            if (rd.status() or {}).get("status") == "running":
                rd.write_status(status="interrupted", signal=signame, ended=_now())
        except (AstrotlError, OSError) as exc:
            log.debug("could not mark %s interrupted: %s", d, exc)


class CellJob(_Checkpointable):
    """A cell as a submitit job. After a time limit (or preemption) submitit calls :meth:`checkpoint`, which
    resubmits the same cell as a resume (``astrotl run --resume`` of the cell's run directory)."""

    def __call__(self, spec: CellSpec) -> dict[str, Any]:
        return run_cell(spec)

    def checkpoint(self, spec: CellSpec, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, dataclasses.replace(spec, mode="resume"))


# -- executors -------------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Linux: a worker gets SIGTERM when the grid's process dies (even by SIGKILL), so no orphan keeps writing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(143)


@contextlib.contextmanager
def _output_to(log_file: str | None):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``log_file`` for the block."""
    if not log_file:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _worker_main(conn, parent_pid: int) -> None:
    """A worker process: run the cells the grid sends until it sends None."""
    _die_with_parent(parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False  # Lightning has its own handler: each line once
    from .rundir import mark_interrupted
    from .signals import RunInterrupted, interruptible

    spec = None
    try:
        with interruptible():
            while True:
                try:
                    spec = conn.recv()
                except (EOFError, OSError):
                    return
                if spec is None:
                    return
                with _output_to(spec.log_file):
                    result = run_cell(spec)
                conn.send(result)
                spec = None
    except RunInterrupted as exc:
        mark_interrupted(exc.signame)
        if spec is not None:
            _mark_interrupted(Path(spec.path), exc.signame)
        with contextlib.suppress(Exception):
            conn.send({"status": "interrupted", "error": f"interrupted by {exc.signame}"})
        os._exit(exc.exit_code)


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), name="astrotl-compare-worker")
        self.proc.start()
        child.close()
        self.spec: CellSpec | None = None
        self.t0 = 0.0

    def give(self, spec: CellSpec) -> None:
        self.spec, self.t0 = spec, time.time()
        self.conn.send(spec)


def _died(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _run_processes(plan: Plan, specs: list[CellSpec], record: Callable[[CellSpec, dict], None]) -> None:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited torch threads or locks
    pending = list(specs)
    workers: list[_Worker] = []
    try:
        for _ in range(min(plan.workers, len(pending))):
            workers.append(_Worker(ctx))
        for w in workers:
            if pending:
                w.give(pending.pop(0))
        while any(w.spec is not None for w in workers):
            busy = [w for w in workers if w.spec is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=10)
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                result = None
                try:
                    if w.conn.poll():
                        result = w.conn.recv()
                except (EOFError, OSError):  # the worker is gone (or going)
                    w.proc.join(timeout=10)
                if result is None:
                    if w.proc.is_alive():
                        continue
                    w.proc.join()
                    result = {"status": "failed", "error": f"the worker process died ({_died(w.proc)}) while running "
                              f"this cell; see {w.spec.log_file}", "wall_s": round(time.time() - w.t0, 1)}
                spec, w.spec = w.spec, None
                record(spec, result)
                if not w.proc.is_alive():  # replace a dead worker
                    workers.remove(w)
                    if not pending:
                        continue
                    w = _Worker(ctx)
                    workers.append(w)
                if pending:
                    w.give(pending.pop(0))
        for w in workers:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in workers:
            w.proc.join(timeout=30)
    finally:
        alive = [w for w in workers if w.proc.is_alive()]
        for w in alive:  # interrupted (or an error here): stop the cells, which mark their runs interrupted
            w.proc.terminate()
        for w in alive:
            w.proc.join(timeout=60)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        for w in workers:
            if w.spec is not None:
                record(w.spec, {"status": "interrupted", "error": "the grid was interrupted"})
                w.spec = None


def _minutes(value: int | str) -> int:
    """``compare.slurm.time``: minutes, or ``[D-]HH:MM[:SS]`` -> minutes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", str(value).strip())
    if not m:
        if str(value).strip().isdigit():
            return int(str(value).strip())
        raise ConfigError(f"compare.slurm.time: '{value}' is neither minutes nor [D-]HH:MM[:SS]; e.g. 90 or 01:30:00")
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return max(1, d * 1440 + h * 60 + mi + (1 if s else 0))


def make_executor(plan: Plan, folder: Path):
    """A submitit ``AutoExecutor`` for ``plan.executor`` with the resources of ``compare.slurm``."""
    submitit = _import_submitit(plan.executor)
    s = plan.options.slurm
    kwargs = {"slurm_max_num_timeout": s.max_requeue} if plan.executor == "slurm" else {}
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=plan.executor, **kwargs)
    params: dict[str, Any] = {"name": f"astrotl-{plan.base.run.name}", "timeout_min": _minutes(s.time)}
    if plan.executor == "slurm":
        params.update(cpus_per_task=s.cpus_per_task, gpus_per_node=s.gpus_per_node, mem_gb=s.mem_gb,
                      slurm_partition=s.partition, slurm_array_parallelism=s.array_parallelism,
                      slurm_account=s.account, slurm_qos=s.qos, slurm_constraint=s.constraint,
                      slurm_setup=list(s.setup) or None)
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as exc:
        raise ConfigError(f"compare.slurm: submitit refused the resources ({' '.join(str(exc).split())[:200]}); "
                          f"fix compare.slurm") from None
    return executor


def _run_submitit(plan: Plan, specs: list[CellSpec], record: Callable[[CellSpec, dict], None]) -> None:
    folder = plan.out / "submitit"
    executor = make_executor(plan, folder)
    fn = CellJob()

    def outcome(job, spec) -> dict[str, Any]:
        try:
            return job.result()
        except Exception as exc:  # noqa: BLE001 -- a job killed or lost by the cluster
            return {"status": "failed", "error": f"submitit job {job.job_id} did not return: "
                                                 f"{' '.join(str(exc).split())[:300]}"}

    if plan.executor == "debug":  # in this process, one after the other
        for spec in specs:
            record(spec, outcome(executor.submit(fn, spec), spec))
        return
    active: list[tuple[Any, CellSpec]] = []
    try:
        if plan.executor == "slurm":
            jobs = executor.map_array(fn, specs)  # one job array; array_parallelism limits how many run at once
            log.info("compare: submitted job array %s (%d cells)", jobs[0].job_id.split("_")[0] if jobs else "-",
                     len(jobs))
            active = list(zip(jobs, specs))
            for job, spec in active:
                record(spec, {"status": "submitted", "job_id": job.job_id})
        pending = [] if plan.executor == "slurm" else list(specs)
        while active or pending:
            while pending and len(active) < plan.workers:
                spec = pending.pop(0)
                job = executor.submit(fn, spec)
                active.append((job, spec))
                record(spec, {"status": "submitted", "job_id": job.job_id})
            done = [(j, s) for j, s in active if j.done()]
            for job, spec in done:
                active.remove((job, spec))
                record(spec, outcome(job, spec))
            if not done:
                time.sleep(1.0 if plan.executor == "local" else 15.0)
    finally:
        for job, spec in active:  # interrupted: stop the jobs; their cells resume on the next run
            with contextlib.suppress(Exception):
                job.cancel()
            record(spec, {"status": "interrupted", "error": "the grid was interrupted", "job_id": job.job_id})


def execute(plan: Plan, on_result: Callable[[Cell, dict], None] | None = None) -> None:
    """Run the cells of ``plan`` whose state is ``run``; keep ``OUT/compare.json`` up to date."""
    cells = {c.name: c for c in plan.cells}
    todo = plan.to_run
    if not todo:
        return
    make_dirs(plan.out / "logs")
    logs = (plan.out / "logs").resolve()
    specs = [CellSpec(name=c.name, config=c.raw, source=str(plan.source), path=str(c.path.resolve()), mode=c.mode,
                      disable_plugins=plan.disable_plugins, log_file=str(logs / f"{c.name}.log")) for c in todo]
    total = len(specs)
    done = [0]

    def record(spec: CellSpec, result: dict[str, Any]) -> None:
        cell = cells[spec.name]
        status = result.get("status")
        rec = {k: v for k, v in result.items() if v is not None}
        rec["updated"] = _now()
        plan.states[spec.name] = {**plan.states.get(spec.name, {}), **rec}
        if status in ("finished", "failed", "interrupted"):
            cell.state = status
            cell.error = result.get("error")
            if status != "interrupted":
                done[0] += 1
                what = result.get("headline") or "" if status == "finished" else f"FAILED: {result.get('error')}"
                log.info("cell %d/%d %s %s in %.0f s%s", done[0], total, spec.name, status, result.get("wall_s") or 0,
                         f": {what}" if what else "")
            if on_result is not None:
                on_result(cell, result)
        _write_state(plan)

    _write_state(plan)
    if plan.executor in ("processes", "local") and plan.workers > 1:
        warm_data(plan)
    if plan.executor == "processes":
        _run_processes(plan, specs, record)
    else:
        _run_submitit(plan, specs, record)


def warm_data(plan: Plan) -> None:
    """Build each distinct data section of the cells to run once, here, before the workers start: a simulated
    data set is then generated (and cached) once instead of by every worker at the same time. Failures are
    left to the cells, which report them."""
    from .engine import default_cache_dir

    seen: set[str] = set()
    for c in plan.to_run:
        for st in c.config.stages or [c.config]:
            ds_cls, ds_cfg = st.component("data")
            cache = Path(st.run.cache_dir).expanduser() if st.run.cache_dir else default_cache_dir()
            key = json.dumps([ds_cls.name, ds_cfg.model_dump(mode="json"), str(cache)], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            t0 = time.time()
            try:
                for split in ("train", "val", "test"):
                    ds_cls(ds_cfg, split=split, seed=st.run.seed, cache_dir=cache)
            except Exception as exc:  # noqa: BLE001 -- the cells will say what is wrong
                log.debug("compare: preparing data '%s' failed (%s); the cells will report it", ds_cls.name, exc)
                continue
            if time.time() - t0 > 5:
                log.info("compare: prepared data '%s' once for the workers (%.0f s)", ds_cls.name, time.time() - t0)


def _write_state(plan: Plan) -> None:
    cells = {}
    for c in plan.cells:
        rec = dict(plan.states.get(c.name, {}))
        rec.update(settings=c.settings, seed=c.seed, state=c.state)
        if c.note:
            rec["note"] = c.note
        cells[c.name] = rec
    write_json(plan.out / STATE_FILE, {
        "format": "astrotl-compare", "version": 1, "source": str(plan.source), "command": plan.command,
        "updated": _now(), "executor": plan.executor, "workers": plan.workers, "threads": plan.threads,
        "axes": [{"key": a.key, "labels": a.labels, "values": a.values} for a in plan.axes], "seeds": plan.seeds,
        "cells": cells})


# -- collecting results ----------------------------------------------------------------------------


def _final_dir(path: Path) -> Path:
    from .loadrun import final_run_dir

    return final_run_dir(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _weights_note(cell_path: Path) -> tuple[str, str, str]:
    """(requested, source, note) of a finished cell's backbone weights (every stage of a multi-stage cell)."""
    from .stages import stage_dirs

    dirs = stage_dirs(cell_path) or [cell_path]
    requested, source, notes = [], [], []
    for d in dirs:
        w = (_read_json(d / "run.json").get("weights") or {})
        req, src = str(w.get("requested") or ""), str(w.get("source") or "")
        requested.append(req)
        source.append(src)
        stage = f"stage {d.name}: " if len(dirs) > 1 else ""
        if w.get("warning"):
            notes.append(stage + " ".join(str(w["warning"]).split()))
        elif src == "random" and req.lower() not in ("none", ""):
            notes.append(f"{stage}weights '{req}' were requested but the backbone was randomly initialised")
    return " / ".join(requested), " / ".join(source), "; ".join(notes)


def collect_cells(plan: Plan) -> tuple[Table, str, bool]:
    """One row per cell: settings, seed, status, every scalar test metric, weights and notes.

    Returns the table, the headline metric's column (``test_<metric>``) and whether higher is better.
    """
    rows: list[dict[str, Any]] = []
    headline, higher = None, True
    for c in plan.cells:
        row: dict[str, Any] = {"cell": c.name, **{a.key: c.settings[a.key] for a in plan.axes}, "seed": c.seed}
        st = RunDirectory(c.path).status() or {}
        status = st.get("status") if c.state not in ("skipped",) else "skipped"
        if status is None:
            status = c.state if c.state != "run" else "not run"
        if c.state == "failed" and status != "finished":
            status = "failed"
        row["status"] = status
        note = c.note or ""
        if status == "failed":
            err = c.error or st.get("error") or (plan.states.get(c.name) or {}).get("error") or ""
            note = f"failed: {err}"
        metrics: dict[str, Any] = {}
        if status == "finished":
            m = _read_json(_final_dir(c.path) / "metrics.json")
            metrics = m.get("metrics") or {}
            if headline is None and m.get("headline_metric"):
                headline, higher = f"test_{m['headline_metric']}", bool(m.get("higher_is_better", True))
            req, src, wnote = _weights_note(c.path)
            row["weights_requested"], row["weights_source"] = req, src
            if wnote:
                note = wnote
            row["wall_time_s"] = float(st.get("wall_time_s") or metrics.get("wall_time_s") or float("nan"))
            row["headline"] = str(m.get("headline") or st.get("headline") or "")
        for k, v in metrics.items():
            if k.startswith("test_") and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = float(v)
        row["note"] = note
        row["path"] = os.path.relpath(c.path, plan.out)
        rows.append(row)
    metric_cols = sorted({k for r in rows for k in r if k.startswith("test_")})
    cols = ["cell", *(a.key for a in plan.axes), "seed", "status", *metric_cols, "headline", "weights_requested",
            "weights_source", "wall_time_s", "note", "path"]
    data: dict[str, list] = {}
    for col in cols:
        default: Any = float("nan") if col in metric_cols or col == "wall_time_s" else ""
        if col == "seed":
            default = -1
        data[col] = [r.get(col, default) for r in rows]
    table = Table(data)
    if headline is None:
        final = plan.base.stages[-1] if plan.base.stages else plan.base
        task_cls = final.component("task")[0]
        headline, higher = f"test_{task_cls.headline_metric}", bool(task_cls.higher_is_better)
    if headline not in table.colnames:
        table.add_column(np.full(len(table), np.nan), name=headline, index=table.colnames.index("status") + 1)
    table.meta.update({"headline_metric": headline, "higher_is_better": higher,
                       "axes": [a.key for a in plan.axes], "seeds": plan.seeds, "source": str(plan.source)})
    return table, headline, higher


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def summarise(cells: Table, axes: Sequence[str]) -> Table:
    """One row per grid point: counts and, for every ``test_*`` column, mean, std (ddof=1) and n over seeds."""
    metric_cols = [c for c in cells.colnames if c.startswith("test_")]
    points: dict[tuple, list[int]] = {}
    for i in range(len(cells)):
        points.setdefault(tuple(str(cells[a][i]) for a in axes), []).append(i)
    rows = []
    for point, idx in points.items():
        status = [str(cells["status"][i]) for i in idx]
        row: dict[str, Any] = dict(zip(axes, point))
        row.update(n_cells=len(idx), n_finished=status.count("finished"), n_failed=status.count("failed"),
                   n_skipped=status.count("skipped"))
        for m in metric_cols:
            vals = np.array([float(cells[m][i]) for i, s in zip(idx, status)
                             if s == "finished" and _finite(cells[m][i])])
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            row[f"{m}_n"] = len(vals)
        notes = sorted({str(cells["note"][i]) for i in idx if str(cells["note"][i])}) \
            if "note" in cells.colnames else []
        row["notes"] = " | ".join(notes)
        rows.append(row)
    cols = [*axes, "n_cells", "n_finished", "n_failed", "n_skipped",
            *[f"{m}_{s}" for m in metric_cols for s in ("mean", "std", "n")], "notes"]
    table = Table({c: [r[c] for r in rows] for c in cols}) if rows else Table()
    table.meta.update({k: v for k, v in cells.meta.items()})
    table.meta["description"] = "mean and sample standard deviation (ddof=1) over seeds of each grid point"
    return table


def _unique(values) -> list[str]:
    out: list[str] = []
    for v in values:
        if str(v) not in out:
            out.append(str(v))
    return out


def _verdict(r) -> str:
    """The paired table's verdict: "A better" only where the paired t-test says so (p < 0.05).

    >>> _verdict({"better": "gz1", "mean_diff": 0.028, "p_ttest": 0.13})
    'not significant (gz1 ahead by 0.028, p = 0.13)'
    >>> _verdict({"better": "gz1", "mean_diff": 0.055, "p_ttest": 0.007})
    'gz1 better by 0.055'
    """
    if r["better"] == "neither":
        return "no difference"
    by = f"{abs(float(r['mean_diff'])):.3f}"
    p = float(r["p_ttest"])
    if math.isfinite(p) and p < 0.05:
        return f"{r['better']} better by {by}"
    if math.isfinite(p):
        return f"not significant ({r['better']} ahead by {by}, p = {p:.2g})"
    return f"too few pairs to tell ({r['better']} ahead by {by})"


def _paired_row(axis: str, a: str, b: str, where: str, diffs: list[float], higher_is_better: bool) -> dict[str, Any]:
    import warnings

    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else float("nan")
    p_t = float("nan")
    if n > 1 and std > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_t = float(stats.ttest_1samp(d, 0.0).pvalue)  # = scipy.stats.ttest_rel(A, B)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_sign = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else float("nan")
    if mean == 0:
        better = "neither"
    else:
        better = a if (mean > 0) == higher_is_better else b
    return {"axis": axis, "a": a, "b": b, "where": where, "n_pairs": n, "mean_diff": mean, "std_diff": std,
            "sem_diff": std / math.sqrt(n) if n > 1 else float("nan"), "p_ttest": p_t, "p_sign": p_sign,
            "a_higher": wins, "b_higher": losses, "ties": n - wins - losses, "better": better}


def paired_comparison(cells: Table, axes: Sequence[str], metric: str, higher_is_better: bool = True) -> Table:
    """Paired differences ``metric(A) - metric(B)`` between two values of one axis at equal other settings and
    equal seed, for every axis and pair of its values.

    For each pair one row per setting of the other axes, plus a pooled row (``where = "all"``) over all of
    them when there are several. Columns: ``n_pairs``, ``mean_diff``, ``std_diff`` (ddof=1), ``sem_diff``,
    ``p_ttest`` (two-sided paired t-test, :func:`scipy.stats.ttest_rel`), ``p_sign`` (two-sided sign test,
    :func:`scipy.stats.binomtest` on the non-zero differences), ``a_higher`` / ``b_higher`` / ``ties`` and
    ``better`` (the better value given ``higher_is_better``, or ``neither``). Only rows with
    ``status == "finished"`` (when the column exists) and a finite metric take part.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"init": ["random", "gz1"] * 3, "seed": [0, 0, 1, 1, 2, 2],
    ...            "test_accuracy": [0.60, 0.65, 0.62, 0.66, 0.58, 0.61]})
    >>> row = paired_comparison(t, ["init"], "test_accuracy")[0]
    >>> row["a"], row["b"], round(row["mean_diff"], 3), row["better"]
    ('random', 'gz1', -0.04, 'gz1')
    """
    ok = [i for i in range(len(cells)) if _finite(cells[metric][i])
          and ("status" not in cells.colnames or str(cells["status"][i]) == "finished")]
    rows: list[dict[str, Any]] = []
    for axis in axes:
        others = [x for x in axes if x != axis]
        labels = _unique(cells[axis][i] for i in ok)
        if len(labels) < 2:
            continue
        by: dict[tuple, dict[str, float]] = {}
        for i in ok:
            key = (tuple(str(cells[o][i]) for o in others), int(cells["seed"][i]))
            by.setdefault(key, {})[str(cells[axis][i])] = float(cells[metric][i])
        slices = list(dict.fromkeys(k[0] for k in by))
        for a, b in itertools.combinations(labels, 2):
            pooled: list[float] = []
            n_slices = 0
            for sl in slices:
                diffs = [v[a] - v[b] for k, v in by.items() if k[0] == sl and a in v and b in v]
                if not diffs:
                    continue
                n_slices += 1
                where = ", ".join(f"{o}={x}" for o, x in zip(others, sl)) or "all"
                rows.append(_paired_row(axis, a, b, where, diffs, higher_is_better))
                pooled += diffs
            if n_slices > 1:
                rows.append(_paired_row(axis, a, b, "all", pooled, higher_is_better))
    cols = ["axis", "a", "b", "where", "n_pairs", "mean_diff", "std_diff", "sem_diff", "p_ttest", "p_sign",
            "a_higher", "b_higher", "ties", "better"]
    table = Table({c: [r[c] for r in rows] for c in cols}) if rows else Table(names=cols, dtype=[
        str, str, str, str, int, float, float, float, float, float, int, int, int, str])
    table.meta.update({"metric": metric, "higher_is_better": higher_is_better,
                       "description": "paired differences metric(a) - metric(b) at equal other settings and seed"})
    return table


def learning_curve_plot(cells: Table, axes: Sequence[Axis], x_key: str, metric: str, path: Path,
                        higher_is_better: bool = True) -> Path | None:
    """``metric`` (mean and std over seeds) against the numeric grid key ``x_key``, one line per setting of
    the other axes; returns the PNG's path, or None if there are fewer than two numeric x values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_axis = next(a for a in axes if a.key == x_key)
    others = [a for a in axes if a.key != x_key]
    xval: dict[str, float] = {}
    for lab, v in zip(x_axis.labels, x_axis.values):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xval[lab] = float(v)
    if len(xval) < 2:
        return None
    ok = [i for i in range(len(cells)) if str(cells["status"][i]) == "finished" and _finite(cells[metric][i])
          and str(cells[x_key][i]) in xval]
    lines: dict[tuple, dict[float, list[float]]] = {}
    for i in ok:
        key = tuple(str(cells[a.key][i]) for a in others)
        lines.setdefault(key, {}).setdefault(xval[str(cells[x_key][i])], []).append(float(cells[metric][i]))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key in sorted(lines, key=lambda k: [o.labels.index(x) if x in o.labels else 0 for o, x in zip(others, k)]):
        pts = lines[key]
        xs = np.array(sorted(pts))
        mean = np.array([np.mean(pts[x]) for x in xs])
        std = np.array([np.std(pts[x], ddof=1) if len(pts[x]) > 1 else 0.0 for x in xs])
        label = ", ".join(key) if key else metric
        line = ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=label)
        color = line[0].get_color()
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        for x in xs:
            ax.scatter([x] * len(pts[x]), pts[x], color=color, s=8, alpha=0.4)
    if max(xval.values()) / max(min(xval.values()), 1e-12) >= 5:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(f"{metric}: mean ± std over seeds")
    if others:
        ax.legend(title=", ".join(o.short for o in others), fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# -- ensembles -------------------------------------------------------------------------------------


def ensemble_groups(plan: Plan, over: Sequence[str]) -> dict[str, list[Cell]]:
    """Finished cells grouped by everything but the ``over`` axes (``"seed"`` and/or grid keys)."""
    groups: dict[str, list[Cell]] = {}
    keep = [a for a in plan.axes if a.key not in over]
    for c in plan.cells:
        if (RunDirectory(c.path).status() or {}).get("status") != "finished":
            continue
        parts = [f"{safe_name(a.short)}-{safe_name(c.settings[a.key], inner=True)}" for a in keep]
        if "seed" not in over:
            parts.append(f"seed-{c.seed}")
        groups.setdefault("__".join(parts) or "all", []).append(c)
    return groups


def _accuracy(pred, truth, has) -> float:
    from .ensemble import class_codes

    p, _ = class_codes(pred)
    return float((p[has] == truth[has]).mean()) if has.any() else float("nan")


def evaluate_ensemble(table: Table, members: Sequence[str]) -> dict[str, Any]:
    """The ensemble's accuracy (mode, and argmax of the mean probabilities) against its members' accuracies,
    plus the quality factor's distribution (Whitmore et al. 2021: the fraction of models agreeing)."""
    from .ensemble import class_codes

    qf = np.asarray(table["quality_factor"], dtype=float)
    out: dict[str, Any] = {"n_members": len(members), "n_candidates": len(table),
                           "quality_factor_mean": float(qf.mean()) if len(qf) else float("nan"),
                           "unanimous_fraction": float((qf == 1).mean()) if len(qf) else float("nan")}
    nan = float("nan")
    out.update(accuracy_mode=nan, accuracy_mean_prob=nan, member_accuracy_mean=nan, member_accuracy_std=nan,
               member_accuracy_min=nan, member_accuracy_max=nan, gain_over_members=nan, accuracy_unanimous=nan,
               accuracy_split=nan)
    if "true_class" not in table.colnames:
        return out
    truth, _ = class_codes(table["true_class"])
    has = truth != ""
    if not has.any():
        return out
    out["accuracy_mode"] = _accuracy(table["class_mode"], truth, has)
    accs = np.array([_accuracy(table[f"class_{m}"], truth, has) for m in members])
    out.update(member_accuracy_mean=float(accs.mean()), member_accuracy_std=float(accs.std(ddof=1)) if len(accs) > 1
               else nan, member_accuracy_min=float(accs.min()), member_accuracy_max=float(accs.max()))
    out["gain_over_members"] = out["accuracy_mode"] - out["member_accuracy_mean"]
    pcols = [c for c in table.colnames if c.startswith("p_") and c.endswith("_mean")]
    if pcols:
        probs = np.stack([np.asarray(table[c], dtype=float) for c in pcols], axis=1)
        classes, _ = class_codes([c[2:-5] for c in pcols])
        out["accuracy_mean_prob"] = float((classes[probs.argmax(axis=1)][has] == truth[has]).mean())
    mode, _ = class_codes(table["class_mode"])
    for key, sel in (("accuracy_unanimous", qf == 1), ("accuracy_split", qf < 1)):
        s = sel & has
        out[key] = float((mode[s] == truth[s]).mean()) if s.any() else nan
    return out


def run_ensembles(plan: Plan) -> Table:
    """Combine the members of every ensemble group (:func:`astrotl.ensemble.combine_predictions`), write
    ``OUT/ensembles/<group>.ecsv`` and return one row per group with :func:`evaluate_ensemble`'s numbers."""
    from .ensemble import class_codes, combine_predictions, read_predictions

    ens = plan.ensemble
    assert ens is not None
    rows = []
    for group, members in ensemble_groups(plan, ens.over).items():
        row: dict[str, Any] = {"group": group, "members": ", ".join(c.name for c in members), "file": "", "note": ""}
        if len(members) < ens.min_members:
            row["note"] = f"{len(members)} finished member(s), fewer than min_members={ens.min_members}"
            rows.append(row)
            continue
        varying = [a for a in plan.axes if a.key in ens.over]
        names = ["_".join([*(safe_name(c.settings[a.key]) for a in varying),
                           *([f"s{c.seed}"] if "seed" in ens.over else [])]) or c.name for c in members]
        if len(set(names)) != len(names):
            names = [c.name for c in members]
        try:
            tables = [read_predictions(_final_dir(c.path)) for c in members]
            if "pred_class" not in tables[0].colnames:
                raise DataError("the predictions have no pred_class column (one class per sample is needed)")
            _, numeric = class_codes(tables[0]["pred_class"])
            combined = combine_predictions(tables, names, tie_break=ens.tie_break, numeric_stats=numeric is not None)
        except (DataError, ConfigError) as exc:
            row["note"] = f"not combined: {' '.join(str(exc).split())}"
            rows.append(row)
            continue
        combined.meta["ensemble"]["paths"] = [str(c.path) for c in members]
        f = plan.out / "ensembles" / f"{group}.ecsv"
        write_table(f, combined)
        row["file"] = os.path.relpath(f, plan.out)
        row.update(evaluate_ensemble(combined, names))
        rows.append(row)
    keys = ["group", "n_members", "n_candidates", "accuracy_mode", "accuracy_mean_prob", "member_accuracy_mean",
            "member_accuracy_std", "member_accuracy_min", "member_accuracy_max", "gain_over_members",
            "quality_factor_mean", "unanimous_fraction", "accuracy_unanimous", "accuracy_split", "members", "file",
            "note"]
    table = Table({k: [r.get(k, float("nan") if k not in ("group", "members", "file", "note") else "") for r in rows]
                   for k in keys}) if rows else Table()
    table.meta["description"] = (f"ensembles over {', '.join(ens.over)}: accuracy of the mode of the members' classes "
                                 f"(and of the argmax of their mean probabilities) against each member's accuracy")
    return table


# -- the report ------------------------------------------------------------------------------------


@dataclass
class Link:
    text: str
    href: str


@dataclass
class Code:
    text: str


def _md(seg) -> str:
    if isinstance(seg, Link):
        return f"[{seg.text}]({seg.href})"
    if isinstance(seg, Code):
        return f"`{seg.text}`"
    if isinstance(seg, (list, tuple)):
        return "".join(_md(s) for s in seg)
    return str(seg).replace("|", "\\|")


def _html(seg) -> str:
    if isinstance(seg, Link):
        return f'<a href="{html.escape(seg.href)}">{html.escape(seg.text)}</a>'
    if isinstance(seg, Code):
        return f"<code>{html.escape(seg.text)}</code>"
    if isinstance(seg, (list, tuple)):
        return "".join(_html(s) for s in seg)
    return html.escape(str(seg))


class _Doc:
    """A tiny document model rendered both as Markdown (report.md) and HTML (index.html)."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text) -> None:
        self.blocks.append(("h", level, text))

    def p(self, *segs) -> None:
        self.blocks.append(("p", list(segs)))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, rows))

    def img(self, src: str, alt: str) -> None:
        self.blocks.append(("img", src, alt))

    def items(self, items: list) -> None:
        self.blocks.append(("list", items))

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + _md(b[2]).replace("\\|", "|"), ""]
            elif b[0] == "p":
                out += [_md(b[1]).replace("\\|", "|"), ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(_md(x) for x in b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(_md(x) for x in row) + " |" for row in b[2]]
                out.append("")
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif b[0] == "list":
                out += [f"- {_md(x).replace(chr(92) + '|', '|')}" for x in b[1]] + [""]
        return "\n".join(out)

    def html(self, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{_html(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_html(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{_html(x)}</th>" for x in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{_html(x)}</td>" for x in row) + "</tr>" for row in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                body.append(f'<p><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}"></p>')
            elif b[0] == "list":
                body.append("<ul>" + "".join(f"<li>{_html(x)}</li>" for x in b[1]) + "</ul>")
        style = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
                 "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}td,th{border:1px solid #ccc;"
                 "padding:.25rem .5rem;text-align:left}th{background:#f2f2f2}code{background:#f4f4f4;padding:0 .2rem}"
                 "img{max-width:100%}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _fmt(x, digits: int = 3) -> str:
    if not _finite(x):
        return "–"
    return f"{float(x):.{digits}f}"


def _pm(mean, std, n) -> str:
    if not _finite(mean):
        return "–"
    return f"{float(mean):.3f} ± {float(std):.3f}" if _finite(std) else f"{float(mean):.3f}" + (
        " (1 seed)" if int(n) == 1 else "")


def _p(x) -> str:
    if not _finite(x):
        return "–"
    return f"{float(x):.2g}" if float(x) >= 0.001 else "<0.001"


@dataclass
class Report:
    """What :func:`write_report` wrote and the numbers of its summary line."""

    path: Path
    counts: dict[str, int]
    cells: Table
    summary: Table
    paired: Table
    ensembles: Table | None
    headline_metric: str


def _report_metrics(plan: Plan, cells: Table, headline: str) -> list[str]:
    present = [c for c in cells.colnames if c.startswith("test_")]
    if plan.options.metrics:
        wanted = [m if m.startswith("test_") else f"test_{m}" for m in plan.options.metrics]
        missing = [m for m in wanted if m not in present]
        if missing and any(str(s) == "finished" for s in cells["status"]):
            log.warning("compare.metrics: %s not among the cells' test metrics (%s)", ", ".join(missing),
                        ", ".join(present))
        others = [m for m in wanted if m in present and m != headline]
    else:
        others = [f"test_{m}" for m in DEFAULT_METRICS if f"test_{m}" in present and f"test_{m}" != headline][:3]
    return [headline, *others]


def write_report(plan: Plan, *, elapsed_s: float | None = None) -> Report:
    """Write ``cells.ecsv``, ``summary.ecsv``, ``paired.ecsv``, the learning curve, the ensembles,
    ``report.md`` and ``index.html`` into ``plan.out`` from what the cells wrote."""
    out = plan.out
    axes = [a.key for a in plan.axes]
    cells, headline, higher = collect_cells(plan)
    summary = summarise(cells, axes)
    paired = paired_comparison(cells, axes, headline, higher)
    write_table(out / "cells.ecsv", cells)
    write_table(out / "summary.ecsv", summary)
    write_table(out / "paired.ecsv", paired)
    curve = None
    x_key = plan.options.curve_x or next((k for k in SIZE_KEYS if k in axes), None)
    if plan.options.curve_x and plan.options.curve_x not in axes:
        log.warning("compare.curve_x: '%s' is not a grid key; no learning curve", plan.options.curve_x)
        x_key = None
    if x_key:
        curve = learning_curve_plot(cells, plan.axes, x_key, headline, out / "learning_curve.png", higher)
    ens_table = run_ensembles(plan) if plan.ensemble is not None else None
    if ens_table is not None:
        write_table(out / "ensembles.ecsv", ens_table)

    counts = {s: int(sum(1 for x in cells["status"] if str(x) == s)) for s in ("finished", "failed", "skipped")}
    counts["other"] = len(cells) - sum(counts.values())
    metrics = _report_metrics(plan, cells, headline)
    hm = headline.removeprefix("test_")
    doc = _Doc()
    doc.h(1, ["Comparison ", Code(plan.base.run.name)])
    if plan.base.run.description:
        doc.p(" ".join(plan.base.run.description.split()))
    grid_txt = " × ".join(f"{a.key} ({', '.join(a.labels)})" for a in plan.axes) or "no grid axes"
    doc.p(f"{len(plan.cells)} cells: {grid_txt} × seeds {', '.join(map(str, plan.seeds))}. Task file ",
          Code(str(plan.source)), f"; executor {plan.executor}"
          + (f" ({plan.workers} worker{'s' * (plan.workers != 1)} × {plan.threads} "
             f"thread{'s' * (plan.threads != 1)} each)" if plan.executor in ("processes", "local") and plan.threads
             else "")
          + (f"; this invocation took {elapsed_s / 60:.1f} min" if elapsed_s is not None else "") + ".")
    doc.p(f"Status: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed"
          + (f", {counts['other']} not run or interrupted" if counts["other"] else "") + ".")

    doc.h(2, f"Results: test {hm} ({'higher' if higher else 'lower'} is better)")
    headers = [a.key for a in plan.axes] + ["seeds"] + [m.removeprefix("test_") for m in metrics] + ["notes"]
    rows = []
    for i in range(len(summary)):
        r = summary[i]
        row = [str(r[a]) for a in axes] + [f"{int(r['n_finished'])}/{int(r['n_cells'])}"]
        for m in metrics:
            row.append(_pm(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_n"]) if f"{m}_mean" in summary.colnames else "–")
        row.append(_short_note(str(r["notes"])))
        rows.append(row)
    doc.table(headers, rows)
    doc.p("Mean ± sample standard deviation (ddof=1) over the finished seeds of each grid point; \"seeds\" counts "
          "finished / planned cells. Every test metric is in ", Link("summary.ecsv", "summary.ecsv"),
          ", every cell in ", Link("cells.ecsv", "cells.ecsv"), ".")
    if curve is not None:
        doc.h(2, "Learning curve")
        doc.img(curve.name, f"test {hm} against {x_key}")
        doc.p(f"Test {hm} against {x_key}: mean ± std over seeds (band), single seeds as dots.")

    doc.h(2, f"Paired comparisons (test {hm}, matched seeds)")
    if len(paired):
        prow = []
        for r in paired:
            prow.append([str(r["axis"]), str(r["a"]), str(r["b"]), str(r["where"]), str(int(r["n_pairs"])),
                         _signed(r["mean_diff"]), _fmt(r["std_diff"]), _p(r["p_ttest"]), _p(r["p_sign"]),
                         _verdict(r)])
        doc.table(["axis", "A", "B", "at", "pairs", f"mean {hm}(A) − {hm}(B)", "std", "paired t-test p",
                   "sign test p", "verdict"], prow)
        n_min = int(min(paired["n_pairs"]))
        floor = min(1.0, 2 * 0.5 ** n_min)
        doc.p("Each pair is the same seed at the same other settings. With few seeds the p-values are rough: with "
              f"{n_min} pair{'s' if n_min != 1 else ''} a two-sided sign test cannot go below p = {floor:.2g}. ",
              Link("paired.ecsv", "paired.ecsv"), " has the wins of each side and the standard errors.")
    else:
        doc.p("No pairs: an axis needs two values finished with the same seed at the same other settings.")

    if ens_table is not None:
        doc.h(2, "Ensembles (" + ", ".join(plan.ensemble.over) + ")")
        if len(ens_table):
            erows = []
            for r in ens_table:
                link = Link(str(r["group"]), str(r["file"])) if str(r["file"]) else str(r["group"])
                if str(r["note"]):
                    n_members = str(r["members"].count(",") + 1)
                    erows.append([link, n_members, "–", "–", "–", "–", "–", str(r["note"])])
                    continue
                erows.append([link, str(int(r["n_members"])), _fmt(r["accuracy_mode"]),
                              f"{_fmt(r['member_accuracy_mean'])} ({_fmt(r['member_accuracy_min'])}–"
                              f"{_fmt(r['member_accuracy_max'])})", _signed(r["gain_over_members"]),
                              _fmt(r["accuracy_mean_prob"]),
                              f"{_fmt(r['quality_factor_mean'], 2)}; unanimous {_fmt(r['unanimous_fraction'], 2)} "
                              f"(accuracy {_fmt(r['accuracy_unanimous'])} vs {_fmt(r['accuracy_split'])} split)", ""])
            doc.table(["group", "members", "ensemble accuracy (mode)", "members' accuracy: mean (min–max)",
                       "gain", "accuracy of mean probabilities", "quality factor: mean; unanimous fraction", "note"],
                      erows)
            doc.p("As in Whitmore et al. (2021, App. 10.1): each candidate's class is the mode of the members' "
                  "classes, the quality factor the fraction of members agreeing with it; the tables (mean, median, "
                  "mode, std, quality factor, every member's class) are in ", Code("ensembles/"), ".")
        else:
            doc.p("No ensemble: no group has finished members.")

    notes = []
    grouped: dict[tuple[str, str], list[int]] = {}
    for i in range(len(cells)):
        if str(cells["note"][i]):
            grouped.setdefault((str(cells["status"][i]), str(cells["note"][i])), []).append(i)
    for (status, note), idx in grouped.items():  # one line per distinct note, naming its cells
        names = [Link(str(cells["cell"][i]), f"{cells['path'][i]}/report.md") if status == "finished"
                 else Code(str(cells["cell"][i])) for i in idx]
        shown = names if len(names) <= 3 else [names[0], ", ", names[1], ", ..., ", names[-1]]
        if len(names) <= 3:
            shown = [x for n in names for x in (n, ", ")][:-1]
        text = note.removeprefix("failed: ")
        if len(idx) > 1:
            notes.append([f"{len(idx)} cells (", *shown, f"), {status}: {text}"])
        else:
            notes.append([*shown, f" ({status}): {text}"])
    if notes:
        doc.h(2, "Notes")
        doc.items(notes)

    doc.h(2, "Cells")
    crow = []
    for i in range(len(cells)):
        name, status = str(cells["cell"][i]), str(cells["status"][i])
        link = [Link(name, f"{cells['path'][i]}/report.md"), " (", Link("folder", str(cells["path"][i])), ")"] \
            if (plan.out / str(cells["path"][i]) / "report.md").is_file() else Code(name)
        crow.append([link, status, _fmt(cells[headline][i]) if headline in cells.colnames else "–",
                     str(cells["weights_source"][i]) or "–", _fmt(cells["wall_time_s"][i], 0)])
    doc.table(["cell", "status", hm, "weights", "wall time (s)"], crow)
    doc.h(2, "Repeat")
    doc.p("Run again (finished cells are kept; ", Code("--retry-failed"), " reruns failed ones): ",
          Code(plan.command or f"astrotl compare {plan.source}"))
    doc.p("Files: ", Link("summary.ecsv", "summary.ecsv"), ", ", Link("cells.ecsv", "cells.ecsv"), ", ",
          Link("paired.ecsv", "paired.ecsv"),
          *([", ", Link("ensembles.ecsv", "ensembles.ecsv")] if ens_table is not None else []),
          ", ", Link(STATE_FILE, STATE_FILE),
          " (the plan and each cell's outcome), ", Code("logs/"), " (each cell's output), ", Code("cells/"),
          " (the run directories).")
    write_text(out / "report.md", doc.markdown())
    write_text(out / "index.html", doc.html(f"astrotl compare: {plan.base.run.name}"))
    return Report(out / "report.md", counts, cells, summary, paired, ens_table, headline)


def _signed(x) -> str:
    return f"{float(x):+.3f}" if _finite(x) else "–"


def _short_note(text: str) -> str:
    """A results-table note: the kind of problem; the Notes section has the whole text."""
    parts = [p.split(":")[0] if len(p) > 60 else p for p in text.split(" | ")]
    return "; ".join(dict.fromkeys(f"{p} (see Notes)" if len(p) < len(q) else p for p, q in
                                   zip(parts, text.split(" | "))))


# -- the whole command -----------------------------------------------------------------------------


@dataclass
class CompareResult:
    plan: Plan
    report: Report | None


def compare(source: str | Path, registries, *, dry_run: bool = False, report_only: bool = False,
            **plan_options) -> CompareResult:
    """Plan, run and report a comparison (see the module docstring); ``plan_options`` go to :func:`make_plan`."""
    plan = make_plan(source, registries, **plan_options)
    if dry_run:
        return CompareResult(plan, None)
    if plan.executor == "slurm" and plan.to_run and not report_only:
        import shutil

        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise ConfigError("compare.executor: slurm, but this machine has no SLURM commands (sbatch, srun); run "
                              "`astrotl compare` on the cluster's login node, or use executor: processes here")
    t0 = time.time()
    make_dirs(plan.out)
    with _lock(plan.out):
        if not report_only:
            if plan.executor == "slurm":
                log.info("compare: submitting %d cells to SLURM; keep this command running until they end (it "
                         "collects them and writes the report; after an interruption run it again)", len(plan.to_run))
            execute(plan)
        else:
            _write_state(plan)
        report = write_report(plan, elapsed_s=time.time() - t0)
    return CompareResult(plan, report)
