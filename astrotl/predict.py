"""Apply a finished run's model to new data and write a classified catalogue.

    astrotl predict runs/phangs_mosaic --set data.catalog=new_candidates.ecsv \\
        --set data.images.F555W=new_f555w.fits ... --out classified.ecsv

The run's ``config.resolved.yaml`` is the starting point: ``--set data.*`` overrides (or
``--data FILE.yaml`` holding a ``data:`` section) point it at the new images and catalogue. The
model is rebuilt with the run's task, backbone and head and loaded from ``model.safetensors``; each
sample of the data set's ``predict`` split is classified, and the output is the input catalogue
joined (by row) with the predictions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from .config import apply_overrides, expand_env, load_yaml, resolve
from .engine import _Transformed, default_cache_dir, predictions_table
from .errors import DataError, RunDirError
from .io import write_table
from .plugins import Registries
from .rundir import RunDirectory

log = logging.getLogger(__name__)


def _run_metadata(model_file: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(model_file), framework="pt") as fh:
        meta = fh.metadata() or {}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def predict(run_dir: str | Path, registries: Registries, *, out: str | Path, overrides: list[str] | None = None,
            data_file: str | Path | None = None, overwrite: bool = False, batch_size: int | None = None,
            device: str = "auto", split: str = "predict") -> Path:
    """Classify the ``predict`` split of (new) data with a finished run's model; return the output path."""
    rd = RunDirectory(run_dir)
    out = Path(out)
    st = rd.status()
    if st is None:
        raise RunDirError(f"'{rd.path}' is not an astrotl run directory (no run.json); give the directory of a finished run")
    if st.get("status") != "finished":
        raise RunDirError(f"run '{rd.path}' is not finished (status: {st.get('status')}); finish it with `astrotl run ... --resume`")
    model_file = rd.path / "model.safetensors"
    cfg_file = rd.path / "config.resolved.yaml"
    for f in (model_file, cfg_file):
        if not f.is_file():
            raise RunDirError(f"run '{rd.path}' has no {f.name}; it was written by an incomplete run, rerun it")
    if out.exists() and not overwrite:
        raise DataError(f"output '{out}' already exists; choose another --out or pass --overwrite")
    fmt_ok = out.suffix in (".ecsv", ".fits", ".csv")
    if not fmt_ok:
        raise DataError(f"--out '{out}' must end in .ecsv, .fits or .csv")

    raw = yaml.safe_load(cfg_file.read_text())
    if data_file is not None:
        data_doc, _ = load_yaml(data_file)
        raw["data"] = data_doc["data"] if "data" in data_doc else data_doc
    raw = expand_env(apply_overrides(raw, overrides or []))
    cfg = resolve(raw, registries, source=cfg_file)
    meta = _run_metadata(model_file)

    ds_cls, ds_cfg = cfg.component("data")
    cache = Path(cfg.run.cache_dir).expanduser() if cfg.run.cache_dir else default_cache_dir()
    dataset = ds_cls(ds_cfg, split=split, seed=cfg.run.seed, cache_dir=cache)
    if len(dataset) == 0:
        raise DataError("the data to predict on has no samples; check the catalogue and the data section")
    info = dataset.info()
    run_bands = tuple(meta.get("bands") or ())
    if run_bands and tuple(info.bands) != run_bands:
        raise DataError(f"band mismatch: the model was trained on {list(run_bands)}, the data has {list(info.bands)}; "
                        f"give the images in the same bands and order")
    run_classes = tuple(str(c) for c in meta.get("classes") or ())
    if run_classes and info.classes and tuple(info.classes) != run_classes:
        raise DataError(f"class mismatch: the model predicts {list(run_classes)}, the data set declares {list(info.classes)}")
    if run_classes and not info.classes:
        info = replace(info, classes=run_classes)

    task_cls, task_cfg = cfg.component("task")
    task = task_cls(task_cfg, info)
    bb_cls, bb_cfg = cfg.component("backbone")
    if "weights" in type(bb_cfg).model_fields:
        bb_cfg = bb_cfg.model_copy(update={"weights": "none"})  # the trained weights come from model.safetensors
    backbone = bb_cls(bb_cfg, in_chans=len(info.bands), bands=info.bands)
    head_cls, head_cfg = cfg.component("head")
    head = head_cls(head_cfg, in_features=backbone.num_features, out_features=task.output_dim())
    model = task.build_model(backbone, head)
    from safetensors.torch import load_file

    state = load_file(str(model_file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunDirError(f"model.safetensors of '{rd.path}' does not fit the rebuilt model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); was the run made with another astrotl version?")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model.to(dev).eval()
    tc = cfg.run.trainer
    loader = DataLoader(_Transformed(dataset, task.eval_transform()), batch_size=batch_size or tc.batch_size,
                        shuffle=False, num_workers=tc.num_workers, collate_fn=getattr(type(dataset), "collate_fn", None))
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch in loader:
            batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            rows.extend(task.predict_batch(model, batch))
    catalog = dataset.input_catalog() if hasattr(dataset, "input_catalog") else dataset.catalog()
    table = predictions_table(rows, catalog)
    table.meta.update({"astrotl_run": str(rd.path), "model_sha256": _sha(model_file), "bands": list(info.bands),
                       "classes": list(info.classes or [])})
    write_table(out, table)
    log.info("classified %d sources with %s -> %s", len(table), rd.path, out)
    return out


def _sha(path: Path) -> str:
    from .io import sha256_file

    return sha256_file(path)
