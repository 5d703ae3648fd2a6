"""The training engine: config -> components -> Lightning fit / validate / predict -> run directory.

Everything that can fail because of the user's input (names, keys, files, weights, an occupied
run directory) is checked before the run directory is touched, so bad input never leaves a
half-written run.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from astropy.table import Table, join
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from . import __version__
from .config import ResolvedConfig
from .errors import AstrotlError, ConfigError, DataError
from .interfaces import Backbone, DatasetInfo, Head, ImageDataset, Task
from .io import write_json, write_table, write_text
from .plugins import Registries
from .rundir import RunDirectory

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$ASTROTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/astrotl``, else ``~/.cache/astrotl``."""
    if os.environ.get("ASTROTL_CACHE_DIR"):
        return Path(os.environ["ASTROTL_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "astrotl"


def is_main_process() -> bool:
    """True unless this process is a secondary DDP rank (launched by Lightning, torchrun or SLURM)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key) not in (None, "", "0"):
            return False
    return os.environ.get("NODE_RANK") in (None, "", "0")


# -- Lightning glue ------------------------------------------------------------------------------


class TaskModule(L.LightningModule):
    """Lightning module delegating loss, metrics and prediction to a :class:`Task`."""

    def __init__(self, task: Task, model: nn.Module, optim_cfg, max_epochs: int):
        super().__init__()
        self.task = task
        self.model = model
        self.optim_cfg = optim_cfg
        self.max_epochs = max_epochs
        self.val_metrics = task.make_metrics()

    def forward(self, x):
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            batch = self.task.batch_augment(batch)
        return batch

    def _batch_size(self, batch) -> int:
        return int(batch["image"].shape[0])

    def training_step(self, batch, batch_idx):
        loss, _ = self.task.training_loss(self.model, batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._batch_size(batch), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, outputs = self.task.training_loss(self.model, batch)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=self._batch_size(batch), sync_dist=True)
        self.task.update_metrics(self.val_metrics, outputs, batch)
        for key, metric in self.val_metrics.items():
            self.log(f"val_{key}", metric, on_epoch=True, prog_bar=key == "acc", batch_size=self._batch_size(batch))

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self.task.predict_batch(self.model, batch)

    def configure_optimizers(self):
        c = self.optim_cfg
        from .finetune import param_groups

        params = param_groups(self.model, c.lr)  # trainable parameters; per-block lr with backbone.lr_decay
        if not params:
            raise ConfigError("every parameter is frozen: nothing to train; lower backbone.freeze_blocks")
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        elif c.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.scheduler == "none" and not c.warmup_epochs:
            return opt
        schedulers = []
        if c.warmup_epochs:
            schedulers.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=c.warmup_epochs))
        if c.scheduler == "cosine":
            schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs - c.warmup_epochs)))
        elif c.scheduler == "step":
            schedulers.append(torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma))
        if len(schedulers) == 1:
            sched = schedulers[0]
        elif len(schedulers) == 0:
            return opt
        else:
            sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers, milestones=[c.warmup_epochs])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class HistoryCallback(Callback):
    """Collects per-epoch metrics; its state travels in checkpoints so --resume keeps the curves."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the final trainer.validate()
            return
        row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(("train_", "val_")) and not k.endswith("_step"):
                row[k.removesuffix("_epoch")] = float(v)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        # train_loss is only final at the end of the train epoch (after validation ran)
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch and "train_loss" in trainer.callback_metrics:
            self.rows[-1]["train_loss"] = float(trainer.callback_metrics["train_loss"])
        if trainer.is_global_zero and self.rows and self.rows[-1]["epoch"] == trainer.current_epoch:
            r = self.rows[-1]
            shown = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k not in ("epoch", "step"))
            log.info("epoch %d/%d  %s  (%.1f s)", r["epoch"] + 1, trainer.max_epochs, shown,
                     time.time() - getattr(self, "_t0", time.time()))

    def table(self) -> Table:
        if not self.rows:
            return Table({"epoch": np.array([], dtype=int)})
        cols = sorted({k for r in self.rows for k in r}, key=lambda k: (k not in ("epoch", "step"), k))
        return Table({c: [r.get(c, np.nan) for r in self.rows] for c in cols},
                     meta={"description": "per-epoch metrics (validation metrics at the end of each epoch)"})

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict.get("rows", []))


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        s = self.ds[i]
        return self.transform(s) if self.transform else s


# -- assembly ------------------------------------------------------------------------------------


