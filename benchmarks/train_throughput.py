"""Training throughput of the astrotl engine versus a raw PyTorch train step.

Measures, in one process and one run:

1. **engine** -- images per second through astrotl's real fit loop: the task file is loaded with
   :func:`astrotl.config.load_config`, the components are built with :func:`astrotl.engine.build`,
   and :func:`astrotl.engine.make_trainer` / :class:`astrotl.engine.TaskModule` / the engine's
   DataLoaders run ``trainer.fit`` exactly as ``astrotl run`` does (minus the run directory,
   checkpoints and logger);
2. **raw** -- images per second of a plain PyTorch loop on the same model architecture (freshly
   built from the same config), the same batch shape and the same optimiser, on one batch
   preloaded on the device: ``zero_grad; loss = task.training_loss(model, batch); backward; step``;

and prints both and their ratio (target: ratio >= 0.9).

What is timed
-------------
engine
    A Lightning callback stamps ``time.perf_counter()`` at the end of every training batch
    (``on_train_batch_end``) and around every validation run (``on_validation_start`` /
    ``on_validation_end``). The timed window runs from the end of warm-up step ``--warmup`` to
    the end of step ``--warmup + --steps``; it therefore contains, for each timed step, the
    DataLoader fetch (per-sample ``__getitem__``, the task's transform, collation), the transfer
    to the device, ``batch_augment`` (e.g. D4 rotations/flips), forward, loss, backward,
    optimiser step, ``self.log`` and all Lightning hooks, plus the epoch boundaries that fall in
    the window (new DataLoader iterator and shuffle, epoch-end hooks, LR-scheduler step).
    Validation runs that fall in the window are subtracted and reported separately
    (``engine_incl_val``: the same window with validation left in, in *training* images per
    second). Excluded: data generation/caching, model/trainer construction, the warm-up steps.
raw
    ``--warmup`` untimed steps, then ``--steps`` timed steps (synchronised on GPUs).

Usage::

    python benchmarks/train_throughput.py                      # tasks/phangs_clusters.yaml, benchmark-sized
    python benchmarks/train_throughput.py --steps 96 --warmup 32 --json /tmp/throughput.json
    python benchmarks/train_throughput.py --set trainer.batch_size=128 --set data.size=64
    python benchmarks/train_throughput.py --task tasks/smoke/phangs_tiny.yaml --steps 4 --warmup 2
    python benchmarks/train_throughput.py --data-from jpeg --repeat 5   # median of 5 back-to-back pairs

Exit status is 0 whatever the ratio (it is a measurement, not a test); ``--fail-below R`` makes
it exit 1 when the ratio is below ``R``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASK = ROOT / "tasks" / "phangs_clusters.yaml"

#: Overrides that turn a task file into a benchmark-sized run (applied before the user's --set).
BENCHMARK_OVERRIDES = [
    "data.n_train=2048",
    "data.n_val=256",
    "data.n_test=0",
    "backbone.weights=none",  # throughput does not depend on the initial weights; avoids a file lookup
    "trainer.early_stopping.enabled=false",
    "trainer.progress_bar=false",
    "trainer.logger=none",
]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return float("nan")


def make_timer_callback(warmup: int, steps: int):
    """A Lightning callback recording batch-end and validation timestamps."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self):
            self.batch_end: list[float] = []  # perf_counter at the end of global step i (0-based)
            self.batch_end_cpu: list[float] = []  # process_time (CPU seconds of this process, all threads)
            self.batch_sizes: list[int] = []
            self.val_spans: list[tuple[float, float]] = []
            self.val_spans_cpu: list[tuple[float, float]] = []
            self._val_start: float | None = None
            self._val_start_cpu = 0.0
            self.device = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(pl_module.device)
            self.batch_end.append(time.perf_counter())
            self.batch_end_cpu.append(time.process_time())
            self.batch_sizes.append(int(batch["image"].shape[0]))
            self.device = pl_module.device

        def on_validation_start(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            _sync(pl_module.device)
            self._val_start = time.perf_counter()
            self._val_start_cpu = time.process_time()

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or self._val_start is None:
                return
            _sync(pl_module.device)
            self.val_spans.append((self._val_start, time.perf_counter()))
            self.val_spans_cpu.append((self._val_start_cpu, time.process_time()))
            self._val_start = None

        def window(self) -> dict[str, Any]:
            if len(self.batch_end) < warmup + steps or warmup < 1:
                raise RuntimeError(f"the fit ran {len(self.batch_end)} steps; need warmup ({warmup}) + steps ({steps})")
            t0, t1 = self.batch_end[warmup - 1], self.batch_end[warmup + steps - 1]
            images = sum(self.batch_sizes[warmup:warmup + steps])
            val = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in self.val_spans)
            c0, c1 = self.batch_end_cpu[warmup - 1], self.batch_end_cpu[warmup + steps - 1]
            val_cpu = sum(max(0.0, min(b, c1) - max(a, c0)) for a, b in self.val_spans_cpu)
            return {"t0": t0, "t1": t1, "images": images, "val_s": val, "cpu_s": c1 - c0 - val_cpu}

    return StepTimer()


