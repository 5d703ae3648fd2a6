"""The training engine: config -> components -> Lightning fit / validate / predict -> run directory.

Everything that can fail because of the user's input (names, keys, files, weights, an occupied
run directory) is checked before the run directory is touched, so bad input never leaves a
half-written run.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from astropy.table import Table, join
from lightning.fabric.utilities.exceptions import MisconfigurationException
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
from .signals import RunInterrupted

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


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, batch ...): the same parts give the same seed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def flatten_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar entries of a (possibly nested) metric dict as floats, ``{key}_{sub}`` for nested keys.

    Non-scalar tensors (per-class vectors, class lists) are skipped; they belong in tables.
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, prefix=f"{name}_"))
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TaskModule(L.LightningModule):
    """Lightning module delegating loss, validation, metrics and prediction to a :class:`Task`."""

    def __init__(self, task: Task, model: nn.Module, optim_cfg, max_epochs: int, seed: int = 0):
        super().__init__()
        self.task = task
        self.model = model
        self.optim_cfg = optim_cfg
        self.max_epochs = max_epochs
        self.seed = seed
        self.val_metrics = task.make_metrics()

    def forward(self, x):
        return self.model(x)

    def _batch_size(self, batch) -> int:
        return int(batch["image"].shape[0])

    def on_fit_start(self):
        from .allocator import keep_large_allocations

        # each step frees and re-allocates the same activation buffers: keep them in the process instead of
        # faulting in fresh pages every step (engine fit loop 0.92 -> 0.97 of the raw train step; benchmarks/README.md)
        keep_large_allocations()

    def on_train_epoch_start(self):
        self.task.set_progress(int(self.current_epoch), int(self.trainer.max_epochs))

    def on_train_batch_start(self, batch, batch_idx):
        # every random draw of a training step (dropout, augmentation) is a function of (seed, epoch, batch):
        # a run resumed from a checkpoint repeats the uninterrupted run exactly, whatever else drew
        # random numbers in between (Lightning's restart path creates the data iterator at another time)
        seed = _seed_for(self.seed, 1, self.current_epoch, batch_idx)
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)

    def training_step(self, batch, batch_idx):
        gen = torch.Generator().manual_seed(_seed_for(self.seed, 2, self.current_epoch, batch_idx))
        batch = self.task.batch_augment(batch, generator=gen)
        loss, _ = self.task.training_loss(self.model, batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._batch_size(batch), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, outputs = self.task.validation_step(self.model, batch)
        if loss is not None:
            self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=self._batch_size(batch), sync_dist=True)
        self.task.update_metrics(self.val_metrics, outputs, batch)

    def on_validation_epoch_end(self):
        values = flatten_metrics(self.val_metrics.compute()) if len(self.val_metrics) else {}
        self.val_metrics.reset()
        if values:
            self.log_dict({f"val_{k}": v for k, v in values.items()}, on_epoch=True, sync_dist=False,
                          prog_bar=False)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"rows": self.task.predict_batch(self.model, batch), "truth": self.task.truth_rows(batch),
                "indices": [int(i) for i in batch["index"]]}

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
        # the schedule is a function of the optimiser step (epoch = step // steps per epoch), stepped per
        # batch: a run resumed from any checkpoint continues with exactly the learning rates of the
        # uninterrupted run (an epoch-interval scheduler is stepped twice when Lightning resumes from a
        # checkpoint written at the end of an epoch)
        _ = self.trainer.estimated_stepping_batches  # makes Lightning count the training batches
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(epoch_lr_factor, c, self.max_epochs, per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def epoch_lr_factor(c, max_epochs: int, steps_per_epoch: int, step: int) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warm-up from 0.1, then cosine, step or constant."""
    e = step // steps_per_epoch
    w = c.warmup_epochs
    if e < w:
        return 0.1 + 0.9 * e / w
    k = e - w
    if c.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(k, max(1, max_epochs - w)) / max(1, max_epochs - w)))
    if c.scheduler == "step":
        return c.gamma ** (k // c.step_size)
    return 1.0


class HistoryCallback(Callback):
    """Collects per-epoch metrics; its state travels in checkpoints so --resume keeps the curves."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module):
        # after the module logged its epoch metrics, before the checkpoint callbacks (which Lightning runs last)
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

    def __getitems__(self, indices):
        # a data set that makes a whole batch at once (vectorised cutting) keeps doing so through the transform
        getitems = getattr(self.ds, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [self.ds[i] for i in indices]
        return [self.transform(s) for s in samples] if self.transform else samples


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


def cache_dir_for(config: ResolvedConfig) -> Path:
    """The one cache-dir rule: ``cache_dir`` of the task file, else :func:`default_cache_dir`."""
    return Path(config.run.cache_dir).expanduser() if config.run.cache_dir else default_cache_dir()


class TrainSubset(torch.utils.data.Dataset):
    """The rows ``indices`` of a data set, keeping its ``collate_fn``, ``catalog()``, ``labels()`` and ``groups()``."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.collate_fn = getattr(type(dataset), "collate_fn", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[int(self.indices[i])])
        sample["index"] = i
        return sample

    def info(self) -> DatasetInfo:
        return self.dataset.info()

    def catalog(self) -> Table:
        return self.dataset.catalog()[self.indices]

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.labels())[self.indices]

    def __getattr__(self, name: str):
        # per-sample arrays of the wrapped data set (groups(), targets(), votes(), ...) restricted to the subset
        if name.startswith("_") or name in ("dataset", "indices"):
            raise AttributeError(name)
        attr = getattr(self.dataset, name)
        if not callable(attr) or name in ("info", "catalog"):
            return attr

        def subset(*args, **kwargs):
            value = attr(*args, **kwargs)
            if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == len(self.dataset):
                return value[self.indices]
            return value

        return subset


