"""Inference throughput: ``astrotl predict`` from FITS mosaics versus the raw forward pass of the same model(s).

Measures, in one process, interleaved and repeated:

1. **raw** -- images per second of the members' forward passes alone: the models rebuilt by
   :func:`astrotl.loadrun.load_run` (as ``predict`` does), one random batch ``[B, C, s, s]`` in memory,
   ``torch.inference_mode()``, every member applied to it in turn (``K`` members: ``K`` forwards per
   candidate);
2. **predict** -- candidates per second through :func:`astrotl.predict.predict` end to end: opening the
   runs and the mosaics, reading the catalogue, cutting every stamp from the memory-mapped FITS bands,
   normalising, batching, the forward passes, the per-candidate rows, the pixel flags, the join with the
   catalogue, the ensemble statistics (``K > 1``) and writing the output catalogue (FITS);

and prints both and their ratio (target >= 0.9), for each repetition (raw measured right before each
predict) and the best. One run directory is trained (phangs_sim, ResNet-18, ``--stamp`` px, one epoch);
the other members are copies of it with perturbed head weights (the forward pass costs the same whatever
the weights). The mosaic is ``--side`` px square in the five PHANGS bands (noise, a NaN strip along the top
10 % as a footprint edge) and the catalogue ``--rows`` uniform positions (~2 % off the image).

    python benchmarks/predict_throughput.py --members 1 --rows 10000             # one model
    python benchmarks/predict_throughput.py --members 10 --rows 10000 --repeat 2  # a 10-member ensemble
    python benchmarks/predict_throughput.py --members 10 --rows 50000 --repeat 1  # the paper-scale job

Exit status 0 whatever the ratio (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def perturbed_copy(run: Path, dest: Path, seed: int) -> Path:
    """A copy of a finished run with other head weights: another ensemble member."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(run, dest)
    f = dest / "model.safetensors"
    with safe_open(str(f), framework="pt") as fh:
        metadata = dict(fh.metadata())
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    gen = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.startswith("1.") and v.is_floating_point():
            state[k] = v + 0.5 * v.std() * torch.randn(v.shape, generator=gen)
    save_file(state, str(f), metadata=metadata)
    return dest


def make_members(root: Path, k: int, stamp: int, backbone: str) -> list[Path]:
    """Train one small run (phangs_sim, ``backbone``, one epoch) and make ``k - 1`` perturbed copies."""
    import yaml

    from astrotl.cli import main

    cfg = {"name": "m00", "seed": 0, "output_dir": str(root / "runs"),
           "task": {"name": "phangs_clusters"},
           "data": {"name": "phangs_sim", "n_train": 128, "n_val": 64, "n_test": 0, "size": stamp},
           "backbone": {"name": backbone, "weights": "none"}, "head": {"name": "linear"},
           "optim": {"lr": 0.003, "scheduler": "none"},
           "trainer": {"max_epochs": 1, "batch_size": 64, "accelerator": "cpu", "devices": 1,
                       "progress_bar": False, "logger": "none"}}
    (root / "m00.yaml").write_text(yaml.safe_dump(cfg))
    if not (root / "runs" / "m00" / "model.safetensors").is_file():
        assert main(["-q", "run", str(root / "m00.yaml"), "--overwrite"]) == 0
    runs = [root / "runs" / "m00"]
    for i in range(1, k):
        dest = root / "runs" / f"m{i:02d}"
        if not dest.exists():
            perturbed_copy(runs[0], dest, seed=i)
        runs.append(dest)
    return runs


def make_data(root: Path, side: int, rows: int, stamp: int) -> Path:
    """The mosaic (5 FITS files), the catalogue and a data section for catalog_cutouts."""
    import yaml

    from cutout_throughput import write_catalog, write_mosaic

    bands = ["F275W", "F336W", "F438W", "F555W", "F814W"]
    mosaic = root / f"mosaic_{side}"
    mosaic.mkdir(parents=True, exist_ok=True)
    if not all((mosaic / f"mosaic_{b}.fits").is_file() for b in bands):
        images = write_mosaic(mosaic, side, bands)
    else:
        images = {b: str(mosaic / f"mosaic_{b}.fits") for b in bands}
    cat = mosaic / f"catalog_{rows}.fits"  # survey catalogues of this size come as FITS tables
    if not cat.is_file():
        from astropy.table import Table

        if not (mosaic / f"catalog_{rows}.ecsv").is_file():
            write_catalog(mosaic / f"catalog_{rows}.ecsv", rows, side)
        Table.read(mosaic / f"catalog_{rows}.ecsv").write(cat)
    data = {"data": {"name": "catalog_cutouts", "images": images, "catalog": str(cat), "size": stamp,
                     "x_col": "x", "y_col": "y", "id_col": "id"}}
    path = mosaic / f"data_{rows}_{stamp}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers)."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


class ForwardClock:
    """CPU seconds spent inside the members' forward passes during ``predict`` (hooks on the models it builds)."""

    def __init__(self):
        self.cpu = 0.0
        self._t0 = 0.0

    def install(self):
        from astrotl.loadrun import LoadedRun

        original = LoadedRun.model_for
        clock = self

        def model_for(self, info):
            model, task = original(self, info)
            model.register_forward_pre_hook(lambda *a: setattr(clock, "_t0", time.process_time()))
            model.register_forward_hook(lambda *a: setattr(clock, "cpu", clock.cpu + time.process_time() - clock._t0))
            return model, task

        LoadedRun.model_for = model_for


