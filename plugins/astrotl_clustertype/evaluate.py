"""Real-image evaluation of open/globular cluster classifiers trained on something else (simulations).

:func:`evaluate_run` applies a finished run's model (e.g. trained on ``clustertype_sim``) to the real
Stellarium cluster images (``clustertype_stellarium``, every labelled image) and scores it with the run's
own task: accuracy, F1 and ROC AUC of ``globular``, the confusion matrix and the ROC curve::

    astrotl clustertype-evaluate runs/clustertype --out runs/clustertype_on_stellarium

Fine-tuning on the real images with k-fold cross-validation is an ordinary ``astrotl run`` of
``tasks/clustertype_stellarium.yaml`` (its ``cv:`` section; :mod:`astrotl.crossval`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astropy.table import Table

from astrotl.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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