def subset_indices(dataset: ImageDataset, size: int, *, unit: str = "auto", seed: int = 0,
                   stratify: bool = True) -> np.ndarray:
    """Seeded, stratified choice of ``size`` samples (or whole groups) of ``dataset``, sorted.

    Groups (``dataset.groups()``) are drawn whole, so that all stamps of one object stay together;
    stratification uses ``dataset.labels()`` (a group's most common label) when the data set has it.
    """
    n = len(dataset)
    has_groups = callable(getattr(dataset, "groups", None))
    if unit == "groups" and not has_groups:
        raise ConfigError(f"train_subset.unit: groups, but data set '{getattr(dataset, 'name', '?')}' has no groups "
                          f"(set data.group_col, or use unit: samples)")
    use_groups = unit == "groups" or (unit == "auto" and has_groups)
    labels = np.asarray(dataset.labels()) if callable(getattr(dataset, "labels", None)) else np.full(n, -1)
    if use_groups:
        groups = np.asarray(dataset.groups()).astype(str)
        uniq, inverse = np.unique(groups, return_inverse=True)
        glab = np.array([np.bincount(labels[inverse == g][labels[inverse == g] >= 0]).argmax()
                         if (labels[inverse == g] >= 0).any() else -1 for g in range(len(uniq))])
        units, unit_labels, what = np.arange(len(uniq)), glab, "groups"
    else:
        units, unit_labels, what = np.arange(n), labels, "samples"
    if size > len(units):
        raise ConfigError(f"train_subset.size={size} but the training split has only {len(units)} {what}; "
                          f"lower train_subset.size")
    rng = np.random.default_rng(seed)
    if stratify and (unit_labels >= 0).any():
        classes, counts = np.unique(unit_labels, return_counts=True)
        quota = size * counts / counts.sum()
        take = np.floor(quota).astype(int)
        order = np.argsort(-(quota - take), kind="stable")
        take[order[: size - take.sum()]] += 1
        chosen = np.concatenate([rng.permutation(units[unit_labels == c])[:k] for c, k in zip(classes, take)])
    else:
        chosen = rng.permutation(units)[:size]
    if use_groups:
        chosen = np.flatnonzero(np.isin(inverse, chosen))
    return np.sort(chosen)


