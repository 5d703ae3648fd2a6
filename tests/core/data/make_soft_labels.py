"""Write a tiny, seeded soft-label image folder: PNG stamps + ``labels.csv`` with vote fractions.

Usage::

    python tests/core/data/make_soft_labels.py OUT_DIR [--galaxies 16] [--seed 0]

``OUT_DIR/images/<id>.png`` are 16 x 16 RGB stamps (a Gaussian blob whose width and elongation
follow the galaxy's dominant answer, plus noise); ``OUT_DIR/labels.csv`` has one row per stamp:

``id``            ``g<galaxy>_<band>``
``galaxy``        the object (every object has one stamp per band: a ``group_col``)
``band``          ``F435W``, ``F606W`` or ``F814W`` (a column to group metrics by)
``frac_smooth``, ``frac_disk``, ``frac_artifact``
                  vote fractions (``votes / n_votes``, so each row sums to 1)
``n_votes``       number of voters (20)
``votes_smooth``, ``votes_disk``, ``votes_artifact``
                  the raw counts

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ANSWERS = ("smooth", "disk", "artifact")
BANDS = ("F435W", "F606W", "F814W")
SIZE = 16
N_VOTES = 20


def make(out: str | Path, galaxies: int = 16, seed: int = 0) -> Path:
    """Write the folder and return the path of ``labels.csv``."""
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    rows = []
    for g in range(galaxies):
        dominant = g % len(ANSWERS)
        alpha = np.full(len(ANSWERS), 1.0)
        alpha[dominant] = 6.0
        votes = rng.multinomial(N_VOTES, rng.dirichlet(alpha))
        width = (1.5, 3.0, 0.8)[dominant]
        axis_ratio = (1.0, 0.4, 1.0)[dominant]
        for b, band in enumerate(BANDS):
            blob = np.exp(-0.5 * ((xx / width) ** 2 + (yy / (width * axis_ratio)) ** 2))
            img = np.stack([blob * (0.6 + 0.2 * c) for c in range(3)], axis=-1) * (0.8 + 0.1 * b)
            img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
            gid = f"g{g:03d}_{band}"
            Image.fromarray((img * 255).astype(np.uint8)).save(out / "images" / f"{gid}.png")
            row = {"id": gid, "galaxy": f"g{g:03d}", "band": band}
            row.update({f"frac_{a}": f"{v / N_VOTES:.4f}" for a, v in zip(ANSWERS, votes)})
            row["n_votes"] = N_VOTES
            row.update({f"votes_{a}": int(v) for a, v in zip(ANSWERS, votes)})
            rows.append(row)
    path = out / "labels.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--galaxies", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make(args.out, args.galaxies, args.seed))


if __name__ == "__main__":
    main()
