"""GZ1 side by side: a plain PyTorch script against astrotl's shipped task file, on the same real split.

Both sides train on the *same* Galaxy Zoo 1 development images (``../shared/data/gz1_dev``), the same
train / validation / test split and the same pixels: the split, centre crop and resize come from the task
file's ``data`` section (astrotl's ``image_folder`` reader, so the split is identical by construction).
Everything after that differs:

reference (plain PyTorch, :func:`reference_run`, ~100 lines)
    ResNet-18 from scratch (torchvision), per-image standardisation, D4 augmentation (random 90-degree
    rotation + flip, labels untouched), class-weighted cross-entropy, AdamW + one-cycle schedule, a fixed
    number of epochs on the training split, the last epoch's weights, 4-rotation test-time averaging.
astrotl
    ``astrotl run <task file>`` with only ``seed``, ``output_dir`` and ``trainer.num_threads`` overridden
    (the epochs, augmentation, normalisation, model selection and TTA are the shipped file's).

Both report the test split's balanced accuracy (mean per-class recall) per seed, then mean +- std::

    nice -n 10 python benchmarks/gz1_reference.py                       # seeds 0 1 2, tasks/gz1_morphology.yaml
    python benchmarks/gz1_reference.py --seeds 0 --only reference       # one side only
    python benchmarks/gz1_reference.py --json gz1_reference.json        # all numbers as JSON
    python benchmarks/gz1_reference.py --table s0.json s1.json s2.json  # one table from per-seed runs

The validation split is used by astrotl for checkpoint selection and temperature scaling; the reference
ignores it (a plain script keeps its last epoch). Both see the same labelled training images.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def load_split(task: str, overrides: list[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """``{split: (uint8 images [N, C, H, W], labels [N])}`` and the number of classes, from the task file's data."""
    from astrotl.config import load_config
    from astrotl.engine import cache_dir_for
    from astrotl.plugins import load_registries

    cfg = load_config(task, load_registries(), overrides)
    ds_cls, ds_cfg = cfg.component("data")
    out = {}
    for split in ("train", "val", "test"):
        ds = ds_cls(ds_cfg, split=split, seed=cfg.run.seed, cache_dir=cache_dir_for(cfg))
        out[split] = (ds.raw_images(), np.asarray(ds.labels()))
    return out, len(ds.info().classes)


# -- the plain PyTorch reference ------------------------------------------------------------------


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation (TensorFlow's per_image_standardization): zero mean, unit variance per image."""
    x = x.float() / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / math.sqrt(x[0].numel()))
    return (x - mean) / std


def d4(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random rotation by k x 90 degrees and a random mirror flip per image (labels untouched)."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = torch.randint(0, 2, (len(x),), generator=gen).bool()
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)])


def recalls(true: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float]:
    """Recall of each class (NaN for a class absent from ``true``)."""
    return [float((pred[true == c] == c).mean()) if (true == c).any() else float("nan") for c in range(n_classes)]


