"""benchmarks/gz1_reference.py --table: the side-by-side table, paired differences and validation scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gz1_reference as R  # noqa: E402


def _result(seed: int, bal: float, acc: float, **extra) -> dict:
    return {"seed": seed, "balanced_accuracy": bal, "accuracy": acc, "recall": [bal] * 2, **extra}


def test_table_pairs_seeds_across_files_and_reports_validation(tmp_path, capsys):
    run = tmp_path / "run_s1"
    run.mkdir()
    # a file written before the validation score was recorded: read from the run folder's metrics.json
    (run / "metrics.json").write_text(json.dumps({"metrics": {"best_val_balanced_acc": 0.60}}))
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"results": {"reference": [_result(0, 0.50, 0.6), _result(1, 0.60, 0.7)],
                                         "astrotl": [_result(0, 0.55, 0.6, val_balanced_accuracy=0.50)]}}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"results": {"reference": [], "astrotl": [_result(1, 0.58, 0.7, run=str(run))]}}))
    assert R.main(["--table", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "0 | 0.500 (0.600) | 0.550 (0.600) | +0.050" in out
    assert "1 | 0.600 (0.700) | 0.580 (0.700) | -0.020" in out
    assert "paired difference (astrotl - reference) 0.015 +- 0.049; astrotl higher on 1 of 2 seeds" in out
    assert "validation balanced accuracy of the kept checkpoint 0.550 +- 0.071 (seeds [0, 1])\n" in out  # 2 seeds: no r
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"results": {"astrotl": [_result(2, 0.50, 0.6, val_balanced_accuracy=0.70)]}}))
    assert R.main(["--table", str(a), str(b), str(c)]) == 0  # validation 0.5, 0.6, 0.7 against test 0.55, 0.58, 0.50
    assert "(seeds [0, 1, 2]); correlation with the test score over seeds -0.62" in capsys.readouterr().out
    # the run folder gone and nothing in the JSON: no validation line rather than a made-up one
    (run / "metrics.json").unlink()
    b.write_text(json.dumps({"results": {"astrotl": [_result(1, 0.58, 0.7, run=str(run))]}}))
    assert R.main(["--table", str(b)]) == 0
    assert "validation" not in capsys.readouterr().out


def test_astrotl_side_reads_the_last_stage_of_a_multi_stage_task(tmp_path):
    import yaml
    from testutils import TINY

    cfg = dict(TINY, trainer={**TINY["trainer"], "monitor": "val_balanced_acc"},
               stages=[{"name": "first", "data": {"n_train": 32}},
                       {"name": "second", "backbone": {"weights": "stage:first"}}])
    task = tmp_path / "two.yaml"
    task.write_text(yaml.safe_dump(cfg))
    r = R.astrotl_run(str(task), [], seed=0, out_dir=tmp_path / "runs", threads=1)
    final = Path(r["run"]) / "stages" / "second"
    metrics = json.loads((final / "metrics.json").read_text())["metrics"]
    assert r["balanced_accuracy"] == metrics["test_balanced_accuracy"]
    assert r["val_balanced_accuracy"] == metrics["best_val_balanced_acc"]
    assert len(r["recall"]) == 4  # the four PHANGS classes, from the last stage's tables/per_class.ecsv