@dataclass
class Assembly:
    """Everything built from a config, before any output is written."""

    config: ResolvedConfig
    task: Task
    datasets: dict[str, ImageDataset]
    info: DatasetInfo
    backbone: Backbone
    head: Head
    model: nn.Module


def build(config: ResolvedConfig, cache_dir: Path | None = None) -> Assembly:
    """Instantiate datasets, task, backbone and head from a resolved config (no outputs written)."""
    run = config.run
    cache = Path(run.cache_dir).expanduser() if run.cache_dir else (cache_dir or default_cache_dir())
    ds_cls, ds_cfg = config.component("data")
    datasets = {split: ds_cls(ds_cfg, split=split, seed=run.seed, cache_dir=cache) for split in ("train", "val", "test")}
    for split, ds in datasets.items():
        if len(ds) == 0 and split != "test":
            raise DataError(f"the {split} split of data set '{ds_cls.name}' is empty; give it samples (check the data section)")
    info = datasets["train"].info()
    task_cls, task_cfg = config.component("task")
    task = task_cls(task_cfg, info)
    labels = getattr(datasets["train"], "labels", None)
    if callable(labels) and hasattr(task, "set_class_counts") and info.classes:
        lab = np.asarray(labels())
        task.set_class_counts(np.bincount(lab[lab >= 0], minlength=len(info.classes)))
    bb_cls, bb_cfg = config.component("backbone")
    backbone = bb_cls(bb_cfg, in_chans=len(info.bands), bands=info.bands)
    head_cls, head_cfg = config.component("head")
    head = head_cls(head_cfg, in_features=backbone.num_features, out_features=task.output_dim())
    model = task.build_model(backbone, head)
    return Assembly(config, task, datasets, info, backbone, head, model)


def _loader(ds, transform, cfg, shuffle: bool, drop_last: bool = False) -> DataLoader:
    collate = getattr(type(ds), "collate_fn", None)
    return DataLoader(_Transformed(ds, transform), batch_size=cfg.batch_size, shuffle=shuffle,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      collate_fn=collate, drop_last=drop_last)


def make_trainer(config: ResolvedConfig, rundir: RunDirectory | None, task: Task, callbacks: list[Callback],
                 ckpt_dir: Path | None) -> L.Trainer:
    t = config.run.trainer
    monitor = t.monitor or task.monitor
    mode = task.monitor_mode if monitor == task.monitor else ("min" if "loss" in monitor else "max")
    cbs = list(callbacks)
    if ckpt_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_last=True,
                                   save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
    if t.early_stopping.enabled:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=t.early_stopping.patience,
                                 min_delta=t.early_stopping.min_delta))
    if t.progress_bar and sys.stderr.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar())
    logger: Any = False
    if rundir is not None and t.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(rundir.path), name="logs", version="")
    elif rundir is not None and t.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=str(rundir.path), name="logs", version="")
    kwargs: dict[str, Any] = dict(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision, callbacks=cbs, logger=logger,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar,
        deterministic=t.deterministic, default_root_dir=str(rundir.path) if rundir else None,
        enable_checkpointing=ckpt_dir is not None, num_sanity_val_steps=0,
    )
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's own messages about bad trainer settings
        raise ConfigError(f"bad trainer settings: {str(exc).splitlines()[0]}") from None


def _gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, rows)
        rows = [r for part in out for r in part]
    seen, unique = set(), []
    for r in sorted(rows, key=lambda r: r["index"]):  # DistributedSampler pads with repeats
        if r["index"] not in seen:
            seen.add(r["index"])
            unique.append(r)
    return unique


def predictions_table(rows: list[dict[str, Any]], catalog: Table) -> Table:
    """Join per-sample predictions to the data set's catalogue (row order = dataset order)."""
    pred = Table(rows=rows) if rows else Table({"index": np.array([], dtype=int)})
    cat = catalog.copy(copy_data=True)
    cat["index"] = np.arange(len(cat))
    clash = [c for c in pred.colnames if c in cat.colnames and c != "index"]
    if clash:
        cat.rename_columns(clash, [f"cat_{c}" for c in clash])
    out = join(cat, pred, keys="index", join_type="inner")
    out.sort("index")
    out.meta = dict(catalog.meta)
    return out