def balanced_accuracy(true: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    return float(np.nanmean(recalls(true, pred, n_classes)))


def reference_run(data, n_classes: int, seed: int, epochs: int = 15, batch_size: int = 64,
                  max_lr: float = 3e-3) -> dict[str, float]:
    """Train the plain-PyTorch reference once; return its test accuracy and balanced accuracy."""
    import torchvision

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train = standardise(torch.from_numpy(np.ascontiguousarray(data["train"][0])))
    y_train = torch.from_numpy(data["train"][1]).long()
    x_test = standardise(torch.from_numpy(np.ascontiguousarray(data["test"][0])))
    y_test = data["test"][1]
    model = torchvision.models.resnet18(weights=None, num_classes=n_classes)
    if x_train.shape[1] != 3:
        model.conv1 = nn.Conv2d(x_train.shape[1], 64, 7, 2, 3, bias=False)
    counts = torch.bincount(y_train, minlength=n_classes).float().clamp_min(1)
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (n_classes * counts))
    steps = len(x_train) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr / 25, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = loss_fn(model(d4(x_train[idx], gen)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        logging.info("reference seed %d epoch %d/%d loss %.4f", seed, epoch + 1, epochs, total / steps)
    model.eval()
    probs = []
    with torch.no_grad():
        for b in range(0, len(x_test), 256):
            x = x_test[b:b + 256]
            probs.append(sum(torch.softmax(model(torch.rot90(x, k, dims=(-2, -1))), 1) for k in range(4)) / 4)
    pred = torch.cat(probs).argmax(1).numpy()
    return {"accuracy": float((pred == y_test).mean()), "balanced_accuracy": balanced_accuracy(y_test, pred, n_classes),
            "recall": recalls(y_test, pred, n_classes)}


# -- astrotl's shipped task file --------------------------------------------------------------------


def astrotl_run(task: str, overrides: list[str], seed: int, out_dir: Path, threads: int) -> dict[str, float]:
    """``astrotl run <task> --set seed=<seed>`` into ``out_dir``; return its test accuracy and balanced accuracy."""
    from astrotl.config import load_config
    from astrotl.engine import run
    from astrotl.plugins import load_registries

    sets = [*overrides, f"seed={seed}", f"output_dir={out_dir}", f"name=gz1_astrotl_seed{seed}",
            f"trainer.num_threads={threads}", "trainer.progress_bar=false"]
    res = run(load_config(task, load_registries(), sets), load_registries(), overwrite=True)
    m = res.metrics
    from astropy.table import Table

    if "ensemble_test_balanced_accuracy" in m:  # cv: {keep: ensemble}: the k fold models' averaged probabilities
        pred = Table.read(res.path / "predictions.ecsv")
        classes = [c.removeprefix("p_") for c in pred.colnames if c.startswith("p_")]
        true = np.array([classes.index(str(c)) for c in pred["true_class"]])
        guess = np.array([classes.index(str(c)) for c in pred["pred_class"]])
        return {"accuracy": float(m["ensemble_test_accuracy"]),
                "balanced_accuracy": float(m["ensemble_test_balanced_accuracy"]),
                "recall": recalls(true, guess, len(classes)), "run": str(res.path)}
    from astrotl.stages import stage_dirs

    final = (stage_dirs(res.path) or [res.path])[-1]  # a multi-stage run: its last stage is the model
    per_class = Table.read(final / "tables" / "per_class.ecsv")
    return {"accuracy": float(m["test_accuracy"]), "balanced_accuracy": float(m["test_balanced_accuracy"]),
            "recall": [float(r) for r in per_class["recall"]], "run": str(res.path),
            "val_balanced_accuracy": m.get("best_val_balanced_acc")}


def val_score(result: dict) -> float | None:
    """The validation balanced accuracy of an astrotl run's kept checkpoint: from the JSON, else (files written before
    it was recorded) from the run folder's metrics.json while that folder exists; None when neither has it."""
    if result.get("val_balanced_accuracy") is not None:
        return float(result["val_balanced_accuracy"])
    metrics = Path(result.get("run", "")) / "metrics.json"
    if result.get("run") and metrics.is_file():
        value = json.loads(metrics.read_text()).get("metrics", {}).get("best_val_balanced_acc")
        return None if value is None else float(value)
    return None


def summary(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f} +- {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def table(paths: list[str]) -> int:
    """Print the per-seed table, the means and the paired differences of JSON files written by ``--json``."""
    rows: dict[int, dict[str, dict]] = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for side, results in doc["results"].items():
            for r in results:
                rows.setdefault(int(r["seed"]), {})[side] = r
    print("seed | reference: balanced accuracy (accuracy) | astrotl: balanced accuracy (accuracy) | astrotl - reference")
    diffs = []
    for seed in sorted(rows):
        ref, ast = rows[seed].get("reference"), rows[seed].get("astrotl")
        cell = [f"{r['balanced_accuracy']:.3f} ({r['accuracy']:.3f})" if r else "-" for r in (ref, ast)]
        d = ast["balanced_accuracy"] - ref["balanced_accuracy"] if ref and ast else None
        if d is not None:
            diffs.append(d)
        print(f"{seed} | {cell[0]} | {cell[1]} | {'-' if d is None else f'{d:+.3f}'}")
    for side in ("reference", "astrotl"):
        got = [rows[s][side] for s in sorted(rows) if side in rows[s]]
        if got:
            print(f"{side:9s} balanced accuracy {summary([r['balanced_accuracy'] for r in got])}, accuracy "
                  f"{summary([r['accuracy'] for r in got])} (seeds {[r['seed'] for r in got]})")
    val = {s: val_score(rows[s]["astrotl"]) for s in sorted(rows) if "astrotl" in rows[s]}
    known = {s: v for s, v in val.items() if v is not None}
    if known:  # what a choice between astrotl recipes may look at (the test column may not be used to choose)
        line = (f"astrotl   validation balanced accuracy of the kept checkpoint {summary(list(known.values()))} "
                f"(seeds {list(known)})")
        if len(known) >= 3:  # does a seed's validation score say anything about its test score?
            test = [rows[s]["astrotl"]["balanced_accuracy"] for s in known]
            line += f"; correlation with the test score over seeds {np.corrcoef(list(known.values()), test)[0, 1]:+.2f}"
        print(line)
    if diffs:
        wins = sum(d > 0 for d in diffs)
        print(f"paired difference (astrotl - reference) {summary(diffs)}; astrotl higher on {wins} of {len(diffs)} seeds")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=str(REPO / "tasks" / "gz1_morphology.yaml"), help="astrotl task file (its data "
                   "section also defines the split and pixels of the reference)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the task file (both sides)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15, help="reference epochs (astrotl uses the task file's)")
    p.add_argument("--only", choices=("both", "reference", "astrotl"), default="both")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="folder for the astrotl runs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the side-by-side table of --json files (e.g. one "
                   "per seed, run in parallel) and exit")
    args = p.parse_args(argv)
    if args.table:
        return table(args.table)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gz1_reference_"))
    data, n_classes = load_split(args.task, args.set)
    logging.info("split sizes: %s", {k: len(v[1]) for k, v in data.items()})
    results: dict[str, list[dict]] = {"reference": [], "astrotl": []}
    for seed in args.seeds:
        for side in ("reference", "astrotl"):
            if args.only not in ("both", side):
                continue
            t0 = time.time()
            r = reference_run(data, n_classes, seed, args.epochs) if side == "reference" else \
                astrotl_run(args.task, args.set, seed, out_dir, args.threads)
            r.update(seed=seed, wall_s=round(time.time() - t0, 1))
            results[side].append(r)
            print(f"{side:9s} seed {seed}: balanced accuracy {r['balanced_accuracy']:.3f}, accuracy "
                  f"{r['accuracy']:.3f}, recall per class {' '.join(f'{x:.2f}' for x in r['recall'])} "
                  f"({r['wall_s']:.0f} s)", flush=True)
    print(f"\nGZ1 dev test split, {len(data['test'][1])} galaxies, task file {args.task}")
    for side, rows in results.items():
        if rows:
            print(f"{side:9s} balanced accuracy {summary([r['balanced_accuracy'] for r in rows])}, accuracy "
                  f"{summary([r['accuracy'] for r in rows])} (seeds {[r['seed'] for r in rows]})")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "overrides": args.set, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