def measure_engine(config, warmup: int, steps: int) -> dict[str, Any]:
    """Run the engine's fit loop and time the steady-state window."""
    import lightning as L

    from astrotl import engine

    r = config.run
    L.seed_everything(r.seed, workers=True, verbose=False)
    t_build = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asm = engine.build(config)
    build_s = time.perf_counter() - t_build
    module = engine.TaskModule(asm.task, asm.model, r.optim, r.trainer.max_epochs)
    timer = make_timer_callback(warmup, steps)
    trainer = engine.make_trainer(config, None, asm.task, [timer], None)
    tc = r.trainer
    train_ds = asm.datasets["train"]
    train_loader = engine.make_loader(train_ds, asm.task.train_transform(), tc, task=asm.task, shuffle=True,
                                      drop_last=len(train_ds) > tc.batch_size, seed=r.seed)
    val_loader = engine.make_loader(asm.datasets["val"], asm.task.eval_transform(), tc, task=asm.task)
    t_fit = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    fit_s = time.perf_counter() - t_fit
    w = timer.window()
    span = w["t1"] - w["t0"]
    return {
        "images": w["images"], "window_s": span, "validation_in_window_s": w["val_s"],
        "images_per_s": w["images"] / (span - w["val_s"]),
        "images_per_s_incl_val": w["images"] / span,
        "cpu_s": w["cpu_s"], "images_per_cpu_s": w["images"] / w["cpu_s"],
        "steps_run": len(timer.batch_end), "fit_total_s": fit_s, "build_s": build_s,
        "device": str(timer.device), "assembly": asm, "train_loader": train_loader,
        "steps_per_epoch": len(train_loader),
    }


def measure_raw(config, asm, train_loader, device, warmup: int, steps: int) -> dict[str, Any]:
    """Plain PyTorch: same architecture (fresh), same optimiser, one preloaded batch."""
    import torch

    from astrotl import engine

    r = config.run
    torch.manual_seed(r.seed)
    info, task = asm.info, asm.task
    bb_cls, bb_cfg = config.component("backbone")
    head_cls, head_cfg = config.component("head")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = bb_cls(bb_cfg, in_chans=len(info.bands), bands=info.bands)
    head = head_cls(head_cfg, in_features=backbone.num_features, out_features=task.output_dim())
    model = task.build_model(backbone, head).to(device)
    model.train()
    # the same optimiser; its learning-rate schedule (which needs a Trainer) does not change the step's cost
    optim = r.optim.model_copy(update={"scheduler": "none", "warmup_epochs": 0})
    opt = engine.TaskModule(task, model, optim, r.trainer.max_epochs).configure_optimizers()
    if isinstance(opt, dict):
        opt = opt["optimizer"]
    batch = next(iter(train_loader))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    n = int(batch["image"].shape[0])
    cast = _autocast(device, r.trainer.precision)

    def step():
        opt.zero_grad(set_to_none=True)
        with cast:
            loss, _ = task.training_loss(model, batch)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    span, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n * steps, "window_s": span, "images_per_s": n * steps / span, "batch_size": n,
            "cpu_s": cpu, "images_per_cpu_s": n * steps / cpu}


