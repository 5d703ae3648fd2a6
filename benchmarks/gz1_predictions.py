"""Score and re-decide the prediction catalogues of GZ1 runs (the offline rows of docs/recipes.md).

Three jobs, all on files that ``astrotl run`` / ``astrotl predict`` wrote::

    # balanced accuracy, accuracy and per-class recall of prediction catalogues (one model: p_<class> and
    # true_class; a one-pass ensemble of `astrotl predict RUN1 RUN2 ...`: p_<class>_mean and the data's label column)
    python benchmarks/gz1_predictions.py score runs/s0/predictions.ecsv ens.ecsv
    python benchmarks/gz1_predictions.py score runs/s0/predictions.ecsv --pair 1 2   # + the chirality among spirals found

    # decision rules fitted on a run's validation predictions, applied to its test predictions:
    # per-class logit offsets + temperature (class-balanced NLL; with an L2 penalty; with the pair's offsets tied)
    # and deciding on a merged class pair (clockwise + anticlockwise), then the larger of the two
    python benchmarks/gz1_predictions.py decide --val val_s0.ecsv --test runs/s0/predictions.ecsv --pair 1 2

    # a copy of a finished run whose model is the last epoch's weights (checkpoints/last.ckpt: with trainer.ema, the
    # averaged ones) instead of the best validation epoch's, for `astrotl predict COPY --split test --out last.ecsv`
    python benchmarks/gz1_predictions.py last runs/s0 /tmp/s0_last

Without TTA columns the probabilities are taken as they are; log-probabilities stand in for logits (a softmax is
unchanged by a constant per row), so the fitted offsets act on what ``predict`` wrote.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch


def load(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(log-probabilities [N, K], true class index [N], classes)`` of a prediction catalogue."""
    from astropy.table import Table

    t = Table.read(path)
    mean = [c for c in t.colnames if c.startswith("p_") and c.endswith("_mean")]
    cols = mean or [c for c in t.colnames if c.startswith("p_")]
    classes = [c[2:-5] if mean else c[2:] for c in cols]
    truth = "true_class" if "true_class" in t.colnames else "class"
    if truth not in t.colnames:
        sys.exit(f"gz1_predictions.py: error: {path} has no true_class (or class) column; score labelled predictions")
    keep = np.array([str(c) in classes for c in t[truth]])
    p = np.stack([np.asarray(t[c], float) for c in cols], 1)[keep]
    y = np.array([classes.index(str(c)) for c in t[truth][keep]])
    return np.log(np.clip(p, 1e-12, 1.0)), y, classes


def recalls(y: np.ndarray, pred: np.ndarray, k: int) -> list[float]:
    return [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]


