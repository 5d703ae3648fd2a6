"""Write a tiny, seeded detection folder: grey PNG images with bright squares + ``images.csv`` + ``boxes.csv``.

Usage::

    python tests/core/data/make_boxes.py OUT_DIR [--images 40] [--size 32] [--seed 0]

``OUT_DIR/images/<image_id>.png`` are ``size x size`` 8-bit grey images: sky noise (mean 30, sigma 6)
and 0-3 bright, non-overlapping squares (value 220): ``small`` squares 3-4 px wide and ``large`` ones
6-8 px wide. Every fifth image has no square at all.

``OUT_DIR/images.csv``  one row per image: ``image_id``, ``n_true`` (number of squares)
``OUT_DIR/boxes.csv``   one row per square: ``image_id``, ``x0``, ``y0``, ``x1``, ``y1`` (0-based pixel
                        edges: the square covers pixels ``x0 .. x1 - 1``), ``class`` (small / large)

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def make(out: str | Path, images: int = 40, size: int = 32, seed: int = 0) -> Path:
    """Write the folder and return its path."""
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_rows, box_rows = [], []
    for i in range(images):
        image_id = f"img{i:03d}"
        img = rng.normal(30, 6, (size, size))
        n = 0 if i % 5 == 0 else int(rng.integers(1, 4))
        taken = np.zeros((size, size), dtype=bool)
        placed = 0
        for _ in range(50):
            if placed == n:
                break
            large = bool(rng.integers(0, 2))
            side = int(rng.integers(6, 9)) if large else int(rng.integers(3, 5))
            x0, y0 = (int(v) for v in rng.integers(1, size - side - 1, 2))
            if taken[max(y0 - 1, 0):y0 + side + 1, max(x0 - 1, 0):x0 + side + 1].any():
                continue
            taken[y0:y0 + side, x0:x0 + side] = True
            img[y0:y0 + side, x0:x0 + side] = 220
            box_rows.append({"image_id": image_id, "x0": x0, "y0": y0, "x1": x0 + side, "y1": y0 + side,
                             "class": "large" if large else "small"})
            placed += 1
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(out / "images" / f"{image_id}.png")
        image_rows.append({"image_id": image_id, "n_true": placed})
    for name, rows, fields in (("images.csv", image_rows, ["image_id", "n_true"]),
                               ("boxes.csv", box_rows, ["image_id", "x0", "y0", "x1", "y1", "class"])):
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make(a.out, images=a.images, size=a.size, seed=a.seed))