def build(config: ResolvedConfig, cache_dir: Path | None = None) -> Assembly:
    """Instantiate datasets, task, backbone and head from a resolved config (no outputs written)."""
    run = config.run
    cache = Path(run.cache_dir).expanduser() if run.cache_dir else (cache_dir or default_cache_dir())
    ds_cls, ds_cfg = config.component("data")
    datasets = {split: ds_cls(ds_cfg, split=split, seed=run.seed, cache_dir=cache) for split in ("train", "val", "test")}
    for split, ds in datasets.items():
        if len(ds) == 0 and split != "test":
            raise DataError(f"the {split} split of data set '{ds_cls.name}' is empty; give it samples (check the data section)")
    sub = run.train_subset
    if sub.size is not None:
        idx = subset_indices(datasets["train"], sub.size, unit=sub.unit, seed=sub.seed, stratify=sub.stratify)
        datasets["train"] = TrainSubset(datasets["train"], idx)
    info = datasets["train"].info()
    task_cls, task_cfg = config.component("task")
    task = task_cls(task_cfg, info)
    for split, ds in datasets.items():
        task.check_data(ds, split)
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


class EpochSampler(torch.utils.data.Sampler):
    """A random order of ``n`` indices that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch, so a resumed run draws the same order as
    the uninterrupted one (a plain ``RandomSampler`` continues from wherever its generator was).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(_seed_for(self.seed, 3, self.epoch))
        return iter(torch.randperm(self.n, generator=gen).tolist())


def make_loader(ds, transform, cfg, *, task: Task | None = None, shuffle: bool = False, drop_last: bool = False,
                seed: int = 0, batch_size: int | None = None) -> DataLoader:
    """A DataLoader over ``ds`` with the task's (else the data set's) collation."""
    collate = (getattr(type(task), "collate_fn", None) if task is not None else None) \
        or getattr(type(ds), "collate_fn", None) or vars(ds).get("collate_fn")
    sampler = EpochSampler(len(ds), seed) if shuffle else None
    return DataLoader(_Transformed(ds, transform), batch_size=batch_size or cfg.batch_size, sampler=sampler,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      collate_fn=collate, drop_last=drop_last)


def epochs_for_min_steps(t, n_train: int, world_size: int = 1) -> int:
    """``t.max_epochs``, raised to the epochs that make at least ``t.min_steps`` optimiser steps on ``n_train``
    training samples (batches of ``t.batch_size`` per process, the last partial batch dropped when there is more
    than one, ``accumulate_grad_batches``, an integer or fractional ``limit_train_batches``).

    >>> from astrotl.config import TrainerConfig
    >>> epochs_for_min_steps(TrainerConfig(max_epochs=6, batch_size=16, min_steps=100), 60)  # 3 steps per epoch
    34
    """
    if t.min_steps <= 0 or n_train <= 0:
        return t.max_epochs
    per_process = math.ceil(n_train / max(1, world_size))
    batches = per_process // t.batch_size if per_process > t.batch_size else 1
    limit = t.limit_train_batches
    if isinstance(limit, float) and limit <= 1.0:
        batches = max(1, int(batches * limit))
    elif limit is not None:
        batches = min(batches, int(limit))
    steps = max(1, math.ceil(batches / t.accumulate_grad_batches))
    return max(t.max_epochs, math.ceil(t.min_steps / steps))


def make_trainer(config: ResolvedConfig, rundir: RunDirectory | None, task: Task, callbacks: list[Callback],
                 ckpt_dir: Path | None) -> L.Trainer:
    t = config.run.trainer
    monitor = t.monitor or task.monitor
    mode = task.monitor_mode if monitor == task.monitor else ("min" if "loss" in monitor else "max")
    cbs = list(callbacks)
    if ckpt_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                   save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
        # last.ckpt at the end of *every* epoch, for --resume: Lightning's save_last writes it only at epochs that
        # also improved the monitored metric, so a run stopped after its best epoch resumed from that epoch
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False))
    from .averaging import averaging_callbacks

    cbs += averaging_callbacks(t)  # trainer.ema / trainer.swa
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
        enable_checkpointing=ckpt_dir is not None, num_sanity_val_steps=0, enable_model_summary=False,
    )
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    from .checkpointing import AtomicCheckpointIO

    kwargs["plugins"] = [AtomicCheckpointIO()]  # checkpoints appear whole or not at all; a damaged one is one line
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as exc:  # Lightning's messages on bad settings
        raise ConfigError(f"bad trainer settings: {str(exc).splitlines()[0]}") from None


def gather_predictions(outputs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prediction and truth rows of every rank, each sample once, in sample order.

    ``outputs`` are :meth:`TaskModule.predict_step` results. A sample may have zero, one or many
    rows. Under DDP the sampler pads the last batch with repeated samples: a sample's rows are
    kept from the first batch that held it.
    """
    parts: list[Any] = [outputs]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, outputs)
    seen: set[int] = set()
    rows: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    for part in parts:
        for out in part or []:
            fresh = {i for i in out["indices"] if i not in seen}
            rows += [r for r in out["rows"] if int(r["index"]) in fresh]
            truth += [r for r in out["truth"] if int(r["index"]) in fresh]
            seen |= fresh
    order = {"rows": rows, "truth": truth}
    for key in order:
        order[key] = [r for _, r in sorted(enumerate(order[key]), key=lambda t: (int(t[1]["index"]), t[0]))]
    return order["rows"], order["truth"]