def balanced(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    return float(np.mean(recalls(y, pred, k)))


def fit_offsets(lp: np.ndarray, y: np.ndarray, l2: float = 0.0, tie: list[int] | None = None) -> tuple[float, np.ndarray]:
    """Temperature and per-class offsets minimising the class-balanced NLL of ``lp / T + b`` (L-BFGS)."""
    k = lp.shape[1]
    z = torch.tensor(lp, dtype=torch.float64)
    yt = torch.tensor(y)
    w = 1.0 / torch.bincount(yt, minlength=k).double().clamp_min(1)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    raw = torch.zeros(k, dtype=torch.float64, requires_grad=True)

    def offsets() -> torch.Tensor:
        if not tie:
            return raw
        shared = raw[tie].mean()
        return torch.stack([shared if i in tie else raw[i] for i in range(k)])

    opt = torch.optim.LBFGS([log_t, raw], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(z / log_t.exp() + offsets(), yt, reduction="none")
        loss = (nll * w[yt]).sum() / w[yt].sum() + l2 * (raw ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp()), offsets().detach().numpy()


def pair_decision(lp: np.ndarray, pair: list[int]) -> np.ndarray:
    """Argmax with the pair's probabilities summed into one class; a pair win goes to the larger of the two."""
    a, b = pair
    merged = np.logaddexp(lp[:, a], lp[:, b])
    z = lp.copy()
    z[:, a], z[:, b] = merged, -np.inf
    pred = z.argmax(1)
    return np.where(pred == a, np.where(lp[:, a] >= lp[:, b], a, b), pred)


def pair_found(y: np.ndarray, pred: np.ndarray, pair: list[int]) -> tuple[float, float]:
    """Of the galaxies of a class pair (GZ1: the two chiralities): the fraction predicted as either member, and the
    fraction of those given the right member (0.5: the pair is told apart at chance)."""
    members = np.isin(y, pair)
    found = members & np.isin(pred, pair)
    return float(found.sum() / max(1, members.sum())), float((pred[found] == y[found]).sum() / max(1, found.sum()))


def cmd_score(args) -> int:
    for path in args.files:
        lp, y, classes = load(path)
        pred = lp.argmax(1)
        k = len(classes)
        line = (f"{path}: balanced accuracy {balanced(y, pred, k):.3f}, accuracy {float((pred == y).mean()):.3f}, "
                f"recall per class {' '.join(f'{r:.2f}' for r in recalls(y, pred, k))} ({len(y)} labelled)")
        if args.pair:
            missing = [c for c in args.pair if c not in classes]
            if missing:
                sys.exit(f"gz1_predictions.py: error: --pair class {missing[0]} is not among the classes {classes}")
            found, right = pair_found(y, pred, [classes.index(c) for c in args.pair])
            line += f"; pair {' '.join(args.pair)}: found {found:.2f}, right member among those found {right:.2f}"
        print(line)
    return 0


def cmd_decide(args) -> int:
    lv, yv, cv = load(args.val)
    lt, yt, ct = load(args.test)
    if cv != ct:
        sys.exit(f"gz1_predictions.py: error: the validation classes {cv} differ from the test classes {ct}")
    k = len(ct)
    pair = [ct.index(c) for c in args.pair] if args.pair else None
    print(f"argmax: validation {balanced(yv, lv.argmax(1), k):.3f}, test {balanced(yt, lt.argmax(1), k):.3f}")
    for name, kw in (("offsets", {}), ("offsets, L2 0.01", {"l2": 0.01}), ("offsets, pair tied", {"tie": pair})):
        if name.endswith("tied") and not pair:
            continue
        t, b = fit_offsets(lv, yv, **kw)
        print(f"{name}: T {t:.2f}, offsets {' '.join(f'{x:+.2f}' for x in b - b.mean())}; validation "
              f"{balanced(yv, (lv / t + b).argmax(1), k):.3f}, test {balanced(yt, (lt / t + b).argmax(1), k):.3f}")
    if pair:
        pred = pair_decision(lt, pair)
        found, right = pair_found(yt, pred, pair)
        print(f"merged pair {args.pair}: test {balanced(yt, pred, k):.3f}; pair members found {found:.2f} (argmax "
              f"{pair_found(yt, lt.argmax(1), pair)[0]:.2f}), right member among those found {right:.2f}")
    return 0


def cmd_last(args) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src, dst = Path(args.run), Path(args.out)
    ckpt = src / "checkpoints" / "last.ckpt"
    if not ckpt.is_file() or not (src / "model.safetensors").is_file():
        sys.exit(f"gz1_predictions.py: error: {src} has no checkpoints/last.ckpt and model.safetensors; give a finished run")
    if dst.exists():
        sys.exit(f"gz1_predictions.py: error: {dst} exists; give a new folder (nothing is overwritten)")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = {k[len("model."):]: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    best = load_file(str(src / "model.safetensors"))
    with safe_open(str(src / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    missing = sorted(set(best) - set(state))
    if missing:
        sys.exit(f"gz1_predictions.py: error: last.ckpt lacks {missing[:3]}; it is not this run's model")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "backbone.safetensors"))
    # every tensor from the checkpoint, the temperature buffer too (1 during training: the fitted temperature
    # belongs to the best epoch's weights)
    save_file({k: state[k].contiguous() for k in best}, str(dst / "model.safetensors"), metadata=meta)
    print(f"{dst}: {src.name} with the weights of checkpoints/last.ckpt (epoch {int(saved['epoch']) + 1})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="balanced accuracy of prediction catalogues")
    s.add_argument("files", nargs="+")
    s.add_argument("--pair", nargs=2, metavar="CLASS", help="also: how many of this class pair are found, and how many of "
                   "those get the right member (GZ1: 1 2, the two chiralities)")
    d = sub.add_parser("decide", help="decision rules fitted on validation predictions, scored on test predictions")
    d.add_argument("--val", required=True)
    d.add_argument("--test", required=True)
    d.add_argument("--pair", nargs=2, metavar="CLASS", help="two classes the model cannot tell apart (GZ1: 1 2)")
    last = sub.add_parser("last", help="copy a run with its last epoch's weights as the model")
    last.add_argument("run")
    last.add_argument("out")
    args = p.parse_args(argv)
    return {"score": cmd_score, "decide": cmd_decide, "last": cmd_last}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
