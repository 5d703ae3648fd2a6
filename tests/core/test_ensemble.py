"""astrotl.ensemble and ``astrotl ensemble``: per-candidate mean/median/mode/std/quality factor."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from astrotl.ensemble import class_codes, combine_predictions, ensemble_runs, read_predictions
from astrotl.errors import ConfigError, DataError, OutputError


def _pred(ids, classes, *, extra=True, probs=True) -> Table:
    t = Table({"id": np.asarray(ids)})
    if extra:
        t["x"] = np.asarray(ids, dtype=float) * 10
        t["true_class"] = ["1"] * len(ids)
    t["index"] = np.arange(len(ids))
    t["pred_class"] = [str(c) for c in classes]
    if probs:
        for c in ("1", "2", "3", "4"):
            t[f"p_{c}"] = [1.0 if str(k) == c else 0.0 for k in classes]
    return t


def _write_run(path, table):
    path.mkdir(parents=True)
    table.write(path / "predictions.ecsv", format="ascii.ecsv")
    return path


def test_statistics_match_hand_computation():
    # three candidates, five models; tables in different row orders
    votes = {10: [1, 1, 2, 1, 4], 11: [3, 3, 3, 3, 3], 12: [2, 1, 2, 4, 4]}
    tables = []
    rng = np.random.default_rng(0)
    for k in range(5):
        ids = rng.permutation(list(votes))
        tables.append(_pred(ids, [votes[i][k] for i in ids]))
    t = combine_predictions(tables, names=list("abcde"))
    assert t["id"].tolist() == [10, 11, 12]
    v = np.array([votes[i] for i in (10, 11, 12)], dtype=float)
    np.testing.assert_allclose(t["class_mean"], v.mean(axis=1))
    np.testing.assert_allclose(t["class_median"], np.median(v, axis=1))
    np.testing.assert_allclose(t["class_std"], v.std(axis=1))
    assert t["class_mode"].tolist() == ["1", "3", "2"]  # 12: 2 and 4 tie (2 votes each) -> smallest
    np.testing.assert_allclose(t["quality_factor"], [0.6, 1.0, 0.4])
    assert t["mode_tie"].tolist() == [False, False, True]
    assert t["n_models"].tolist() == [5, 5, 5]
    assert t["class_c"].tolist() == ["2", "3", "2"]
    # catalogue columns carried over, model columns not
    assert t["x"].tolist() == [100.0, 110.0, 120.0] and "true_class" in t.colnames
    assert "pred_class" not in t.colnames and "index" not in t.colnames and "p_1" not in t.colnames
    np.testing.assert_allclose(t["p_4_mean"], [0.2, 0.0, 0.4])


def test_tie_break_first_model():
    a, b, c, d = (_pred([1], [x]) for x in (4, 2, 2, 4))
    assert combine_predictions([a, b, c, d])["class_mode"][0] == "2"
    assert combine_predictions([a, b, c, d], tie_break="first")["class_mode"][0] == "4"
    assert combine_predictions([b, a, c, d], tie_break="first")["class_mode"][0] == "2"


def test_numeric_input_stays_numeric_and_twenty_models():
    # the paper's setup: 10 ResNet18 + 10 VGG19 models
    rng = np.random.default_rng(1)
    n = 50
    truth = rng.integers(1, 5, n)
    tables = []
    for _ in range(20):
        cls = np.where(rng.random(n) < 0.8, truth, rng.integers(1, 5, n))
        tables.append(Table({"id": np.arange(n), "pred_class": cls}))
    t = combine_predictions(tables)
    assert t["class_mode"].dtype.kind == "f"
    assert t["class_m00"].dtype.kind == "f"
    assert np.mean(t["class_mode"] == truth) > 0.95
    assert np.all((t["quality_factor"] >= 0.25) & (t["quality_factor"] <= 1))
    np.testing.assert_allclose(t["quality_factor"] * 20, t["n_mode"])


def test_subclass_codes_stay_distinct():
    codes, num = class_codes(["4.1", "4.10", 4.9, 1.0, "2"])
    assert codes.tolist() == ["4.1", "4.10", "4.9", "1", "2"]
    t = combine_predictions([_pred([1], ["4.10"]), _pred([1], ["4.10"]), _pred([1], ["4.1"])], numeric_stats=False)
    assert t["class_mode"][0] == "4.10"
    assert t["quality_factor"][0] == pytest.approx(2 / 3)


def test_mode_only_for_non_numeric_classes():
    tables = [Table({"id": [1, 2], "pred_class": c}) for c in (["star", "cluster"], ["star", "star"], ["pair", "star"])]
    t = combine_predictions(tables, numeric_stats=False)
    assert t["class_mode"].tolist() == ["star", "star"]
    assert "class_mean" not in t.colnames
    with pytest.raises(DataError, match=r"non-numeric codes .*mean/median/std need numbers"):
        combine_predictions(tables)


def test_mismatched_ids_error_or_intersection():
    a = _pred([1, 2, 3], [1, 1, 1])
    b = _pred([2, 3, 4, 5], [2, 2, 2, 2])
    with pytest.raises(DataError, match=r"different candidates \(m00: 3, m01: 4; 2 ids in all, 5 in any\)"):
        combine_predictions([a, b])
    t = combine_predictions([a, b], on_mismatch="intersection")
    assert t["id"].tolist() == [2, 3]
    assert t.meta["ensemble"]["n_dropped"] == 3
    with pytest.raises(DataError, match="no candidate id in common"):
        combine_predictions([_pred([1], [1]), _pred([2], [1])], on_mismatch="intersection")


def test_same_ids_but_different_objects():
    a = _pred([1, 2, 3], [1, 1, 1])
    b = _pred([1, 2, 3], [1, 1, 1])
    b["x"][2] += 5.0  # e.g. runs made with different data configs reuse ids 0..N-1
    with pytest.raises(DataError, match=r"'m00' and 'm01' give different 'x' for 1 of 3 ids"):
        combine_predictions([a, b])


def test_bad_inputs():
    good = _pred([1, 2], [1, 2])
    with pytest.raises(DataError, match=r"'m01' have 1 duplicate ids in 'id'"):
        combine_predictions([good, _pred([1, 1], [1, 2])])
    with pytest.raises(DataError, match=r"no column 'pred_class'; columns present: id, x"):
        combine_predictions([good, Table({"id": [1, 2], "x": [0.0, 1.0]})])
    with pytest.raises(DataError, match=r"empty \(0 rows\)"):
        combine_predictions([good, good[:0]])
    with pytest.raises(DataError, match="no prediction tables"):
        combine_predictions([])
    missing = _pred([1, 2], [1, 2])
    missing["pred_class"][1] = ""
    with pytest.raises(DataError, match="1 missing values in 'pred_class'"):
        combine_predictions([good, missing])
    with pytest.raises(ConfigError, match="tie_break must be one of"):
        combine_predictions([good], tie_break="random")
    with pytest.raises(ConfigError, match="on_mismatch must be"):
        combine_predictions([good], on_mismatch="union")
    with pytest.raises(ConfigError, match="names must be 2 distinct strings"):
        combine_predictions([good, good], names=["a", "a"])


def test_ensemble_runs_reads_run_dirs_and_writes(tmp_path):
    d1 = _write_run(tmp_path / "a" / "phangs_tiny", _pred([1, 2, 3], [1, 2, 3]))
    d2 = _write_run(tmp_path / "b" / "phangs_tiny", _pred([3, 2, 1], [3, 2, 2]))
    out = tmp_path / "ens" / "ensemble.ecsv"
    t = ensemble_runs([d1, d2], out)
    assert {"class_a_phangs_tiny", "class_b_phangs_tiny"} <= set(t.colnames)  # same run names -> parent added
    back = Table.read(out)
    assert back["class_mode"].tolist() == ["1", "2", "3"]
    assert [p.name for p in out.parent.iterdir()] == ["ensemble.ecsv"]  # atomic: no temp files left
    with pytest.raises(OutputError, match="already exists"):
        ensemble_runs([d1, d2], out)
    ensemble_runs([d1, d2], out, overwrite=True)
    with pytest.raises(OutputError, match="is a directory"):
        ensemble_runs([d1, d2], out.parent)
    with pytest.raises(DataError, match="has no predictions.ecsv"):
        read_predictions(tmp_path / "a")
    with pytest.raises(DataError, match="does not exist"):
        read_predictions(tmp_path / "nope")
    bad = tmp_path / "bad.ecsv"
    bad.write_text("# %ECSV 1.0\n# ---\n# garbage: [\n")
    with pytest.raises(DataError, match="cannot read .*bad.ecsv as a table"):
        read_predictions(bad)


def test_cli_ensemble(tmp_path, cli):
    d1 = _write_run(tmp_path / "r1", _pred([1, 2, 3], [1, 2, 3]))
    d2 = _write_run(tmp_path / "r2", _pred([1, 2, 3], [1, 2, 4]))
    d3 = _write_run(tmp_path / "r3", _pred([1, 2, 4], [1, 1, 1]))
    out = tmp_path / "e.ecsv"
    code, stdout, err = cli("ensemble", d1, d2, "--out", out)
    assert code == 0, err
    assert "3 candidates, 2 models" in stdout and "1 mode ties" in stdout
    assert Table.read(out)["class_r2"].tolist() == ["1", "2", "4"]
    before = out.read_bytes()
    code, stdout, err = cli("ensemble", d1, d3, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == before  # issue 8 group 3: never replaced without --overwrite
    code, stdout, err = cli("ensemble", d1, d3, "--out", out, "--overwrite")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("astrotl: error: ensemble members hold different candidates (r1: 3, r3: 3")
    code, stdout, err = cli("ensemble", d1, d3, "--out", out, "--intersection", "--names", "a,b", "--overwrite")
    assert code == 0 and "2 candidates not in every run dropped" in stdout
    assert Table.read(out).colnames.count("class_a") == 1
    code, _, err = cli("ensemble", d1, d2, "--out", out, "--names", "a", "--overwrite")
    assert code == 2 and "--names lists 1 names for 2 runs" in err and err.count("\n") == 1
    code, _, err = cli("ensemble", d1, tmp_path / "missing", "--out", out, "--overwrite")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("ensemble", d1, d2, "--out", out, "--class-col", "nope", "--overwrite")
    assert code == 2 and "no column 'nope'; columns present: id, x, true_class, index, pred_class" in err