def raw_rate(models, batch: int, bands: int, stamp: int, n_batches: int) -> tuple[float, float]:
    """Candidates per second and per CPU-second of the members' forward passes on one in-memory batch."""
    import torch

    x = torch.randn(batch, bands, stamp, stamp)
    with torch.inference_mode():
        for m in models:
            m(x)
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(n_batches):
            for m in models:
                m(x)
        dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
    return n_batches * batch / dt, n_batches * batch / dc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=1, help="ensemble members K (default 1)")
    p.add_argument("--rows", type=int, default=10000, help="catalogue rows (default 10000)")
    p.add_argument("--side", type=int, default=4000, help="mosaic side in pixels (default 4000)")
    p.add_argument("--stamp", type=int, default=32, help="stamp side in pixels (default 32)")
    p.add_argument("--batch", type=int, default=256, help="batch size of both measurements (default 256)")
    p.add_argument("--backbone", default="resnet18", help="backbone of the members (default resnet18)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved raw/predict repetitions (default 2)")
    p.add_argument("--raw-batches", type=int, default=8, help="timed batches per raw measurement (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of predict (trainer.num_workers)")
    p.add_argument("--dir", default=None, help="keep runs, mosaic and catalogue here (reused by later calls)")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    os.environ.setdefault("ASTROTL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "astrotl_cache"))
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch

    from astrotl.interfaces import DatasetInfo
    from astrotl.loadrun import load_run
    from astrotl.plugins import load_registries
    from astrotl.predict import predict

    if args.threads:
        torch.set_num_threads(args.threads)
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="astrotl_predict_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        runs = make_members(root, args.members, args.stamp, args.backbone)
        data = make_data(root, args.side, args.rows, args.stamp)
        setup_s = time.perf_counter() - t0
        regs = load_registries()
        loaded = [load_run(r, regs) for r in runs]
        info = DatasetInfo(bands=tuple(loaded[0].meta["bands"]), classes=tuple(loaded[0].meta["classes"]))
        models = [ld.model_for(info)[0] for ld in loaded]
        overrides = [f"trainer.num_workers={args.workers}"]
        # one untimed predict over a small prefix: FITS pages, caches (noise scale) and imports warm
        predict(runs, regs, out=root / "warm.fits", data_file=data, overrides=overrides + ["data.max_rows=512"],
                batch_size=args.batch, device="cpu", overwrite=True)
        load0 = loadavg()
        clock = ForwardClock()
        clock.install()
        reps = []
        for r in range(args.repeat):
            raw, raw_cpu = raw_rate(models, args.batch, len(info.bands), args.stamp, args.raw_batches)
            out = root / f"out_{r}.fits"
            clock.cpu = 0.0
            c0, t1 = cpu_seconds(), time.perf_counter()
            predict(runs, regs, out=out, data_file=data, overrides=overrides, batch_size=args.batch, device="cpu",
                    overwrite=True)
            wall, cpu = time.perf_counter() - t1, cpu_seconds() - c0
            from astropy.table import Table

            n = len(Table.read(out))
            reps.append({"raw_per_s": raw, "predict_per_s": n / wall, "ratio": n / wall / raw, "wall_s": wall,
                         "raw_per_cpu_s": raw_cpu, "predict_per_cpu_s": n / cpu, "ratio_cpu": n / cpu / raw_cpu,
                         "cpu_s": cpu, "forward_cpu_s": clock.cpu, "forward_share": clock.cpu / cpu, "rows": n,
                         "load": loadavg()})
            print(f"rep {r + 1}: raw {raw:8.1f} candidates/s ({args.members} forward(s) each)   predict "
                  f"{n / wall:8.1f} candidates/s ({n} in {wall:.1f} s)   ratio {n / wall / raw:.3f}   "
                  f"[per CPU-second: raw {raw_cpu:.1f}, predict {n / cpu:.1f}, ratio {n / cpu / raw_cpu:.3f}; "
                  f"forward passes {100 * clock.cpu / cpu:.0f} % of predict's CPU]   "
                  f"load {reps[-1]['load']:.1f}", flush=True)
        best = max(reps, key=lambda d: d["ratio"])
        med = sorted(r["ratio"] for r in reps)[len(reps) // 2]
        print(f"setup          : {setup_s:.0f} s (training one run, copies, mosaic {args.side}^2 x 5 bands, "
              f"catalogue {args.rows} rows)")
        print(f"config         : {args.members} x {args.backbone} at {args.stamp} px, batch {args.batch}, "
              f"torch threads {torch.get_num_threads()}, DataLoader workers {args.workers}, {os.cpu_count()} CPUs")
        print(f"best ratio     : {best['ratio']:.3f} (predict {best['predict_per_s']:.1f} / raw {best['raw_per_s']:.1f} "
              f"candidates/s; target >= 0.9); wall time of that predict {best['wall_s']:.1f} s for {best['rows']} "
              f"candidates x {args.members} model(s)")
        best_cpu = max(reps, key=lambda d: d["ratio_cpu"])
        print(f"median ratio   : {med:.3f}; forward passes take {100 * max(r['forward_share'] for r in reps):.0f} % "
              f"of predict's CPU time at best (1.0 would be a free pipeline; meaningful with --workers 0)")
        print(f"best CPU ratio : {best_cpu['ratio_cpu']:.3f} (candidates per CPU-second of this process and its "
              f"DataLoader workers: predict {best_cpu['predict_per_cpu_s']:.1f} / raw {best_cpu['raw_per_cpu_s']:.1f})")
        print(f"load average   : {load0:.1f} at the start, {reps[-1]['load']:.1f} at the end ({os.cpu_count()} CPUs)")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "reps": reps, "best": best,
                                                   "setup_s": setup_s}, indent=2))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