def rows_table(rows: list[dict[str, Any]]) -> Table:
    """A table of row dicts (an empty one with an ``index`` column when there are none)."""
    if not rows:
        return Table({"index": np.array([], dtype=np.int64)})
    names = list(dict.fromkeys(k for r in rows for k in r))
    if all(set(r) == set(names) for r in rows):
        return Table(rows=[[r[k] for k in names] for r in rows], names=names)
    from astropy.table import MaskedColumn

    cols = {}
    for k in names:
        values = [r.get(k) for r in rows]
        mask = [v is None for v in values]
        fill = next((v for v in values if v is not None), 0)
        cols[k] = MaskedColumn([fill if v is None else v for v in values], mask=mask)
    return Table(cols)


def predictions_table(rows: list[dict[str, Any]] | Table, catalog: Table) -> Table:
    """The catalogue left-joined with the prediction rows (row dicts, or a table of them) on the sample index.

    Every sample keeps at least one row: a sample the task predicted nothing for (an image without
    detections) has masked prediction columns; a sample with many rows (detections) repeats its
    catalogue columns. Catalogue columns whose names clash with prediction columns get ``cat_``.
    """
    pred = rows if isinstance(rows, Table) else rows_table(rows)
    one_per_sample = len(pred) == len(catalog) and "index" in pred.colnames \
        and np.array_equal(np.asarray(pred["index"]), np.arange(len(catalog)))
    # one row per sample in sample order (classification, regression): the columns side by side, without the
    # join's copies and sort (at catalogue scale they set predict's peak memory)
    cat = catalog.copy(copy_data=True)
    cat["index"] = np.arange(len(cat))
    clash = [c for c in pred.colnames if c in cat.colnames and c != "index"]
    if clash:
        cat.rename_columns(clash, [f"cat_{c}" for c in clash])
    if one_per_sample:
        for name in pred.colnames:
            if name != "index":
                cat[name] = pred[name]
        out = cat
    elif len(pred) == 0 and len(pred.colnames) == 1:
        out = cat
    else:
        out = join(cat, pred, keys="index", join_type="left")
        out.sort(["index", *[k for k in ("det_id",) if k in out.colnames]], kind="stable")
    out.meta = dict(catalog.meta)
    return out


def _safetensors_meta(meta: dict[str, Any]) -> dict[str, str]:
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def model_metadata(asm: Assembly, rundir: RunDirectory) -> dict[str, Any]:
    """What a finished run's model needs to be rebuilt and checked against new data (see :mod:`astrotl.loadrun`)."""
    return {"format": "astrotl", "astrotl_version": __version__, "backbone": asm.backbone.name,
            "bands": list(asm.info.bands), "in_chans": asm.backbone.in_chans, "run": str(rundir.path),
            "task": asm.task.name, "task_kind": asm.task.kind, "classes": list(asm.info.classes or []),
            "targets": list(asm.info.targets or []), "image_size": asm.info.image_size,
            "pretrained_from": asm.backbone.weights_info.get("source"),
            "data": asm.config.to_dict()["data"], "input_normalisation": asm.info.extra.get("normalisation"),
            **getattr(asm.backbone, "export_metadata", dict)()}