def disk_task(kind: str, root: Path, n: int, size: int, side: int) -> Path:
    """A copy of tasks/phangs_clusters.yaml whose data are read from disk: ``fits`` (catalog_cutouts over a
    five-band FITS mosaic and a labelled catalogue) or ``jpeg`` (image_folder over RGB JPEG stamps)."""
    import numpy as np
    import yaml
    from astropy.table import Table

    doc = yaml.safe_load(DEFAULT_TASK.read_text())
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 5, n)
    if kind == "fits":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from cutout_throughput import write_mosaic

        bands = ["F275W", "F336W", "F438W", "F555W", "F814W"]
        images = write_mosaic(root, side, bands)
        margin = size
        Table({"id": np.arange(n), "x": rng.uniform(margin, side - margin, n),
               "y": rng.uniform(margin, 0.85 * side, n), "cls": labels}).write(root / "catalog.ecsv", overwrite=True)
        doc["data"] = {"name": "catalog_cutouts", "images": images, "catalog": str(root / "catalog.ecsv"),
                       "size": size, "label_col": "cls", "split_fractions": [0.8, 0.1, 0.1]}
    else:
        from PIL import Image

        (root / "images").mkdir(parents=True, exist_ok=True)
        with open(root / "labels.csv", "w") as fh:
            fh.write("id,label\n")
            for i in range(n):
                pix = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pix, mode="RGB").save(root / "images" / f"s{i:05d}.jpg", quality=90)
                fh.write(f"s{i:05d},{labels[i]}\n")
        doc["data"] = {"name": "image_folder", "root": str(root), "labels": "labels.csv", "id_col": "id",
                       "file_pattern": "images/{id}.jpg", "label_col": "label", "color": "rgb",
                       "split_fractions": [0.8, 0.1, 0.1]}
    path = root / f"task_{kind}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=str(DEFAULT_TASK), help="task file (default: tasks/phangs_clusters.yaml)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override applied after the benchmark defaults (repeatable)")
    p.add_argument("--steps", type=int, default=64, help="timed training steps, in both measurements (default 64)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps before the window (default: one epoch of the engine's loader)")
    p.add_argument("--no-defaults", action="store_true",
                   help="do not apply the benchmark-sized defaults (%s)" % ", ".join(BENCHMARK_OVERRIDES))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="measure engine and raw R times, alternating (engine, raw, engine, raw, ...); the ratio is "
                        "then the median of the R back-to-back pairs' ratios (default 1)")
    p.add_argument("--fail-below", type=float, default=None, metavar="R", help="exit 1 if the ratio is below R")
    p.add_argument("--data-from", choices=["sim", "fits", "jpeg"], default="sim",
                   help="sim: the task's in-memory simulator; fits: catalog_cutouts over a FITS mosaic written for the "
                        "benchmark; jpeg: image_folder over JPEG stamps written for the benchmark")
    p.add_argument("--samples", type=int, default=2560, help="with --data-from fits/jpeg: catalogue rows / images "
                                                             "(80%% train; default 2560)")
    p.add_argument("--stamp", type=int, default=32, help="with --data-from fits/jpeg: stamp side (default 32)")
    p.add_argument("--side", type=int, default=4096, help="with --data-from fits: mosaic side (default 4096)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")

    os.environ.setdefault("ASTROTL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "astrotl_cache"))
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).propagate = False
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")

    import torch

    from astrotl.config import load_config
    from astrotl.errors import AstrotlError
    from astrotl.plugins import load_registries

    if args.threads:
        torch.set_num_threads(args.threads)
    regs = load_registries()
    defaults = [] if args.no_defaults else list(BENCHMARK_OVERRIDES)
    if args.data_from != "sim":
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f"astrotl_train_{args.data_from}_"))
        args.task = str(disk_task(args.data_from, tmp, args.samples, args.stamp, args.side))
        defaults = [d for d in defaults if not d.startswith("data.")]
    overrides = defaults + list(args.overrides)
    try:
        base = load_config(args.task, regs, overrides)
    except AstrotlError as exc:
        print(f"train_throughput: error: {exc}", file=sys.stderr)
        return 2
    tc = base.run.trainer
    n_train = getattr(base.component("data")[1], "n_train", None)
    per_epoch = max(1, n_train // tc.batch_size) if n_train else None
    warmup = args.warmup if args.warmup is not None else (per_epoch or 10)
    if warmup < 1:
        p.error("--warmup must be >= 1 (the first step is always slower)")
    total = warmup + args.steps
    epochs = math.ceil(total / per_epoch) + 1 if per_epoch else max(tc.max_epochs, 1000)
    # run exactly warmup + steps optimiser steps (accumulate_grad_batches must stay 1 for steps == batches)
    config = load_config(args.task, regs, overrides + [f"trainer.max_steps={total}", f"trainer.max_epochs={epochs}"])
    if config.run.trainer.accumulate_grad_batches != 1:
        p.error("trainer.accumulate_grad_batches must be 1 for this benchmark")

    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    load_before = _loadavg()
    pairs = []
    for _ in range(args.repeat):  # back-to-back pairs: a slow spell of the machine hits both sides of one pair
        eng = measure_engine(config, warmup, args.steps)
        device = torch.device(eng["device"])
        raw = measure_raw(config, eng["assembly"], eng["train_loader"], device, min(warmup, 10), args.steps)
        pairs.append((eng, raw, eng["images_per_s"] / raw["images_per_s"]))
    load_after = _loadavg()
    eng, raw, ratio = sorted(pairs, key=lambda t: t[2])[(len(pairs) - 1) // 2]  # the median pair (lower median)
    ratio_val = eng["images_per_s_incl_val"] / raw["images_per_s"]
    ratio_cpu = eng["images_per_cpu_s"] / raw["images_per_cpu_s"]

    c = config.run
    ds_name = config.component("data")[0].name
    print(f"task file      : {args.task}" + (f" (data read from disk: {args.data_from})" if args.data_from != "sim" else ""))
    print(f"config         : task {config.component('task')[0].name}, data {ds_name} "
          f"(n_train {n_train}, size {getattr(config.component('data')[1], 'size', '?')}), "
          f"backbone {config.component('backbone')[0].name}, batch {tc.batch_size}, "
          f"num_workers {tc.num_workers}, precision {tc.precision}")
    print(f"device         : {device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"window         : {args.steps} steps after {warmup} warm-up steps "
          f"({eng['steps_per_epoch']} steps per epoch)")
    print(f"engine fit loop: {eng['images_per_s']:8.1f} images/s  ({eng['images']} images in "
          f"{eng['window_s'] - eng['validation_in_window_s']:.2f} s, validation excluded)")
    print(f"  incl. val    : {eng['images_per_s_incl_val']:8.1f} images/s  ({eng['validation_in_window_s']:.2f} s "
          f"of validation in the window)")
    print(f"raw train step : {raw['images_per_s']:8.1f} images/s  ({raw['images']} images in {raw['window_s']:.2f} s)")
    if len(pairs) > 1:
        print(f"pairs          : ratios {', '.join(f'{r:.3f}' for _, _, r in pairs)} (engine / raw, in the order "
              f"measured); the median pair is shown")
    print(f"ratio          : {ratio:.3f}  (engine / raw; target >= 0.9)  "
          f"[{ratio_val:.3f} with validation counted]")
    print(f"per CPU-second : engine {eng['images_per_cpu_s']:.1f}, raw {raw['images_per_cpu_s']:.1f} images per "
          f"process CPU-second, ratio {ratio_cpu:.3f}")
    print(f"load average   : {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)")
    if device.type == "cpu" and max(load_before, load_after) > 0.5 + (os.cpu_count() or 1):
        print("warning        : the machine was busy with other processes; wall-clock numbers (and the ratio) are "
              "unreliable -- rerun on an idle machine, or compare the per-CPU-second ratio", file=sys.stderr)

    if args.json:
        out = {
            "task": str(args.task), "overrides": overrides, "steps": args.steps, "warmup": warmup,
            "batch_size": tc.batch_size, "num_workers": tc.num_workers, "precision": tc.precision,
            "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "engine": {k: v for k, v in eng.items() if k not in ("assembly", "train_loader")},
            "raw": raw, "ratio": ratio, "ratio_incl_validation": ratio_val, "ratio_cpu_time": ratio_cpu,
            "pair_ratios": [r for _, _, r in pairs],
            "load_average": [load_before, load_after],
            "run_name": c.name,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.data_from != "sim":
        import shutil

        shutil.rmtree(Path(args.task).parent, ignore_errors=True)
    if args.fail_below is not None and ratio < args.fail_below:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
