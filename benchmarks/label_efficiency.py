"""Label efficiency: random initialisation vs a GZ1-pretrained backbone (and ImageNet, when a local
cache has it) on the simulated PHANGS cluster task with 100, 300 and 1000 training labels.

1. pre-trains ResNet-18 on the real Galaxy Zoo 1 images (``tasks/gz1_pretrain.yaml``), unless
   ``<out>/gz1_pretrain/backbone.safetensors`` already exists (``--repretrain`` forces it);
2. fine-tunes ``tasks/phangs_clusters.yaml`` for every (initialisation, number of labels, seed), the
   GZ1 backbone loaded with ``backbone.weights=run:<out>/gz1_pretrain`` (3 -> 5 bands through the
   first-conv adapter);
3. writes a markdown table (mean test accuracy / balanced accuracy over seeds) to
   ``<out>/label_efficiency.md`` and prints it.

Usage::

    python benchmarks/label_efficiency.py                    # defaults below, ~15 min on 2 CPU cores
    python benchmarks/label_efficiency.py --labels 100 300 1000 --seeds 0 1 2 --epochs 15 --size 32
    python benchmarks/label_efficiency.py --quick            # a 2-minute smoke version

All runs are ordinary astrotl runs under ``--out`` (their report.md, metrics.json, run.json hold the
weights' provenance and sha256), so any number in the table can be traced and re-run by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/label_efficiency", help="directory for all runs and the table")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 300, 1000], help="training-set sizes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="model seeds per cell (data fixed)")
    p.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs on PHANGS")
    p.add_argument("--size", type=int, default=32, help="PHANGS cutout side (px)")
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--pretrain-resize", type=int, default=48, help="GZ1 image side for pre-training (px)")
    p.add_argument("--inits", nargs="+", default=["random", "gz1", "imagenet"],
                   help="initialisations to compare (imagenet is skipped when not in a local cache)")
    p.add_argument("--repretrain", action="store_true", help="pre-train again even if the export exists")
    p.add_argument("--quick", action="store_true", help="tiny smoke version (small sets, 2 epochs)")
    p.add_argument("--table", default=None, help="also write the markdown table to this file")
    return p.parse_args(argv)


def _run(task: str, overrides: list[str], regs) -> dict:
    from astrotl.config import load_config
    from astrotl.engine import run

    cfg = load_config(REPO / task, regs, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = run(cfg, regs, overwrite=True)
    out = json.loads((path / "metrics.json").read_text())
    return {"metrics": out["metrics"], "weights": out["weights"], "path": str(path)}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "astrotl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.quick:
        args.labels, args.epochs, args.n_val, args.n_test = [100, 300], 2, 100, 200
        args.pretrain_epochs, args.pretrain_resize = 1, 32
    from astrotl.plugins import load_registries
    from astrotl.weights import locate, torchvision_request

    regs = load_registries()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    common = ["trainer.progress_bar=false", "trainer.logger=none", "trainer.accelerator=cpu", f"output_dir={out}"]

    pre = out / "gz1_pretrain"
    if "gz1" in args.inits and (args.repretrain or not (pre / "backbone.safetensors").is_file()):
        print(f"pre-training on GZ1 ({args.pretrain_epochs} epochs, {args.pretrain_resize} px) ...", flush=True)
        r = _run("tasks/gz1_pretrain.yaml", common + [f"trainer.max_epochs={args.pretrain_epochs}",
                                                       f"data.resize={args.pretrain_resize}"], regs)
        m = r["metrics"]
        print(f"  GZ1 test accuracy {m.get('test_accuracy', float('nan')):.3f}, balanced "
              f"{m.get('test_balanced_accuracy', float('nan')):.3f} ({m['wall_time_s']:.0f} s)", flush=True)
    pre_metrics = json.loads((pre / "metrics.json").read_text())["metrics"] if (pre / "metrics.json").is_file() else {}

    inits = {"random": "none", "gz1": f"run:{pre}", "imagenet": "imagenet"}
    chosen = []
    for name in args.inits:
        if name == "imagenet" and locate(torchvision_request("resnet18"), allow_download=False) is None:
            print("  (imagenet skipped: resnet18-f37072fd.pth is not in a local cache; `astrotl weights import` it)")
            continue
        chosen.append(name)

    results: dict[tuple[str, int], list[dict]] = {}
    for n in args.labels:
        for name in chosen:
            for seed in args.seeds:
                tag = f"{name}_n{n}_s{seed}"
                r = _run("tasks/phangs_clusters.yaml", common + [
                    f"name=le_{tag}", f"seed={seed}", f"data.n_train={n}", f"data.n_val={args.n_val}",
                    f"data.n_test={args.n_test}", f"data.size={args.size}", f"trainer.max_epochs={args.epochs}",
                    f"backbone.weights={inits[name]}", "trainer.early_stopping.patience=4"], regs)
                results.setdefault((name, n), []).append(r)
                m = r["metrics"]
                print(f"  {tag:22s} acc {m['test_accuracy']:.3f}  bal {m['test_balanced_accuracy']:.3f}  "
                      f"({m['wall_time_s']:.0f} s)", flush=True)

    import numpy as np

    def cell(name, n, key):
        vals = [r["metrics"][key] for r in results.get((name, n), [])]
        if not vals:
            return "-"
        return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else "")

    label = {"random": "random init", "gz1": "GZ1-pretrained (3->5 bands)", "imagenet": "ImageNet (3->5 bands)"}
    lines = ["| initialisation | " + " | ".join(f"{n} labels" for n in args.labels) + " |",
             "|---|" + "---|" * len(args.labels)]
    for name in chosen:
        lines.append(f"| {label[name]} | " + " | ".join(
            f"{cell(name, n, 'test_accuracy')} ({cell(name, n, 'test_balanced_accuracy')})" for n in args.labels) + " |")
    sha = next((r["weights"].get("sha256") for (nm, _), rs in results.items() if nm == "gz1" for r in rs), None)
    cmd = "python benchmarks/label_efficiency.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    foot = [
        "",
        f"Test accuracy (balanced accuracy in brackets) on {args.n_test} simulated PHANGS cutouts ({args.size} px, 5 bands), "
        f"ResNet-18 fine-tuned for up to {args.epochs} epochs (early stopping on validation loss, {args.n_val} validation "
        f"cutouts); mean over model seeds {args.seeds}. Chance: 0.25.",
        f"GZ1 backbone: `{pre}` pre-trained {pre_metrics.get('epochs_trained', '?')} epochs on "
        f"{pre_metrics.get('n_train', '?')} GZ1 images (GZ1 test balanced accuracy "
        f"{pre_metrics.get('test_balanced_accuracy', float('nan')):.3f}), sha256 `{(sha or '?')[:16]}...`.",
        f"Command: `{cmd.strip()}` ({(time.time() - t0) / 60:.1f} min, {os.cpu_count()} CPU cores).",
    ]
    table = "\n".join(lines + foot) + "\n"
    (out / "label_efficiency.md").write_text(table)
    if args.table:
        Path(args.table).write_text(table)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