def _safetensors_meta(meta: dict[str, Any]) -> dict[str, str]:
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def export_weights(asm: Assembly, rundir: RunDirectory) -> None:
    """Write ``model.safetensors`` and ``backbone.safetensors`` (atomically) with provenance metadata."""
    from safetensors.torch import save_file

    from .io import atomic_path

    meta = {"format": "astrotl", "astrotl_version": __version__, "backbone": asm.backbone.name,
            "bands": list(asm.info.bands), "in_chans": asm.backbone.in_chans, "run": str(rundir.path),
            "task": asm.task.name, "classes": list(asm.info.classes or []),
            "pretrained_from": asm.backbone.weights_info.get("source"),
            "data": asm.config.to_dict()["data"], **getattr(asm.backbone, "export_metadata", dict)()}
    model_state = {k: v.detach().cpu().contiguous() for k, v in asm.model.state_dict().items()}
    with atomic_path(rundir.path / "model.safetensors") as tmp:
        save_file(model_state, str(tmp), metadata=_safetensors_meta(meta))
    bb_state = {f"net.{k}": v.detach().cpu().contiguous() for k, v in asm.backbone.net.state_dict().items()} \
        if hasattr(asm.backbone, "net") else {k: v.detach().cpu().contiguous() for k, v in asm.backbone.state_dict().items()}
    with atomic_path(rundir.path / "backbone.safetensors") as tmp:
        save_file(bb_state, str(tmp), metadata=_safetensors_meta(meta))


def _versions() -> dict[str, str]:
    import astropy
    import torchvision

    return {"astrotl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "lightning": L.__version__, "astropy": astropy.__version__,
            "numpy": np.__version__}


# -- the run -------------------------------------------------------------------------------------


