"""``astrotl clumps-compare OUT_DIR``: backbones x training-set sizes x seeds for the clump detector.

One command runs the grid of Popp et al. (2024)'s comparison -- which backbone initialisation
needs how many training images -- on a clump task file (default ``tasks/clumps.yaml``)::

    astrotl clumps-compare runs/clumps_compare --sizes 250,1000 --seeds 0,1 \\
        --backbone random=none --backbone imagenet=imagenet --backbone gz1=run:runs/gz1_pretrain

Every cell is an ordinary run (``<OUT_DIR>/runs/<label>_n<size>_s<seed>``) made by
:func:`astrotl.engine.run` from the task file with ``--set``-style overrides
(``backbone.weights``, ``train_subset.size``, ``train_subset.seed``, ``seed``, ``name``,
``output_dir`` and any ``--set`` given). The command is resumable: a finished cell is read back,
an interrupted one resumed, a failed one rerun. A cell whose weights are not available offline
(ImageNet weights not cached, the GZ1 pre-training not run yet) is recorded as ``skipped`` with
the reason, and the other cells go on.

Outputs in ``OUT_DIR`` (written atomically after every cell): ``cells.ecsv`` (one row per cell),
``summary.ecsv`` and ``summary.md`` (mean and standard deviation over seeds of completeness,
purity, F1 and mAP50 per backbone and size) and ``compare.png``. The summary table is printed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from astrotl.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

COMMAND = "clumps-compare"

#: The default cells: label -> backbone.weights.
DEFAULT_BACKBONES = {"random": "none", "imagenet": "imagenet", "gz1": "run:runs/gz1_pretrain"}
#: Test metrics tabulated (metrics.json keys without the ``test_`` prefix).
METRICS = ("completeness", "purity", "f1", "map_50")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        COMMAND, help="clump detector: backbones x training-set sizes x seeds -> table + plot (resumable)")
    p.add_argument("out_dir", help="folder for the cells' runs, cells.ecsv, summary.ecsv/.md and compare.png")
    p.add_argument("--task", default="tasks/clumps.yaml", help="clump task file (default tasks/clumps.yaml)")
    p.add_argument("--backbone", action="append", default=[], metavar="LABEL=WEIGHTS",
                   help="a backbone cell: label and backbone.weights (repeatable; default random=none, "
                        "imagenet=imagenet, gz1=run:runs/gz1_pretrain)")
    p.add_argument("--sizes", default="250,1000", help="training-set sizes (train_subset.size), comma-separated")
    p.add_argument("--seeds", default="0,1", help="seeds (run seed and training-subset seed), comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value in every cell, e.g. --set trainer.max_epochs=4 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="rerun every cell, replacing finished ones")


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: give comma-separated integers, e.g. --{what} 250,1000") from None
    if not values or any(v < (1 if what == "sizes" else 0) for v in values):
        kind, example = ("positive", "250,1000") if what == "sizes" else ("non-negative", "0,1")
        raise ConfigError(f"--{what} {text!r}: give comma-separated {kind} integers, e.g. --{what} {example}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--{what} {text!r} lists a value twice; give each once")
    return values


def parse_backbones(specs: list[str]) -> dict[str, str]:
    """``["label=weights", ...]`` -> ``{label: weights}`` (default :data:`DEFAULT_BACKBONES`)."""
    if not specs:
        return dict(DEFAULT_BACKBONES)
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, weights = spec.partition("=")
        label, weights = label.strip(), weights.strip()
        if not sep or not label or not weights:
            raise ConfigError(f"--backbone {spec!r}: give LABEL=WEIGHTS, e.g. --backbone gz1=run:runs/gz1_pretrain")
        if not all(ch.isalnum() or ch in "-_" for ch in label):
            raise ConfigError(f"--backbone {spec!r}: the label may hold only letters, digits, '-' and '_'")
        if label in out:
            raise ConfigError(f"--backbone {spec!r}: label '{label}' is given twice; give each label once")
        out[label] = weights
    return out


def _config_differs(run_dir: Path, config) -> list[str]:
    """Sections (other than ``trainer``) in which ``run_dir``'s saved config differs from ``config``."""
    import yaml

    saved_file = run_dir / "config.resolved.yaml"
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text()) or {}
    now = config.to_dict()
    return sorted(k for k in set(saved) | set(now) if k != "trainer" and saved.get(k) != now.get(k))


