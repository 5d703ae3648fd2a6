"""benchmarks/gz1_predictions.py: scoring, decision rules and last-epoch copies on small hand-made catalogues."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gz1_predictions as G  # noqa: E402


def _catalogue(path: Path, probs, truth, ensemble: bool = False) -> Path:
    t = Table()
    t["true_class" if not ensemble else "class"] = [str(c) for c in truth]
    for k in range(np.shape(probs)[1]):
        t[f"p_{k}_mean" if ensemble else f"p_{k}"] = np.asarray(probs)[:, k]
    t.write(path, overwrite=True)
    return path


def test_score_reads_single_models_and_ensembles(tmp_path, capsys):
    probs = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    one = _catalogue(tmp_path / "one.ecsv", probs, [0, 1, 2, 2])
    ens = _catalogue(tmp_path / "ens.ecsv", probs, [0, 1, 2, 2], ensemble=True)
    assert G.main(["score", str(one), str(ens)]) == 0
    out = capsys.readouterr().out.splitlines()
    # recalls 1, 1, 0.5: balanced 0.833; 3 of 4 right
    assert all("balanced accuracy 0.833, accuracy 0.750, recall per class 1.00 1.00 0.50" in line for line in out)
    # the pair 1, 2: three galaxies, all predicted as 1 or 2 (found 1.00); rows 1 and 3 right, row 2 (a 2 called 1)
    # wrong: 2 of 3
    assert G.main(["score", str(one), "--pair", "1", "2"]) == 0
    assert "; pair 1 2: found 1.00, right member among those found 0.67" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--pair class 7 is not among the classes \['0', '1', '2'\]"):
        G.main(["score", str(one), "--pair", "1", "7"])


def test_merged_pair_decision_and_offsets():
    lp = np.log(np.array([[0.40, 0.30, 0.30], [0.50, 0.45, 0.05], [0.2, 0.1, 0.7]]))
    # classes 1 and 2 merged: row 0 0.60 beats 0.40, and the tied members give the first (1); row 1 0.50 against
    # 0.50 keeps class 0 (the first maximum); row 2 the pair (0.8), its larger member 2
    assert G.pair_decision(lp, [1, 2]).tolist() == [1, 0, 2]
    assert lp.argmax(1).tolist() == [0, 0, 2]
    # the exact posterior of two unit Gaussians 2 apart under a 9:1 prior: the class-balanced fit removes the prior
    # (offsets differ by log 9) and keeps the scale (T = 1)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [9000, 1000])
    x = rng.normal(0, 1, y.size) + 2.0 * y
    logit = np.stack([np.log(0.9) - x ** 2 / 2, np.log(0.1) - (x - 2) ** 2 / 2], 1)
    lp = logit - np.logaddexp(logit[:, :1], logit[:, 1:])
    t, b = G.fit_offsets(lp, y)
    assert t == pytest.approx(1.0, abs=0.1) and b[1] - b[0] == pytest.approx(np.log(9), abs=0.3)
    assert G.balanced(y, (lp / t + b).argmax(1), 2) > G.balanced(y, lp.argmax(1), 2) + 0.05


def test_errors_are_one_line_and_nothing_is_overwritten(tmp_path, capsys):
    t = Table({"p_0": [0.5], "p_1": [0.5]})
    t.write(tmp_path / "unlabelled.ecsv")
    with pytest.raises(SystemExit, match="has no true_class"):
        G.main(["score", str(tmp_path / "unlabelled.ecsv")])
    with pytest.raises(SystemExit, match="has no checkpoints/last.ckpt"):
        G.main(["last", str(tmp_path), str(tmp_path / "copy")])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "model.safetensors").write_bytes(b"")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match="exists; give a new folder"):
        G.main(["last", str(run), str(tmp_path / "taken")])
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