def run(config: ResolvedConfig, registries: Registries, *, overwrite: bool = False, resume: bool = False,
        callbacks: list[Callback] | None = None) -> Path:
    """Train, validate and evaluate as configured; return the run directory.

    Raises :class:`~astrotl.errors.AstrotlError` subclasses for anything the user can fix, before
    touching the run directory.
    """
    t0 = time.time()
    r = config.run
    rundir = RunDirectory(Path(r.output_dir) / r.name)
    main = is_main_process()
    if main:
        rundir.check(overwrite=overwrite, resume=resume)
        if resume:
            _check_resume_config(rundir, config)
    L.seed_everything(r.seed, workers=True, verbose=False)
    if r.trainer.num_threads:
        torch.set_num_threads(r.trainer.num_threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asm = build(config)
    for w in caught:  # re-emit (e.g. the random-initialisation warning) now that we have recorded them
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    module = TaskModule(asm.task, asm.model, r.optim, r.trainer.max_epochs)
    history = HistoryCallback()
    if main:
        rundir.prepare(overwrite=overwrite, resume=resume)
        write_text(rundir.path / "config.resolved.yaml", config.to_yaml())
        rundir.write_status(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=_versions(),
                            weights=asm.backbone.weights_info, command=" ".join(sys.argv), resumed=resume,
                            source=str(config.source) if config.source else None)
    trainer = make_trainer(config, rundir, asm.task, [history, *(callbacks or [])], rundir.checkpoints)
    tc = r.trainer
    train_loader = _loader(asm.datasets["train"], asm.task.train_transform(), tc, shuffle=True,
                           drop_last=len(asm.datasets["train"]) > tc.batch_size)
    val_loader = _loader(asm.datasets["val"], asm.task.eval_transform(), tc, shuffle=False)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                    ckpt_path=str(rundir.last_checkpoint) if resume else None)
        if trainer.interrupted:
            raise KeyboardInterrupt
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt else ""
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        val_metrics = trainer.validate(module, dataloaders=val_loader, verbose=False)
        test_loader = _loader(asm.datasets["test"], asm.task.eval_transform(), tc, shuffle=False)
        rows = trainer.predict(module, dataloaders=test_loader, return_predictions=True) if len(asm.datasets["test"]) else []
        rows = _gather([row for batch in (rows or []) for row in batch])
        if not trainer.is_global_zero:
            return rundir.path
        _write_outputs(asm, rundir, trainer, history, rows, val_metrics[0] if val_metrics else {}, t0, registries,
                       best_path=best)
    except KeyboardInterrupt:
        if main:
            rundir.write_status(status="interrupted", ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        raise
    except AstrotlError:
        if main:
            rundir.write_status(status="failed")
        raise
    except Exception as exc:
        if main:
            rundir.write_status(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return rundir.path


def _check_resume_config(rundir: RunDirectory, config: ResolvedConfig) -> None:
    import yaml

    saved_file = rundir.path / "config.resolved.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    now = config.to_dict()
    ignore = {"trainer"}  # the trainer section may change on resume (more epochs, other devices)
    diff = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if diff:
        raise ConfigError(f"cannot resume '{rundir.path}': the configuration differs from the interrupted run's in "
                          f"{', '.join(diff)}; resume with the same task file (only trainer.* may change) or use --overwrite")


def _write_outputs(asm: Assembly, rundir: RunDirectory, trainer: L.Trainer, history: HistoryCallback,
                   rows: list[dict[str, Any]], val_metrics: dict[str, float], t0: float, registries: Registries,
                   best_path: str) -> None:
    task = asm.task
    preds = predictions_table(rows, asm.datasets["test"].catalog())
    metrics, tables = task.evaluate(preds)
    metrics = {**{f"best_{k}": float(v) for k, v in val_metrics.items()}, **{f"test_{k}" if not k.startswith(("n_", "chance")) else k: v for k, v in metrics.items()}}
    metrics["epochs_trained"] = int(trainer.current_epoch)
    metrics["n_train"], metrics["n_val"], metrics["n_test"] = (len(asm.datasets[s]) for s in ("train", "val", "test"))
    metrics["weights_source"] = asm.backbone.weights_info.get("source")
    metrics["wall_time_s"] = round(time.time() - t0, 1)
    hist = history.table()
    write_table(rundir.path / "predictions.ecsv", preds)
    write_table(rundir.path / "history.ecsv", hist)
    for name, table in tables.items():
        write_table(rundir.tables / f"{name}.ecsv", table)
    write_json(rundir.path / "metrics.json", {"metrics": metrics, "weights": asm.backbone.weights_info})
    scalar = [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    write_table(rundir.path / "metrics.ecsv", Table(rows=scalar, names=("metric", "value")) if scalar else Table())
    plots = task.plots(preds, metrics, hist, rundir.plots)
    export_weights(asm, rundir)
    _write_report(asm, rundir, preds, metrics, tables, plots, best_path)
    rundir.write_status(status="finished", ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_time_s=metrics["wall_time_s"],
                        world_size=int(trainer.world_size), strategy=type(trainer.strategy).__name__,
                        accelerator=type(trainer.accelerator).__name__)
    registries.pm.hook.astrotl_run_finished(run_dir=rundir.path, config=asm.config.to_dict(), metrics=metrics)


def _write_report(asm: Assembly, rundir: RunDirectory, preds: Table, metrics: dict[str, Any],
                  tables: dict[str, Table], plots: list[Path], best_path: str) -> None:
    c = asm.config
    w = asm.backbone.weights_info
    lines = [f"# Run `{c.run.name}`", ""]
    if c.run.description:
        lines += [c.run.description.strip(), ""]
    if w.get("warning"):
        lines += [f"> **WARNING: {w['warning']}**", ""]
    src = w.get("source")
    wdesc = {"random": "random initialisation (no pretraining)", "imagenet": f"ImageNet ({w.get('path')}, sha256 {str(w.get('sha256'))[:16]}...)",
             "file": f"file {w.get('path')} (sha256 {str(w.get('sha256'))[:16]}...)"}.get(src, str(src))
    lines += [
        "## Setup", "",
        f"- task: `{asm.task.name}`, data: `{c.component('data')[0].name}` (bands {', '.join(asm.info.bands)})",
        f"- backbone: `{asm.backbone.name}`, weights requested `{w.get('requested')}` -> {wdesc}",
        f"- head: `{asm.head.name}`; optimiser {c.run.optim.optimizer}, lr {c.run.optim.lr:g}, batch {c.run.trainer.batch_size}",
        f"- samples: train {metrics['n_train']}, validation {metrics['n_val']}, test {metrics['n_test']}; "
        f"epochs trained {metrics['epochs_trained']}; wall time {metrics['wall_time_s']:.0f} s",
        f"- best checkpoint: `{os.path.relpath(Path(best_path).resolve(), rundir.path.resolve()) if best_path else 'n/a'}` "
        f"(validation loss {metrics.get('best_val_loss', float('nan')):.4f})",
        "", "## Results", "", asm.task.report(preds, {k.removeprefix('test_'): v for k, v in metrics.items()}, tables),
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    lines += ["## Files", "",
              "- `predictions.ecsv`: per test sample, catalogue columns, true and predicted class, probabilities",
              "- `metrics.json` / `metrics.ecsv`: all metrics; `tables/`: confusion matrix, per-class scores",
              "- `history.ecsv`: per-epoch metrics; `config.resolved.yaml`: the exact configuration to repeat this run",
              "- `backbone.safetensors`: the fine-tuned backbone, reusable as `backbone: {weights: <path>}`", ""]
    write_text(rundir.path / "report.md", "\n".join(lines))