def run_cell(task_file: str, registries, out_dir: Path, label: str, weights: str, size: int, seed: int,
             overrides: list[str], overwrite: bool = False) -> dict[str, Any]:
    """Run (or read back, resume, skip) one cell; return its row for ``cells.ecsv``."""
    from astrotl.config import load_config
    from astrotl.engine import run
    from astrotl.rundir import RunDirectory

    name = f"{label}_n{size}_s{seed}"
    row: dict[str, Any] = {"backbone": label, "weights": weights, "size": size, "seed": seed, "run": name,
                           "status": "", "reason": "", **{m: np.nan for m in METRICS}, "best_f1": np.nan,
                           "wall_time_s": np.nan}
    sets = [*overrides, f"name={name}", f"output_dir={out_dir / 'runs'}", f"seed={seed}",
            f"train_subset.size={size}", f"train_subset.seed={seed}", f"backbone.weights={weights}"]
    config = load_config(task_file, registries, sets)
    rd = RunDirectory(out_dir / "runs" / name)
    status = (rd.status() or {}).get("status") if rd.path.is_dir() else None
    resume = False
    if status is not None and not overwrite:
        differs = _config_differs(rd.path, config)
        if differs:
            raise ConfigError(f"cell '{name}' in {out_dir} was made with another configuration (differs in "
                              f"{', '.join(differs)}); use another OUT_DIR or --overwrite")
        if status == "finished":
            log.info("cell %s: finished earlier, read back", name)
            return _row_from_run(row, rd.path)
        resume = status == "interrupted" and rd.last_checkpoint.is_file()
    log.info("cell %s: %s", name, "resuming" if resume else "running")
    try:
        run(config, registries, overwrite=status is not None and not resume, resume=resume)
    except WeightsError as exc:
        row.update(status="skipped", reason=" ".join(str(exc).split())[:300])
        log.warning("cell %s skipped: %s", name, row["reason"])
        return row
    return _row_from_run(row, rd.path)


def _row_from_run(row: dict[str, Any], path: Path) -> dict[str, Any]:
    data = json.loads((path / "metrics.json").read_text())
    m = data.get("metrics", {})
    row = dict(row, status="finished")
    for key in (*METRICS, "best_f1"):
        v = m.get(f"test_{key}")
        row[key] = float(v) if isinstance(v, (int, float)) and v is not None else np.nan
    row["wall_time_s"] = float(m.get("wall_time_s", np.nan))
    return row


