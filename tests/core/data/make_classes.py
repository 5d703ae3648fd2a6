"""Write a tiny, seeded two-class image folder: PNG stamps of round or elongated blobs + ``labels.csv``.

Usage::

    python tests/core/data/make_classes.py OUT_DIR [--n 96] [--size 16] [--seed 0]

``OUT_DIR/images/<id>.png`` are grey ``size x size`` stamps of one Gaussian blob, round (class
``round``) or elongated at a random angle (class ``long``), with noise; ``OUT_DIR/labels.csv`` has
``id``, ``label`` and ``group`` (pairs of stamps share a group, as the bands of one object would).
The classes are learnable in one or two epochs, so end-to-end tests can assert the pipeline learns.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def make(out: str | Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    rows = []
    for i in range(n):
        label = "long" if i % 2 else "round"
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        sx, sy = (size / 4, size / 16) if label == "long" else (size / 7, size / 7)
        img = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + rng.normal(0, 0.05, (size, size))
        pixels = np.clip(img * 200 + 20, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out / "images" / f"s{i:03d}.png")
        rows.append({"id": f"s{i:03d}", "label": label, "group": f"g{i // 4:03d}"})
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make(a.out, a.n, a.size, a.seed))