def export_weights(asm: Assembly, rundir: RunDirectory) -> None:
    """Write ``model.safetensors`` and ``backbone.safetensors`` (atomically) with provenance metadata."""
    from safetensors.torch import save_file

    from .io import atomic_path

    meta = model_metadata(asm, rundir)
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- the run -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`run` returns: the run directory, its test metrics and the one-line summary."""

    path: Path
    metrics: dict[str, Any]
    headline: str


def run(config: ResolvedConfig, registries: Registries, *, overwrite: bool = False, resume: bool = False,
        callbacks: list[Callback] | None = None) -> RunResult:
    """Train, validate and evaluate as configured (every stage of a multi-stage run); return the result.

    Raises :class:`~astrotl.errors.AstrotlError` subclasses for anything the user can fix, before
    touching the run directory.
    """
    if config.stages:
        from .stages import run_stages

        return run_stages(config, registries, overwrite=overwrite, resume=resume, callbacks=callbacks)
    if config.run.cv is not None:
        from .crossval import run_cv

        return run_cv(config, registries, overwrite=overwrite, resume=resume, callbacks=callbacks)
    return run_single(config, registries, overwrite=overwrite, resume=resume, callbacks=callbacks)


def _check_trainer_resources(config: ResolvedConfig) -> None:
    t = config.run.trainer
    acc = str(t.accelerator).lower()
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: {t.accelerator}, but this machine has no CUDA GPU that torch can use; "
                          f"set trainer.accelerator: cpu (or auto)")
    on_cpu = acc == "cpu" or (acc == "auto" and not torch.cuda.is_available())
    if on_cpu and isinstance(t.devices, int) and t.devices > (os.cpu_count() or 1):
        raise ConfigError(f"trainer.devices: {t.devices} CPU processes, but this machine has {os.cpu_count()} cores; "
                          f"use at most {os.cpu_count()} (or trainer.devices: 1)")


def run_single(config: ResolvedConfig, registries: Registries, *, overwrite: bool = False, resume: bool = False,
               callbacks: list[Callback] | None = None, rundir: RunDirectory | None = None,
               prepare: Any = None) -> RunResult:
    """One training run (or one stage) into ``<output_dir>/<name>`` (or ``rundir``)."""
    from .data import adopt_weights_normalisation

    t0 = time.time()
    config = adopt_weights_normalisation(config)  # pixel_norm: auto -> what the backbone's weights were trained with
    r = config.run
    rundir = rundir or RunDirectory(Path(r.output_dir) / r.name)
    main = is_main_process()
    if main:
        rundir.check(overwrite=overwrite, resume=resume)
        if resume:
            _check_resume_config(rundir, config)
    _check_trainer_resources(config)
    L.seed_everything(r.seed, workers=True, verbose=False)
    if r.trainer.num_threads:
        torch.set_num_threads(r.trainer.num_threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asm = build(config)
        if prepare is not None:
            prepare(asm)
    for w in caught:  # re-emit (e.g. the random-initialisation warning) now that we have recorded them
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if r.trainer.cache_embeddings is not False:  # a frozen backbone: the head trains on cached embeddings
        from .embeddings import maybe_cache_embeddings

        asm = maybe_cache_embeddings(asm, cache_dir_for(config))
    module = TaskModule(asm.task, asm.model, r.optim, r.trainer.max_epochs, seed=r.seed)
    history = HistoryCallback()
    # the trainer is made before the run directory is touched: bad trainer settings leave nothing behind
    trainer = make_trainer(config, rundir, asm.task, [history, *(callbacks or [])], rundir.checkpoints)
    epochs = epochs_for_min_steps(r.trainer, len(asm.datasets["train"]), trainer.world_size)
    if epochs != r.trainer.max_epochs:  # trainer.min_steps on a small training split
        log.info("trainer.min_steps %d: %d epochs instead of max_epochs %d (%d training samples)", r.trainer.min_steps,
                 epochs, r.trainer.max_epochs, len(asm.datasets["train"]))
        trainer.fit_loop.max_epochs = module.max_epochs = epochs
    if main:
        rundir.prepare(overwrite=overwrite, resume=resume)
        write_text(rundir.path / "config.resolved.yaml", config.to_yaml())
        rundir.write_status(status="running", started=_now(), versions=_versions(),
                            plugins=registries.plugin_versions(), weights=asm.backbone.weights_info,
                            command=" ".join(sys.argv), resumed=resume,
                            source=str(config.source) if config.source else None)
    tc = r.trainer
    train_loader = make_loader(asm.datasets["train"], asm.task.train_transform(), tc, task=asm.task, shuffle=True,
                               drop_last=len(asm.datasets["train"]) > tc.batch_size, seed=r.seed)
    val_loader = make_loader(asm.datasets["val"], asm.task.eval_transform(), tc, task=asm.task)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                    ckpt_path=str(rundir.last_checkpoint) if resume else None)
        if trainer.interrupted:
            raise KeyboardInterrupt
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt else ""
        if best and Path(best).is_file():
            from .checkpointing import load_model_state

            module.load_state_dict(load_model_state(best))
        val_metrics = trainer.validate(module, dataloaders=val_loader, verbose=False)
        if callable(getattr(asm.task, "calibrate", None)):  # e.g. temperature scaling on the validation split
            asm.task.calibrate(module.model, val_loader, module.device)
        outputs: list[dict[str, Any]] = []
        if len(asm.datasets["test"]):
            test_loader = make_loader(asm.datasets["test"], asm.task.eval_transform(), tc, task=asm.task)
            outputs = trainer.predict(module, dataloaders=test_loader, return_predictions=True) or []
        rows, truth = gather_predictions(outputs)
        if not trainer.is_global_zero:
            return RunResult(rundir.path, {}, "")
        metrics = _write_outputs(asm, rundir, trainer, history, rows, truth, val_metrics[0] if val_metrics else {},
                                 t0, registries, best_path=best)
    except RunInterrupted as exc:  # SIGINT / SIGTERM (astrotl.signals): the CLI prints the line and exits 130 / 143
        if main:
            rundir.write_status(status="interrupted", signal=exc.signame, ended=_now())
        raise
    except KeyboardInterrupt:
        if main:
            rundir.write_status(status="interrupted", ended=_now())
        raise
    except AstrotlError as exc:
        if main:
            rundir.write_status(status="failed", ended=_now(), error=str(exc))
        raise
    except Exception as exc:
        if main:
            rundir.write_status(status="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if main:
            rundir.close()
    plain = {k.removeprefix("test_"): v for k, v in metrics.items()}
    return RunResult(rundir.path, metrics, asm.task.headline(plain))


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
                   rows: list[dict[str, Any]], truth_rows: list[dict[str, Any]], val_metrics: dict[str, float],
                   t0: float, registries: Registries, best_path: str) -> dict[str, Any]:
    task = asm.task
    preds = predictions_table(rows, asm.datasets["test"].catalog())
    truth = rows_table(truth_rows)
    test, tables = task.evaluate(preds, truth)
    metrics = {**{f"best_{k}": float(v) for k, v in val_metrics.items()},
               **{f"test_{k}" if not k.startswith(("n_", "chance")) else k: v for k, v in test.items()}}
    metrics["epochs_trained"] = int(trainer.current_epoch)
    metrics["n_train"], metrics["n_val"], metrics["n_test"] = (len(asm.datasets[s]) for s in ("train", "val", "test"))
    metrics["weights_source"] = asm.backbone.weights_info.get("source")
    metrics["wall_time_s"] = round(time.time() - t0, 1)
    hist = history.table()
    write_table(rundir.path / "predictions.ecsv", preds)
    if len(truth):
        write_table(rundir.path / "truth.ecsv", truth)
    write_table(rundir.path / "history.ecsv", hist)
    for name, table in tables.items():
        write_table(rundir.tables / f"{name}.ecsv", table)
    plain = {k.removeprefix("test_"): v for k, v in metrics.items()}
    headline = task.headline(plain)
    write_json(rundir.path / "metrics.json", {"metrics": metrics, "headline": headline,
                                              "headline_metric": task.headline_metric,
                                              "higher_is_better": task.higher_is_better,
                                              "weights": asm.backbone.weights_info})
    scalar = [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    write_table(rundir.path / "metrics.ecsv", Table(rows=scalar, names=("metric", "value")) if scalar else Table())
    plots = task.plots(preds, truth, plain, hist, rundir.plots)
    if len(hist):
        from .plots import training_curves_plot

        plots.append(training_curves_plot(hist, rundir.plots / "training_curves.png"))
    export_weights(asm, rundir)
    _write_report(asm, rundir, preds, plain, tables, plots, best_path, headline)
    rundir.write_status(status="finished", ended=_now(), wall_time_s=metrics["wall_time_s"], headline=headline,
                        world_size=int(trainer.world_size), strategy=type(trainer.strategy).__name__,
                        accelerator=type(trainer.accelerator).__name__)
    registries.pm.hook.astrotl_run_finished(run_dir=rundir.path, config=asm.config.to_dict(), metrics=metrics)
    return metrics


def weights_description(w: dict[str, Any]) -> str:
    """One phrase saying where a backbone's weights came from."""
    src = w.get("source")
    return {"random": "random initialisation (no pretraining)",
            "imagenet": f"ImageNet ({w.get('path')}, sha256 {str(w.get('sha256'))[:16]}...)",
            "file": f"file {w.get('path')} (sha256 {str(w.get('sha256'))[:16]}...)"}.get(src, str(src))


