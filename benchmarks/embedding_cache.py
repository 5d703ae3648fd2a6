"""Frozen-backbone training: epoch time with cached embeddings versus the uncached path, and their metrics.

Runs the same task twice through :func:`astrotl.engine.run` -- ``trainer.cache_embeddings: false`` and
``true`` -- with a frozen backbone (``backbone.n_blocks: 0``), and prints for each the per-epoch time of the
training loop (validation excluded, timed by a Lightning callback; the median over epochs), the one-time
embedding pass of the cached run, and the test metrics. Target: uncached / cached epoch time >= 10.

    python benchmarks/embedding_cache.py                                   # augment none, 1 view
    python benchmarks/embedding_cache.py --augment d4 --views 8            # D4 augmentation, 8 cached views
    python benchmarks/embedding_cache.py --n-train 4096 --size 64 --epochs 5

The task is ``tasks/phangs_clusters.yaml`` (simulated PHANGS cutouts, ResNet-18) with the overrides below;
``--set KEY=VALUE`` adds more. Exit status 0 whatever it measures.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epoch_timer():
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.train: list[float] = []
            self.total: list[float] = []
            self._t0 = self._v0 = 0.0
            self._val = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0, self._val = time.perf_counter(), 0.0

        def on_validation_start(self, trainer, pl_module):
            self._v0 = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if trainer.state.fn == "fit":
                self._val += time.perf_counter() - self._v0

        def on_train_epoch_end(self, trainer, pl_module):
            total = time.perf_counter() - self._t0
            self.total.append(total)
            self.train.append(total - self._val)

    return EpochTimer()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=str(ROOT / "tasks" / "phangs_clusters.yaml"))
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--augment", default="none", choices=["none", "flip", "d4"])
    p.add_argument("--views", type=int, default=1, choices=[1, 2, 8])
    p.add_argument("--threads", type=int, default=None, help="torch threads (trainer.num_threads)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = p.parse_args(argv)

    os.environ.setdefault("ASTROTL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "astrotl_cache"))
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).propagate = False
    warnings.filterwarnings("ignore")

    from astrotl.config import load_config
    from astrotl.engine import run
    from astrotl.plugins import load_registries

    regs = load_registries()
    out = Path(tempfile.mkdtemp(prefix="astrotl_emb_bench_"))
    base = [f"data.n_train={args.n_train}", "data.n_val=256", "data.n_test=512", f"data.size={args.size}",
            "backbone.weights=none", "backbone.n_blocks=0", f"task.augment={args.augment}",
            f"trainer.embeddings.views={args.views}", f"trainer.max_epochs={args.epochs}",
            "trainer.early_stopping.enabled=false", "trainer.progress_bar=false", "trainer.logger=none",
            f"output_dir={out}"]
    if args.threads:
        base.append(f"trainer.num_threads={args.threads}")
    results = {}
    load0 = os.getloadavg()[0]
    for mode in ("false", "true"):
        cfg = load_config(args.task, regs, base + [f"trainer.cache_embeddings={mode}", f"name=emb_{mode}"]
                          + args.overrides)
        timer = epoch_timer()
        t0 = time.perf_counter()
        res = run(cfg, regs, callbacks=[timer])
        wall = time.perf_counter() - t0
        import json

        st = json.loads((res.path / "run.json").read_text())
        emb = st["weights"].get("embedding_cache")
        results[mode] = {"epoch_train_s": statistics.median(timer.train), "epochs_train_s": timer.train,
                         "epoch_total_s": statistics.median(timer.total), "wall_s": wall, "metrics": res.metrics,
                         "embedding": emb}
        print(f"cache_embeddings {mode:5s}: epoch (train loop) median {statistics.median(timer.train):7.3f} s "
              f"[{', '.join(f'{t:.3f}' for t in timer.train)}], with validation {statistics.median(timer.total):.3f} s, "
              f"run {wall:.1f} s, test accuracy {res.metrics.get('test_accuracy', float('nan')):.4f}, "
              f"best val_loss {res.metrics.get('best_val_loss', float('nan')):.4f}", flush=True)
        if emb:
            print("  embedding pass: " + ", ".join(f"{k} {v['samples']} x{v['views']} view(s) {v['seconds']:.1f} s"
                                                  f"{' (from cache)' if v['cached'] else ''}"
                                                  for k, v in emb["splits"].items()))
    ratio = results["false"]["epoch_train_s"] / results["true"]["epoch_train_s"]
    ratio_total = results["false"]["epoch_total_s"] / results["true"]["epoch_total_s"]
    print(f"config          : {args.task}, n_train {args.n_train}, {args.size} px, augment {args.augment}, "
          f"views {args.views}, {args.epochs} epochs, {os.cpu_count()} CPUs")
    print(f"epoch time ratio: {ratio:.1f}x (train loop, uncached / cached; target >= 10); {ratio_total:.1f}x with "
          f"validation")
    print(f"metrics         : test accuracy {results['false']['metrics'].get('test_accuracy'):.4f} (uncached) vs "
          f"{results['true']['metrics'].get('test_accuracy'):.4f} (cached)")
    print(f"load average    : {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
