"""Does astrotl's GZ1 pre-training transfer? A label-efficiency table on a held-apart real target.

Source and target are both built from the Galaxy Zoo 1 development set (``../shared/data/gz1_dev``), with
*no galaxy in both*:

source (pre-training)
    a seeded, class-stratified two thirds of the 4,400 galaxies: ``tasks/gz1_pretrain.yaml`` as shipped (six-class
    morphology, SDSS gri colour), only ``data.labels`` pointed at ``<out>/source_labels.csv``;
target (fine-tuning), held apart
    the other third, as a *different task on different pixels*: grey images (one band, the JPEG's luminance -- the
    first convolution is adapted 3 -> 1 band) and two classes, ``smooth`` (GZ1 class 0, elliptical) against
    ``disk`` (GZ1 classes 1, 2 and 3: clockwise, anticlockwise and edge-on spirals); the "don't know" and merger
    galaxies are left out. These galaxies are never seen in pre-training, so the target measures transfer, not
    memorisation; its split (60 % training pool, 5 % validation, 35 % test: 856 / 71 / 500 galaxies) is seeded
    and stratified.

For every number of labels (a seeded, stratified ``train_subset`` of the target's training pool) and model seed,
the target is fine-tuned twice with the same recipe: from scratch (``backbone.weights: none``) and from the
pre-trained backbone (``backbone.weights: run:<out>/pretrain``). From scratch uses ``pixel_norm: image``, the
pre-trained backbone ``pixel_norm: auto``, i.e. the normalisation recorded with its weights (also ``image``:
the arms differ only in their initial weights).
``--mismatch`` adds the pre-trained backbone fine-tuned with a *different* normalisation than it was trained with
(``pixel_norm: dataset``), to measure what the travelling normalisation is worth. ``--norms`` compares pixel
normalisations from scratch at the largest label count (how the default was chosen).

    nice -n 10 python benchmarks/gz1_transfer.py --out runs/gz1_transfer                  # 50/100/300 x seeds 0 1 2
    python benchmarks/gz1_transfer.py --out runs/gz1_transfer --seeds 1 --labels 100     # one more cell
    python benchmarks/gz1_transfer.py --out runs/gz1_transfer --table-only                # re-print the table

Every cell is an ordinary astrotl run under ``--out`` (its report.md, metrics.json and run.json say how it was
made); finished cells are reused, so several processes (e.g. one per seed) can fill the same table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DISK = {"0": "smooth", "1": "disk", "2": "disk", "3": "disk"}


def make_tables(data_root: Path, out: Path, seed: int = 0, target_fraction: float = 1 / 3) -> tuple[Path, Path]:
    """Write ``source_labels.csv`` (OBJID, CLASS) and ``target_labels.csv`` (OBJID, MORPH) into ``out``."""
    with open(data_root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    classes = np.array([r["CLASS"] for r in rows])
    target = np.zeros(len(rows), dtype=bool)
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        target[idx[: int(round(len(idx) * target_fraction))]] = True
    src, tgt = out / "source_labels.csv", out / "target_labels.csv"
    out.mkdir(parents=True, exist_ok=True)
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["OBJID", "CLASS"])
        w.writerows([r["OBJID"], r["CLASS"]] for r, t in zip(rows, target) if not t)
    with open(tgt, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["OBJID", "MORPH", "GZ1_CLASS"])
        w.writerows([r["OBJID"], DISK[r["CLASS"]], r["CLASS"]] for r, t in zip(rows, target) if t and r["CLASS"] in DISK)
    return src, tgt


def target_config(data_root: Path, labels: Path, out: Path, name: str, seed: int, n_labels: int, weights: str,
                  epochs: int, pixel_norm: str = "auto") -> dict:
    """The target fine-tuning task file (identical for both initialisations but ``backbone.weights``)."""
    return {
        "name": name, "seed": seed, "output_dir": str(out),
        "description": f"GZ1 held-apart target: grey smooth vs disk, {n_labels} labels, weights {weights}",
        "task": {"name": "classification", "augment": "d4", "class_weights": "balanced"},
        "data": {"name": "image_folder", "root": str(data_root), "labels": str(labels), "id_col": "OBJID",
                 "file_pattern": "images/{id}.jpeg", "label_col": "MORPH", "classes": ["smooth", "disk"],
                 "extra_columns": ["GZ1_CLASS"], "color": "grayscale", "crop": 128, "resize": 32,
                 "pixel_norm": pixel_norm, "split_fractions": [0.6, 0.05, 0.35], "split_seed": 0},
        "backbone": {"name": "resnet18", "weights": weights},
        "head": {"name": "linear", "dropout": 0.2},
        "optim": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "scheduler": "cosine", "warmup_epochs": 1},
        "trainer": {"max_epochs": epochs, "batch_size": 16, "num_workers": 0, "accelerator": "cpu", "devices": 1,
                    "monitor": "val_balanced_acc", "early_stopping": {"enabled": False}, "progress_bar": False,
                    "logger": "none", "num_threads": 1},
        "train_subset": {"size": n_labels, "seed": seed},
    }


def _run(cfg: dict, regs) -> dict:
    from astrotl.config import resolve
    from astrotl.engine import run

    path = Path(cfg["output_dir"]) / cfg["name"]
    done = path / "metrics.json"
    st = path / "run.json"
    if done.is_file() and st.is_file() and json.loads(st.read_text()).get("status") == "finished":
        return json.loads(done.read_text())["metrics"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(resolve(cfg, regs), regs, overwrite=path.exists())
    return res.metrics


def _claim(path: Path) -> bool:
    """Claim a cell for this process (a lock file with our pid); False if a live process holds it."""
    import os

    lock = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
            return False  # another live process runs this cell
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            lock.unlink(missing_ok=True)  # stale
            return _claim(path)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _release(path: Path) -> None:
    (path.parent / f".{path.name}.lock").unlink(missing_ok=True)


def epochs_for(n: int) -> int:
    """Fine-tuning epochs for ``n`` labels (about 100-200 optimiser steps of 16 images)."""
    return {50: 30, 100: 20, 300: 10}.get(n, max(8, int(3000 / max(n, 1))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gz1_transfer")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gz1_dev"), help="the gz1_dev folder")
    p.add_argument("--labels", type=int, nargs="+", default=[50, 100, 300])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-only", action="store_true", help="only pre-train (then start one process per seed)")
    p.add_argument("--mismatch", action="store_true", help="also: pre-trained, fine-tuned with pixel_norm: dataset")
    p.add_argument("--norms", nargs="*", default=[], help="also: from scratch at max(--labels) with these pixel_norms")
    p.add_argument("--table-only", action="store_true", help="print the table of the finished cells, run nothing")
    p.add_argument("--scratch-only", action="store_true", help="only the from-scratch cells (no pre-training needed)")
    p.add_argument("--skip-scratch", action="store_true", help="leave the from-scratch cells to another process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from astrotl.config import load_config
    from astrotl.plugins import load_registries

    regs = load_registries()
    out = Path(args.out).resolve()
    data_root = Path(args.data).resolve()
    src, tgt = make_tables(data_root, out)
    pre = out / "pretrain"
    if not args.table_only and not args.scratch_only:
        pre_st = pre / "run.json"
        if not (pre_st.is_file() and json.loads(pre_st.read_text()).get("status") == "finished"):
            from astrotl.engine import run

            t0 = time.time()
            cfg = load_config(REPO / "tasks" / "gz1_pretrain.yaml", regs,
                              [f"data.labels={src}", f"data.root={data_root}", f"output_dir={out}", "name=pretrain",
                               "trainer.num_threads=1", "trainer.progress_bar=false"])
            res = run(cfg, regs, overwrite=pre.exists())
            print(f"pre-trained on the source: {res.headline} ({time.time() - t0:.0f} s)", flush=True)
        if args.pretrain_only:
            return 0
    cells = []
    for n in args.labels:
        for seed in args.seeds:
            if not args.skip_scratch:
                cells.append(("scratch", n, seed, "none", "image"))
            if args.scratch_only:
                continue
            cells.append(("pretrained", n, seed, f"run:{pre}", "auto"))
            if args.mismatch:
                cells.append(("pretrained, pixel_norm: dataset", n, seed, f"run:{pre}", "dataset"))
    for norm in args.norms:
        for seed in args.seeds:
            if norm != "image":  # scratch is pixel_norm: image already
                cells.append((f"scratch, pixel_norm: {norm}", max(args.labels), seed, "none", norm))
    results: dict[tuple[str, int], list[dict]] = {}
    for arm, n, seed, weights, norm in cells:
        tag = arm.replace(", pixel_norm: ", "_").replace(" ", "")
        name = f"{tag}_n{n}_s{seed}"
        path = out / name
        finished = (path / "run.json").is_file() and json.loads((path / "run.json").read_text()).get("status") == "finished"
        if args.table_only and not finished:
            continue
        if not finished and not _claim(path):
            print(f"{name:40s} running in another process, skipped", flush=True)
            continue
        t0 = time.time()
        try:
            m = _run(target_config(data_root, tgt, out, name, seed, n, weights, epochs_for(n), norm), regs)
        finally:
            if not finished:
                _release(path)
        results.setdefault((arm, n), []).append(m)
        print(f"{name:40s} balanced accuracy {m['test_balanced_accuracy']:.3f}  accuracy {m['test_accuracy']:.3f}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    arms = list(dict.fromkeys(a for a, _ in results))
    sizes = sorted({n for _, n in results})

    def cell(arm, n):
        v = [r["test_balanced_accuracy"] for r in results.get((arm, n), [])]
        if not v:
            return "-"
        return f"{np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})"

    lines = ["| initialisation | " + " | ".join(f"{n} labels" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    lines += [f"| {arm} | " + " | ".join(cell(arm, n) for n in sizes) + " |" for arm in arms]
    pm = json.loads((pre / "metrics.json").read_text())["metrics"] if (pre / "metrics.json").is_file() else {}
    lines += ["", "Test balanced accuracy, mean +- std over model seeds (n = number of seeds). Target: held-apart GZ1 "
              "galaxies, grey, smooth vs disk. Pre-training: tasks/gz1_pretrain.yaml on the source galaxies "
              f"(test balanced accuracy {pm.get('test_balanced_accuracy', float('nan')):.3f} on its own 6-class task, "
              f"{pm.get('n_train', '?')} training images)."]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "gz1_transfer.md").write_text(text + "\n")
    (out / "gz1_transfer.json").write_text(json.dumps({f"{a}|{n}": r for (a, n), r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