GENERIC_FILES = {
    "metrics.json": "all metrics (also metrics.ecsv: name, value); `tables/`: the task's tables",
    "history.ecsv": "per-epoch metrics; `config.resolved.yaml`: the exact configuration to repeat this run",
    "backbone.safetensors": "the fine-tuned backbone, reusable as `backbone: {weights: run:<this run>}`",
    "model.safetensors": "the whole trained model (`astrotl predict <this run>` applies it to new data)",
}


def _write_report(asm: Assembly, rundir: RunDirectory, preds: Table, metrics: dict[str, Any],
                  tables: dict[str, Table], plots: list[Path], best_path: str, headline: str) -> None:
    c = asm.config
    w = asm.backbone.weights_info
    lines = [f"# Run `{c.run.name}`", ""]
    if c.run.description:
        lines += [c.run.description.strip(), ""]
    if w.get("warning"):
        lines += [f"> **WARNING: {w['warning']}**", ""]
    if headline:
        lines += [f"**{headline}**", ""]
    monitor = c.run.trainer.monitor or asm.task.monitor
    best_value = metrics.get(f"best_{monitor}")
    sub = c.run.train_subset
    subset = f" (a seeded subset of {sub.size} {sub.unit if sub.unit != 'auto' else 'samples/groups'})" if sub.size else ""
    lines += [
        "## Setup", "",
        f"- task: `{asm.task.name}` ({asm.task.kind}), data: `{c.component('data')[0].name}` (bands {', '.join(asm.info.bands)})",
        f"- backbone: `{asm.backbone.name}`, weights requested `{w.get('requested')}` -> {weights_description(w)}",
        f"- head: `{asm.head.name}`; optimiser {c.run.optim.optimizer}, lr {c.run.optim.lr:g}, batch {c.run.trainer.batch_size}",
        f"- samples: train {metrics['n_train']}{subset}, validation {metrics['n_val']}, test {metrics['n_test']}; "
        f"epochs trained {metrics['epochs_trained']}; wall time {metrics['wall_time_s']:.0f} s",
        f"- best checkpoint: `{os.path.relpath(Path(best_path).resolve(), rundir.path.resolve()) if best_path else 'n/a'}` "
        f"({monitor} {best_value:.4f})" if isinstance(best_value, float) else
        f"- best checkpoint: `{os.path.relpath(Path(best_path).resolve(), rundir.path.resolve()) if best_path else 'n/a'}`",
        "", "## Results", "", asm.task.report(preds, metrics, tables),
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    files = {**asm.task.output_files(), **GENERIC_FILES}
    lines += ["## Files", ""] + [f"- `{name}`: {text}" for name, text in files.items()] + [""]
    write_text(rundir.path / "report.md", "\n".join(lines))
