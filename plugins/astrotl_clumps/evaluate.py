"""``astrotl clumps-evaluate RUN_DIR OUT_DIR --data FILE``: score a finished clump run on other labelled data.

The use case is a detector trained on simulated frames applied to real labels, e.g. the 92 GZ:Hubble
Stripe 82 galaxies (``gzh_s82``) resampled to the simulator's pixel scale::

    astrotl clumps-evaluate runs/clumps runs/clumps_on_s82 --data tasks/clumps_s82_data.yaml \\
        --set task.match=distance --set task.match_distance=4

The run's model is rebuilt by :func:`astrotl.loadrun.load_run` (bands and classes checked against the
new data); ``--data`` replaces the run's ``data:`` section and ``--set`` overrides any key of the run's
configuration (the match rule, the post-processing, the brightness column ...). The ``test`` split (or
``--split``) is predicted and evaluated by the run's task exactly as at the end of a run.

``OUT_DIR`` receives ``predictions.ecsv``, ``truth.ecsv``, ``metrics.json``, ``tables/*.ecsv``,
``plots/*.png``, ``regions/`` and ``report.md`` (written atomically); the headline is printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from astrotl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

COMMAND = "clumps-evaluate"
#: Files this command writes in OUT_DIR (an existing one is replaced only with --overwrite).
OUTPUTS = ("report.md", "metrics.json", "predictions.ecsv", "truth.ecsv")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(COMMAND, help="evaluate a finished clump run on other labelled data (e.g. gzh_s82)")
    p.add_argument("run_dir", help="a finished run of the clumps task, e.g. runs/clumps")
    p.add_argument("out_dir", help="folder for the predictions, tables, plots, regions and report")
    p.add_argument("--data", dest="data_file", help="YAML file with a data: section replacing the run's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override the run's config, e.g. --set task.match=distance (repeatable)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "predict"],
                   help="which split of the data to evaluate (default test)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in OUT_DIR")
    p.add_argument("--null-rotations", type=int, default=0, metavar="N",
                   help="chance level: completeness with each image's detections rotated about the frame centre by "
                        "random angles, N draws (for labels with approximate positions)")


def rotation_null(detections, truth, task, centre: tuple[float, float], n: int, seed: int = 0) -> np.ndarray:
    """Completeness of detections rotated about ``centre`` by a random angle per image (``n`` draws).

    Detections with score >= the task's ``score_threshold`` keep their box sizes and scores; they are
    matched to the true boxes with the task's own rule. The result is the completeness a detector
    would reach by chance with the same number and radial distribution of detections.
    """
    from astrotl.tasks.detection import match_detections

    c = task.config
    rng = np.random.default_rng(seed)
    det = detections[np.asarray(detections["score"], dtype=float) >= c.score_threshold] if len(detections) \
        else detections
    t_index = np.asarray(truth["index"]) if len(truth) else np.zeros(0, np.int64)
    if len(truth) == 0:
        return np.full(n, np.nan)
    t_boxes = np.stack([np.asarray(truth[k], dtype=float) for k in ("x0", "y0", "x1", "y1")], 1)
    d_index = np.asarray(det["index"]) if len(det) else np.zeros(0, np.int64)
    out = np.zeros(n)
    for k in range(n):
        found = 0
        for img in np.unique(t_index):
            d = det[d_index == img] if len(det) else det
            if not len(d):
                continue
            x0, y0, x1, y1 = (np.asarray(d[q], dtype=float) for q in ("x0", "y0", "x1", "y1"))
            cx, cy = (x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]
            a = rng.uniform(0, 2 * np.pi)
            rx, ry = centre[0] + cx * np.cos(a) - cy * np.sin(a), centre[1] + cx * np.sin(a) + cy * np.cos(a)
            hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
            rotated = np.stack([rx - hw, ry - hh, rx + hw, ry + hh], 1)
            _, tm, _ = match_detections(rotated, np.asarray(d["score"], float), t_boxes[t_index == img],
                                        rule=c.match, iou=c.match_iou, distance=c.match_distance)
            found += int((tm >= 0).sum())
        out[k] = found / len(truth)
    return out


def evaluate_run(run_dir: str | Path, registries, out_dir: str | Path, *, data_file: str | Path | None = None,
                 overrides: list[str] | None = None, split: str = "test", batch_size: int | None = None,
                 overwrite: bool = False, null_rotations: int = 0) -> tuple[dict, str]:
    """Predict and evaluate ``split`` of the (new) data with a finished run's model; return (metrics, headline)."""
    from astrotl.engine import cache_dir_for, make_loader, predictions_table, rows_table
    from astrotl.io import write_json, write_table, write_text
    from astrotl.loadrun import load_run

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR '{out}' is a file; give a folder for the evaluation")
    if not overwrite and any((out / f).exists() for f in OUTPUTS):
        raise DataError(f"'{out}' already holds an evaluation; choose another OUT_DIR or pass --overwrite")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give a positive number of images per batch")
    if null_rotations < 0:
        raise ConfigError(f"--null-rotations {null_rotations}: give a number of draws >= 0")
    loaded = load_run(run_dir, registries, overrides=overrides, data_file=data_file)
    cfg = loaded.config
    ds_cls, ds_cfg = cfg.component("data")
    dataset = ds_cls(ds_cfg, split=split, seed=cfg.run.seed, cache_dir=cache_dir_for(cfg))
    if len(dataset) == 0:
        raise DataError(f"the {split} split of data set '{ds_cls.name}' is empty; check the data section")
    model, task = loaded.model_for(dataset.info())
    if getattr(task, "kind", None) != "detection":
        raise ConfigError(f"run '{loaded.path}' is a '{task.name}' run; clumps-evaluate needs a detection (clumps) run")
    task.check_data(dataset, split if split != "train" else "test")
    loader = make_loader(dataset, task.eval_transform(), cfg.run.trainer, task=task, batch_size=batch_size)
    rows, truth_rows = [], []
    with torch.inference_mode():
        for batch in loader:
            rows.extend(task.predict_batch(model, batch))
            truth_rows.extend(task.truth_rows(batch))
    preds = predictions_table(rows, dataset.catalog())
    truth = rows_table(truth_rows)
    metrics, tables = task.evaluate(preds, truth)
    null_line = ""
    if null_rotations:
        h, w = dataset[0]["image"].shape[-2:]
        null = rotation_null(tables["detections"], truth, task, ((w - 1) / 2, (h - 1) / 2), null_rotations)
        metrics.update(chance_completeness_mean=float(np.mean(null)), chance_completeness_std=float(np.std(null)),
                       chance_completeness_max=float(np.max(null)), chance_rotations=int(null_rotations))
        null_line = (f"Chance level: with each image's detections rotated about the frame centre by a random angle "
                     f"({null_rotations} draws) the completeness is {np.mean(null):.3f} +- {np.std(null):.3f} "
                     f"(max {np.max(null):.3f}), against {metrics.get('completeness', float('nan')):.3f} measured.\n")
    headline = task.headline(metrics)
    write_table(out / "predictions.ecsv", preds)
    if len(truth):
        write_table(out / "truth.ecsv", truth)
    for name, table in tables.items():
        write_table(out / "tables" / f"{name}.ecsv", table)
    write_json(out / "metrics.json", {"metrics": metrics, "headline": headline, "run": str(loaded.path),
                                      "data": cfg.to_dict()["data"], "overrides": list(overrides or []),
                                      "split": split})
    plots = task.plots(preds, truth, metrics, rows_table([]), out / "plots")
    lines = [f"# Evaluation of `{loaded.path}` on `{ds_cls.name}` ({split} split, {len(dataset)} images)", "",
             f"**{headline}**" if headline else "", "",
             f"- overrides: {', '.join(f'`{o}`' for o in overrides) if overrides else 'none'}",
             f"- data: `{cfg.to_dict()['data']}`", "", "## Results", "", task.report(preds, metrics, tables), null_line]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    lines += ["## Files", ""] + [f"- `{k}`: {v}" for k, v in task.output_files().items()] + [""]
    write_text(out / "report.md", "\n".join(lines))
    return metrics, headline


def run(args, out) -> int:
    metrics, headline = evaluate_run(args.run_dir, args.registries, args.out_dir, data_file=args.data_file,
                               overrides=args.overrides, split=args.split, batch_size=args.batch_size,
                               overwrite=args.overwrite, null_rotations=args.null_rotations)
    out.write(f"evaluated: {args.out_dir}; {headline}; see {Path(args.out_dir) / 'report.md'}\n")
    if "chance_completeness_mean" in metrics:
        out.write(f"chance completeness (detections rotated, {metrics['chance_rotations']} draws): "
                  f"{metrics['chance_completeness_mean']:.3f} +- {metrics['chance_completeness_std']:.3f} "
                  f"(max {metrics['chance_completeness_max']:.3f})\n")
    return 0
