"""CPU cost per candidate of the data side of ``predict``: before and after the vectorised cutting path.

In one process, on the same mosaic and catalogue, measures CPU seconds per candidate of

* **before** -- what ``catalog_cutouts`` did per sample until issue 14: ``Cutout2D(mode="partial")`` per
  band and candidate (without WCS), then the normalisation of that one stamp with ``np.nanmedian``
  (reproduced here as the reference);
* **after** -- what a DataLoader batch costs now: ``CatalogCutoutDataset.__getitems__`` on batches of
  ``--batch`` (vectorised cutting from the memory map, batch normalisation);
* **forward** -- the ResNet-18 forward pass on the same batch shape (torch threads: ``--threads``),

and prints the data side as a fraction of the forward pass. Interleaved ``--repeat`` times; the best of
each is kept. Exit status 0.

    python benchmarks/cutting_speed.py --rows 5000 --side 4000 --stamp 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def before(ds, rows, size: int) -> None:
    """The per-sample path before issue 14 (Cutout2D per band, normalisation with np.nanmedian)."""
    from astropy.nddata import Cutout2D

    from astrotl.data import NormalizeConfig

    cfg: NormalizeConfig = ds.config.normalize
    for r in rows:
        out = np.full((len(ds.bands), size, size), np.nan, dtype=np.float32)
        for c, b in enumerate(ds._stack.bands):
            x, y = float(ds._px[c, r]), float(ds._py[c, r])
            ny, nx = b.shape
            if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
                out[c] = Cutout2D(b.data, (x, y), (size, size), mode="partial", fill_value=np.nan, copy=True).data
        x = out[None].copy()
        x[~np.isfinite(x)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x -= np.nanmedian(x, axis=(2, 3), keepdims=True)
        x /= ds._band_scale[None, :, None, None]
        x = np.arcsinh(x / cfg.softening)
        np.clip(x, -cfg.clip, cfg.clip, out=x)
        np.nan_to_num(x, nan=0.0).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--side", type=int, default=4000)
    p.add_argument("--stamp", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="keep (and reuse) the mosaic here")
    args = p.parse_args(argv)
    os.environ.setdefault("ASTROTL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "astrotl_cache"))
    warnings.filterwarnings("ignore")
    import torch
    import torchvision
    import yaml

    from astrotl.datasets import CatalogCutoutDataset
    from predict_throughput import make_data

    torch.set_num_threads(args.threads)
    root = Path(args.dir or tempfile.mkdtemp(prefix="astrotl_cut_speed_"))
    data = yaml.safe_load(make_data(root, args.side, args.rows, args.stamp).read_text())["data"]
    data.pop("name")
    ds = CatalogCutoutDataset(CatalogCutoutDataset.Config(**data), split="predict", seed=0, cache_dir=root / "cache")
    n = len(ds)
    model = torchvision.models.resnet18(num_classes=4)
    model.conv1 = torch.nn.Conv2d(len(ds.bands), 64, 7, 2, 3, bias=False)
    model.eval()
    x = torch.randn(args.batch, len(ds.bands), args.stamp, args.stamp)
    best = {"before": 1e9, "after": 1e9, "forward": 1e9}
    m = min(n, 2000)  # the old path is slow: a prefix of the catalogue
    for _ in range(args.repeat):
        c0 = time.process_time()
        before(ds, ds.rows()[:m], args.stamp)
        best["before"] = min(best["before"], (time.process_time() - c0) / m)
        c0 = time.process_time()
        for s in range(0, n, args.batch):
            ds.__getitems__(list(range(s, min(n, s + args.batch))))
        best["after"] = min(best["after"], (time.process_time() - c0) / n)
        with torch.inference_mode():
            model(x)
            c0 = time.process_time()
            for _ in range(3):
                model(x)
        best["forward"] = min(best["forward"], (time.process_time() - c0) / (3 * args.batch))
    f = best["forward"]
    print(f"mosaic {args.side}^2 x {len(ds.bands)} bands, {n} candidates ({m} for 'before'), {args.stamp} px stamps, "
          f"batch {args.batch}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"CPU ms per candidate: before {1e3 * best['before']:.3f} ({best['before'] / f:.2f} x the forward pass), "
          f"after {1e3 * best['after']:.3f} ({best['after'] / f:.2f} x), forward pass {1e3 * f:.3f}; "
          f"data side {best['before'] / best['after']:.1f}x cheaper")
    print(f"ceiling of predict / forward from the data side alone: before {f / (f + best['before']):.2f}, after "
          f"{f / (f + best['after']):.2f} (one process, no overlap)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
