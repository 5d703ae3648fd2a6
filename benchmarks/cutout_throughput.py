"""Cutout-extraction throughput and memory of ``catalog_cutouts`` on a large simulated mosaic.

Writes an N x N x B-band float32 mosaic (default 8192 x 8192 x 5 = 1.3 GB) as one FITS file per band
into a temporary folder (streamed, never whole in RAM), a 100k-row ECSV catalogue (uniform positions,
a few off the image and on the edges), then builds a :class:`~astrotl.datasets.CatalogCutoutDataset`
over growing prefixes of the catalogue and cuts every stamp, printing

* cutouts per second (wall clock, one process);
* peak Python/numpy heap while cutting the last 2,000 stamps (``tracemalloc``) and the growth of the process's anonymous
  resident memory (``RssAnon`` from ``/proc/self/status``; memory-mapped FITS pages are file-backed
  page cache, not counted there) and of ``ru_maxrss`` (which does count mapped pages);

so one can see that memory does not grow with the catalogue length or the mosaic size.

    python benchmarks/cutout_throughput.py                     # 8k x 8k x 5, 100k rows, 64 px stamps
    python benchmarks/cutout_throughput.py --side 2048 --rows 20000 --stamp 32   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def rss_anon_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def max_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 1024.0 / 1024.0


def write_mosaic(directory: Path, side: int, bands: list[str], seed: int = 0) -> dict[str, str]:
    """One FITS file per band, written in row blocks through StreamingHDU (constant memory)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [(side + 1) / 2, (side + 1) / 2]
    w.wcs.cdelt = [-0.04 / 3600, 0.04 / 3600]
    rng = np.random.default_rng(seed)
    out = {}
    block = 512
    for band in bands:
        header = fits.Header()
        header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, -32, 2
        header["NAXIS1"], header["NAXIS2"] = side, side
        header.update(w.to_header())
        header["FILTER"] = band
        path = directory / f"mosaic_{band}.fits"
        shdu = fits.StreamingHDU(path, header)
        for y0 in range(0, side, block):
            rows = min(block, side - y0)
            data = rng.normal(0, 1, (rows, side)).astype(np.float32)
            if y0 + rows > side * 0.9:  # a NaN strip off the footprint along the top
                data[max(0, int(side * 0.9) - y0):, :] = np.nan
            shdu.write(data)
        shdu.close()
        out[band] = str(path)
    return out


def write_catalog(path: Path, rows: int, side: int, seed: int = 1) -> None:
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.01 * side, 1.01 * side, rows)  # ~2 % off the image
    y = rng.uniform(-0.01 * side, 1.01 * side, rows)
    Table({"id": np.arange(rows), "x": x, "y": y, "cls": rng.integers(1, 5, rows)}).write(path, format="ascii.ecsv")


def measure(images: dict[str, str], catalog: Path, rows: int, stamp: int, cache: Path) -> dict[str, float]:
    from astrotl.datasets import CatalogCutoutDataset

    cfg = CatalogCutoutDataset.Config(images=images, catalog=str(catalog), size=stamp, max_rows=rows,
                                      normalize={"scale": "image"})
    anon0 = rss_anon_mb()
    t0 = time.perf_counter()
    ds = CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=cache)
    t_init = time.perf_counter() - t0
    anon_init = rss_anon_mb()
    t0 = time.perf_counter()
    n_edge = 0
    for i in range(len(ds)):  # every stamp of the catalogue, untraced: the throughput
        stamp_arr, flags = ds.raw_cutout(i)
        n_edge += flags.edge
    t_cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_sample = min(len(ds), 5000)
    for i in range(n_sample):
        ds[i]
    t_sample = time.perf_counter() - t0
    # heap peak while cutting, traced (tracemalloc slows every allocation): the last 2,000 rows
    tracemalloc.start()
    for i in range(max(0, len(ds) - 2000), len(ds)):
        ds[i]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    anon_end = rss_anon_mb()
    ds.close()
    return {"rows": len(ds), "init_s": t_init, "cut_per_s": len(ds) / t_cut, "sample_per_s": n_sample / t_sample,
            "heap_peak_mb": peak / 2**20, "anon_init_mb": anon_init - anon0, "anon_growth_mb": anon_end - anon_init,
            "max_rss_mb": max_rss_mb(), "edge": n_edge}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=8192, help="mosaic side in pixels (default 8192)")
    p.add_argument("--bands", type=int, default=5, help="number of bands (default 5)")
    p.add_argument("--rows", type=int, default=100_000, help="catalogue rows (default 100000)")
    p.add_argument("--stamp", type=int, default=64, help="stamp side in pixels (default 64; the paper used 299)")
    p.add_argument("--dir", help="keep the files here instead of a temporary folder")
    args = p.parse_args(argv)
    band_names = ["F275W", "F336W", "F438W", "F555W", "F814W", "F657N", "F658N", "F110W"][: args.bands]
    with tempfile.TemporaryDirectory(prefix="astrotl_bench_") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        images = write_mosaic(root, args.side, band_names)
        catalog = root / "catalog.ecsv"
        write_catalog(catalog, args.rows, args.side)
        size_gb = sum(os.path.getsize(f) for f in images.values()) / 1e9
        print(f"mosaic: {args.side} x {args.side} px x {args.bands} bands float32 = {size_gb:.2f} GB on disk "
              f"(written in {time.perf_counter() - t0:.0f} s); catalogue {args.rows} rows; stamps {args.stamp} px")
        print(f"{'rows':>8} {'init s':>7} {'cutouts/s':>10} {'samples/s':>10} {'heap peak MB':>13} "
              f"{'anon init MB':>13} {'anon growth MB':>15} {'maxrss MB':>10}")
        print("  (heap peak: tracemalloc over 2,000 samples; anon: RssAnon growth over the whole pass; "
              "maxrss counts mapped FITS pages)")
        results = []
        for rows in sorted({max(1, args.rows // 100), max(1, args.rows // 10), args.rows}):
            r = measure(images, catalog, rows, args.stamp, root / "cache")
            results.append(r)
            print(f"{r['rows']:>8} {r['init_s']:>7.2f} {r['cut_per_s']:>10.0f} {r['sample_per_s']:>10.0f} "
                  f"{r['heap_peak_mb']:>13.2f} {r['anon_init_mb']:>13.1f} {r['anon_growth_mb']:>15.1f} "
                  f"{r['max_rss_mb']:>10.0f}")
        first, last = results[0], results[-1]
        print(f"catalogue x{last['rows'] / first['rows']:.0f}: extraction heap peak x"
              f"{last['heap_peak_mb'] / max(first['heap_peak_mb'], 1e-9):.2f} "
              f"({first['heap_peak_mb']:.2f} -> {last['heap_peak_mb']:.2f} MB); mosaic size {size_gb:.2f} GB vs "
              f"anonymous memory growth while cutting {last['anon_growth_mb']:.0f} MB")
        print(f"throughput: {last['cut_per_s']:.0f} raw {args.bands}-band {args.stamp}x{args.stamp} cutouts/s, "
              f"{last['sample_per_s']:.0f} normalised samples/s (one process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