def summarise(cells: Table) -> Table:
    """Mean and standard deviation over seeds per backbone and size (finished cells only)."""
    rows = []
    done = cells[np.asarray(cells["status"]) == "finished"] if len(cells) else cells
    order = list(dict.fromkeys(str(b) for b in cells["backbone"])) if len(cells) else []
    for label in order:
        for size in sorted({int(s) for s in cells["size"]}):
            sel = done[(np.asarray(done["backbone"]) == label) & (np.asarray(done["size"]) == size)] \
                if len(done) else done
            allsel = cells[(np.asarray(cells["backbone"]) == label) & (np.asarray(cells["size"]) == size)]
            row: dict[str, Any] = {"backbone": label, "size": size, "n_seeds": len(sel)}
            for m in METRICS:
                v = np.asarray(sel[m], dtype=float) if len(sel) else np.zeros(0)
                row[m] = float(np.mean(v)) if len(v) else np.nan
                row[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else np.nan
            reasons = sorted({str(r) for r, s in zip(allsel["reason"], allsel["status"]) if s == "skipped"})
            row["note"] = ("skipped: " + reasons[0]) if reasons and not len(sel) else ""
            rows.append(row)
    names = ["backbone", "size", "n_seeds", *[k for m in METRICS for k in (m, f"{m}_std")], "note"]
    t = Table(rows=[[r[k] for k in names] for r in rows], names=names) if rows else Table(names=names)
    t.meta["description"] = "test metrics of the clump detector, mean and standard deviation over seeds"
    return t


def summary_markdown(summary: Table) -> str:
    """The summary as a Markdown table (mean +- std over seeds)."""
    lines = ["| backbone | training images | seeds | completeness | purity | F1 | mAP50 |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        if int(r["n_seeds"]) == 0:
            lines.append(f"| {r['backbone']} | {r['size']} | 0 | {r['note'] or 'not run'} | | | |")
            continue
        cells = []
        for m in METRICS:
            mean, std = float(r[m]), float(r[f"{m}_std"])
            cells.append(f"{mean:.3f}" + (f" +- {std:.3f}" if np.isfinite(std) else ""))
        lines.append(f"| {r['backbone']} | {r['size']} | {r['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_plot(summary: Table, path: Path, title: str = "Clump detector: backbone and training-set size") -> Path:
    """Completeness, purity, F1 and mAP50 (mean +- std over seeds) against the training-set size per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrotl.io import save_figure

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.1 * len(METRICS), 3.2), sharex=True)
    labels = list(dict.fromkeys(str(b) for b in summary["backbone"])) if len(summary) else []
    for ax, m in zip(axes, METRICS):
        for label in labels:
            sel = summary[(np.asarray(summary["backbone"]) == label) & (np.asarray(summary["n_seeds"]) > 0)]
            if not len(sel):
                continue
            ax.errorbar(np.asarray(sel["size"], float), np.asarray(sel[m], float),
                        yerr=np.nan_to_num(np.asarray(sel[f"{m}_std"], float)), fmt="o-", capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_title(m.replace("map_50", "mAP50"), fontsize=9)
        ax.set_xlabel("training images")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    skipped = [str(r["backbone"]) for r in summary if int(r["n_seeds"]) == 0]
    if labels:
        axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title + (f" (skipped: {', '.join(sorted(set(skipped)))})" if skipped else ""), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def compare(task_file: str, registries, out_dir: str | Path, *, backbones: dict[str, str], sizes: list[int],
            seeds: list[int], overrides: list[str] | None = None, overwrite: bool = False) -> tuple[Table, Table]:
    """Run every cell (resumable) and write ``cells.ecsv``, ``summary.ecsv``, ``summary.md``, ``compare.png``.

    Returns
    -------
    cells, summary : astropy.table.Table
    """
    from astrotl.io import make_dirs, write_table, write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR '{out}' is a file; give a folder for the comparison")
    if not Path(task_file).is_file():
        raise ConfigError(f"task file '{task_file}' does not exist; give --task tasks/clumps.yaml or another clump "
                          f"task file")
    make_dirs(out)
    rows = []
    for label, weights in backbones.items():
        for size in sizes:
            for seed in seeds:
                rows.append(run_cell(task_file, registries, out, label, weights, size, seed, list(overrides or []),
                                     overwrite=overwrite))
                cells = Table(rows=rows)
                write_table(out / "cells.ecsv", cells)
    cells = Table(rows=rows)
    cells.meta["description"] = "one row per cell (backbone x training-set size x seed); status finished or skipped"
    cells.meta["task"] = str(task_file)
    cells.meta["overrides"] = list(overrides or [])
    summary = summarise(cells)
    summary.meta["task"] = str(task_file)
    summary.meta["overrides"] = list(overrides or [])
    write_table(out / "cells.ecsv", cells)
    write_table(out / "summary.ecsv", summary)
    write_text(out / "summary.md", summary_markdown(summary))
    compare_plot(summary, out / "compare.png")
    return cells, summary


def run(args, out) -> int:
    backbones = parse_backbones(args.backbone)
    sizes = _ints(args.sizes, "sizes")
    seeds = _ints(args.seeds, "seeds")
    _, summary = compare(args.task, args.registries, args.out_dir, backbones=backbones, sizes=sizes, seeds=seeds,
                         overrides=args.overrides, overwrite=args.overwrite)
    out.write(summary_markdown(summary))
    out.write(f"written: {Path(args.out_dir) / 'summary.ecsv'}, {Path(args.out_dir) / 'compare.png'}\n")
    return 0
