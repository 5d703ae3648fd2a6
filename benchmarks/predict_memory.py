"""Peak memory of ``astrotl predict`` as the catalogue and the mosaic grow.

For each mosaic side (``--sides``) and catalogue length (``--rows``), runs :func:`astrotl.predict.predict`
in a fresh process (the model of :mod:`predict_throughput`'s trained run, catalog_cutouts over the FITS
mosaic, output written as FITS) while this process samples the child's ``/proc/<pid>/status`` every
20 ms, and prints

* the peak of ``RssAnon`` -- the process's own memory (heap, numpy and torch arrays), which must not grow
  with the mosaic: the FITS bands are memory-mapped, their pages are page cache (``RssFile``), not anonymous;
* the peak of ``VmRSS`` (anonymous + mapped file pages touched) for comparison;
* the size of the output catalogue, which necessarily grows with the catalogue (one row per candidate).

    python benchmarks/predict_memory.py                                  # 2048 and 8192 px, 10k/50k/200k rows
    python benchmarks/predict_memory.py --sides 2048 --rows 10000 50000 --stamp 16

Memory, not speed, is measured: it may run under ``nice``. Exit status 0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmRSS", "RssFile"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def child(run: str, data: str, out: str, batch: int, threads: int) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from astrotl.plugins import load_registries
    from astrotl.predict import predict

    torch.set_num_threads(threads)
    predict(run, load_registries(), out=out, data_file=data, batch_size=batch, device="cpu", overwrite=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--rows", type=int, nargs="+", default=[10000, 50000, 200000])
    p.add_argument("--stamp", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="keep runs, mosaics and catalogues here (reused by later calls)")
    args = p.parse_args(argv)
    os.environ.setdefault("ASTROTL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "astrotl_cache"))

    from predict_throughput import make_data, make_members

    root = Path(args.dir or tempfile.mkdtemp(prefix="astrotl_predict_mem_"))
    root.mkdir(parents=True, exist_ok=True)
    run = make_members(root, 1, args.stamp, "resnet18")[0]
    ctx = multiprocessing.get_context("spawn")
    print(f"{'mosaic':>12} {'GB':>6} {'rows':>8} {'wall s':>8} {'peak RssAnon MB':>16} {'peak VmRSS MB':>14} "
          f"{'output MB':>10}", flush=True)
    for side in args.sides:
        for rows in args.rows:
            data = make_data(root, side, rows, args.stamp)
            gb = sum(f.stat().st_size for f in (root / f"mosaic_{side}").glob("mosaic_*.fits")) / 1e9
            out = root / f"mem_{side}_{rows}.fits"
            proc = ctx.Process(target=child, args=(str(run), str(data), str(out), args.batch, args.threads))
            t0 = time.perf_counter()
            proc.start()
            peak = {"RssAnon": 0, "VmRSS": 0}
            while proc.is_alive():
                s = status_kb(proc.pid)
                for k in peak:
                    peak[k] = max(peak[k], s.get(k, 0))
                time.sleep(0.02)
            proc.join()
            wall = time.perf_counter() - t0
            if proc.exitcode != 0:
                print(f"{side:>12} predict failed (exit {proc.exitcode})")
                continue
            print(f"{f'{side}x{side}':>12} {gb:>6.2f} {rows:>8} {wall:>8.0f} {peak['RssAnon'] / 1024:>16.0f} "
                  f"{peak['VmRSS'] / 1024:>14.0f} {out.stat().st_size / 2**20:>10.1f}", flush=True)
    print(f"stamps {args.stamp} px, batch {args.batch}, ResNet-18, torch threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
