"""The Whitmore et al. (2021) evaluation: agreement fractions, averaged confusion, bins, colour boxes, QR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from testutils import shared_data_dir

from astrotl.errors import ConfigError, DataError
from astrotl_phangs.evaluation import (
    PAPER_BOXES,
    agreement_fractions,
    averaged_confusion_matrix,
    binned_agreement,
    box_counts,
    colour_box,
    colours,
    compare_classifications,
    evaluate_run,
    main_class_labels,
    match_catalogues,
    quality_ratio,
)

A = [1, 1, 1, 2, 2, 3, 4, 0]
B = ["1", "1", "2", "2", "1", "3", "3", "1"]  # last object: A did not classify it (class 0)


def test_agreement_fractions_by_hand():
    t = agreement_fractions(A, B)
    row = {r["class"]: r for r in t}
    assert t.meta["n"] == 7
    assert (row["1"]["n_a"], row["1"]["n_b"], row["1"]["n_both"]) == (3, 3, 2)
    assert row["1"]["agreement"] == pytest.approx(2 / 3)
    assert row["2"]["agreement"] == pytest.approx(0.5)
    assert row["3"]["frac_a"] == 1.0 and row["3"]["frac_b"] == 0.5 and row["3"]["agreement"] == pytest.approx(0.75)
    assert row["4"]["agreement"] == 0.0  # 0/1 for A; B has no class 4 (ratio left out)
    assert row["mean"]["agreement"] == pytest.approx((2 / 3 + 0.5 + 0.75 + 0) / 4)
    assert row["1+2"]["agreement"] == 1.0  # 1 <-> 2 swaps disappear in the standard sample
    # symmetric in A and B
    t2 = agreement_fractions(B, A)
    np.testing.assert_allclose(t2["agreement"], t["agreement"])


def test_subclasses_count_as_main_class():
    assert main_class_labels([4.9, "4.10", "1.0", 2, None, ""]).tolist() == ["4", "4", "1", "2", "", ""]
    t = agreement_fractions(["4.9", "4.1", "1"], [4, 4, 1])
    assert {r["class"]: r["agreement"] for r in t}["4"] == 1.0


def test_averaged_confusion_matrix():
    counts, avg = averaged_confusion_matrix(A, B)
    assert counts.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    # diagonal = agreement fractions
    np.testing.assert_allclose(np.diag(avg), agreement_fractions(A, B)["agreement"][:4])
    # off-diagonal: mean of "A's class 1 called 2 by B" (1/3) and "B's class 2 called 1 by A" (1/2)
    assert avg[0, 1] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert avg[3, 2] == pytest.approx((1 / 1 + 1 / 2) / 2)
    # swapping the classifiers transposes the matrix
    _, avg_t = averaged_confusion_matrix(B, A)
    np.testing.assert_allclose(avg_t, avg.T)


@pytest.mark.parametrize("counts, qr", [
    ([73, 85, 34, 45], 3.1),    # NGC 1566 Class 2 / Box 3
    ([52, 34, 46, 45], 1.1),    # NGC 1566 Class 1 / Box 1
    ([28, 27, 26, 28], 0.2),    # NGC 628 Class 1 / Box 1
    ([110, 127, 89, 101], 1.5),  # NGC 1566 Class 2 / Box 4
    ([78, 239, 257, 327], 7.0),  # NGC 1566 Class 3 / Box 4
])
def test_quality_ratio_reproduces_table2(counts, qr):
    assert round(quality_ratio(counts), 1) == qr


def test_colour_boxes():
    vi = np.array([1.2, 0.5, 0.5, 0.0, 0.15, 0.95, np.nan, 2.0])
    ub = np.array([0.0, 0.0, -0.8, -1.5, -0.8, 0.0, 0.0, 0.0])
    assert colour_box(ub, vi).tolist() == [1, 2, 3, 4, 0, 0, 0, 0]  # 0.15 outside box 3 (0.2 < V-I, Sect. 5)
    assert [b.number for b in PAPER_BOXES] == [1, 2, 3, 4]
    t = Table({"mag_F336W": [20.0, 99.999], "mag_F435W": [20.5, 21.0], "mag_F555W": [21.0, 21.0],
               "mag_F814W": [20.0, 66.666]})
    u_b, v_i = colours(t)  # ACS F435W used for B when F438W is absent
    assert u_b[0] == pytest.approx(-0.5) and v_i[0] == pytest.approx(1.0)
    assert np.isnan(u_b[1]) and np.isnan(v_i[1])  # LEGUS sentinels
    with pytest.raises(DataError, match=r"no column 'mag_F814W'"):
        colours(t[["mag_F336W", "mag_F435W", "mag_F555W"]])


def test_box_counts_qr_rules():
    rng = np.random.default_rng(0)
    n = 400
    ub, vi = rng.uniform(-1.8, 1.0, n), rng.uniform(-0.6, 1.5, n)
    lab = rng.choice(["1", "2", "3", "4"], n)
    lab2 = lab.copy()
    lab2[:40] = "3"
    rows, merit = box_counts({"a": (lab, ub, vi), "b": (lab2, ub, vi)}, min_count=12)
    r = {(x["class"], x["box"]): x for x in rows}
    assert r[("1", 2)]["n_a"] == int(((lab == "1") & (colour_box(ub, vi) == 2)).sum())
    for x in rows:
        enough = min(x["n_a"], x["n_b"]) >= 12
        assert np.isfinite(x["qr"]) == (enough and x["class"] != "4")  # Class 4 never gets a QR
    assert set(merit["classifier"]) == {"a", "b"}
    assert merit["n_rows"][0] == int(np.isfinite(np.asarray(rows["qr"], dtype=float)).sum())
    with pytest.raises(DataError, match="no classifications"):
        box_counts({})


def test_match_by_position_and_id():
    a = Table({"id": [1, 2, 3, 4], "x": [10.0, 20.0, 30.0, 100.0], "y": [10.0, 20.0, 30.0, 100.0]})
    b = Table({"id": [7, 8, 9, 10], "x": [10.5, 21.5, 30.2, 30.9], "y": [10.0, 20.0, 30.0, 30.0]})
    ia, ib, info = match_catalogues(a, b)
    assert info["method"] == "position"
    # 1<->7 (0.5 px), 2<->8 (1.5 px), 3<->9 (one-to-one: 10 is second nearest), 4 unmatched
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(0, 0), (1, 1), (2, 2)]
    ia, ib, info = match_catalogues(a, b, radius=1.0)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(0, 0), (2, 2)]
    c = Table({"id": [4, 3, 2, 1], "x": [0.0] * 4, "y": [0.0] * 4})
    ia, ib, info = match_catalogues(a, c)
    assert info["method"] == "id" and (a["id"][ia] == c["id"][ib]).all() and len(ia) == 4
    with pytest.raises(DataError, match="duplicate ids"):
        match_catalogues(a, Table({"id": [1, 1]}), by="id")
    with pytest.raises(DataError, match="empty catalogue"):
        match_catalogues(a, b[:0])
    with pytest.raises(ConfigError, match="match must be"):
        match_catalogues(a, b, by="sky")
    with pytest.raises(DataError, match=r"no column 'x', 'y'; columns present: id"):
        match_catalogues(a, Table({"id": [9]}), by="position")


def test_binned_agreement():
    rng = np.random.default_rng(1)
    n = 400
    a = rng.choice([1, 2, 3, 4], n)
    mag = rng.uniform(20, 24, n)
    b = np.where(rng.random(n) < np.interp(mag, [20, 24], [0.95, 0.4]), a, rng.choice([1, 2, 3, 4], n))
    t = binned_agreement(a, b, mag, bins=4)
    assert len(t) == 4 and abs(int(t["n"].min()) - int(t["n"].max())) <= 1  # equal-count bins
    assert t["agreement_mean"][0] > t["agreement_mean"][-1]  # worse for faint objects
    assert "agreement_1+2" in t.colnames
    crowd = rng.integers(0, 3, n)  # 3 distinct values <= 4 bins: one bin per value
    t = binned_agreement(a, b, crowd, bins=4)
    assert t["median"].tolist() == [0.0, 1.0, 2.0] and t.meta["binning"] == "one bin per value"
    with pytest.raises(ConfigError, match="increasing list"):
        binned_agreement(a, b, mag, bins=[22.0, 21.0])
    with pytest.raises(DataError, match="no finite values"):
        binned_agreement(a, b, np.full(n, np.nan))


def _fake_predictions(n=300, seed=0) -> Table:
    rng = np.random.default_rng(seed)
    true = rng.choice(["1", "2", "3", "4"], n)
    pred = np.where(rng.random(n) < 0.7, true, rng.choice(["1", "2", "3", "4"], n))
    vi, ub = rng.uniform(-0.6, 1.5, n), rng.uniform(-1.8, 1.0, n)
    v = rng.uniform(20, 24.5, n)
    return Table({"id": np.arange(n), "x": np.full(n, 8.0), "y": np.full(n, 8.0), "true_class": true,
                  "pred_class": pred, "mag_F336W": v + ub + 0.3, "mag_F438W": v + 0.3, "mag_F555W": v,
                  "mag_F814W": v - vi, "n_neighbours": rng.integers(0, 6, n),
                  "background": rng.lognormal(0, 1, n)})


def test_evaluate_run_on_a_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _fake_predictions().write(run / "predictions.ecsv", format="ascii.ecsv")
    m = evaluate_run(run)
    out = run / "phangs_eval"
    for name in ("agreement", "confusion_averaged", "confusion_counts", "agreement_vs_mag_F555W",
                 "agreement_vs_n_neighbours", "agreement_vs_background", "colour_boxes", "colour_merit"):
        assert (out / f"{name}.ecsv").is_file(), name
    for name in ("agreement", "confusion_averaged", "agreement_vs_mag_F555W", "colour_colour"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_compared"] == 300 and 0.5 < summary["agreement_1"] < 0.95
    assert m["agreement_1+2"] == pytest.approx(summary["agreement_1+2"])
    boxes = Table.read(out / "colour_boxes.ecsv")
    assert {"n_human", "n_model", "qr"} <= set(boxes.colnames)
    with pytest.raises(DataError, match="does not exist"):
        evaluate_run(tmp_path / "missing")
    with pytest.raises(DataError, match=r"no column 'label'; columns present: id, x"):
        evaluate_run(run, human_col="label")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fake_predictions()[:0].write(empty / "predictions.ecsv", format="ascii.ecsv")
    with pytest.raises(DataError, match="is empty"):
        evaluate_run(empty)


def test_compare_refuses_unusable_classes(tmp_path):
    t = _fake_predictions(20)
    t["junk"] = ["x"] * 20
    with pytest.raises(DataError, match=r"no matched object has a class in \['1', '2', '3', '4'\]"):
        compare_classifications(t, t, None, a_col="true_class", b_col="junk")
    with pytest.raises(DataError, match="no column 'crowd' to bin by"):
        compare_classifications(t, t, None, a_col="true_class", b_col="pred_class", bin_columns=["crowd"])


def test_cli_phangs_compare(tmp_path, cli):
    a = _fake_predictions(200, seed=2)
    a["x"] = np.arange(200) * 10.0
    b = a.copy()
    b["id"] = np.arange(200) + 5000  # a different catalogue: matched by position
    b["x"] = b["x"] + 0.7
    b["class"] = b["pred_class"]
    b.remove_columns(["true_class", "pred_class"])
    a.write(tmp_path / "a.ecsv")
    b.write(tmp_path / "b.ecsv")
    out = tmp_path / "cmp"
    code, stdout, err = cli("phangs-compare", tmp_path / "a.ecsv", tmp_path / "b.ecsv", "--out", out,
                            "--a-col", "true_class", "--mag-limit", "mag_F555W<24")
    assert code == 0, err
    assert "200 objects compared (position match, 200 matched of 200/200)" in stdout and "C1+2" in stdout
    assert (out / "colour_colour.png").is_file() and (out / "agreement_vs_n_neighbours.ecsv").is_file()
    # same file, two columns
    code, stdout, err = cli("phangs-compare", tmp_path / "a.ecsv", tmp_path / "a.ecsv", "--out", out, "--no-plots")
    assert code == 0 and stdout.startswith("true_class vs pred_class: 200 objects compared (same table")
    # errors: one line on stderr, exit 2
    for args, msg in [
        (("--a-col", "nope"), "catalogue A has no column 'nope'; columns present: id, x, y"),
        (("--mag-limit", "mag_F555W>3"), "--mag-limit must look like COLUMN<VALUE"),
        (("--b-col", "true_class"), "both class columns are 'true_class'"),
        (("--match", "id"), "no matched object has a class"),
    ]:
        second = tmp_path / ("b.ecsv" if args[0] == "--match" else "a.ecsv")
        code, _, err = cli("phangs-compare", tmp_path / "a.ecsv", second, "--out", out, *args)
        assert code == 2 and err.count("\n") == 1 and msg in err, (args, err)
    code, _, err = cli("phangs-compare", tmp_path / "a.ecsv", tmp_path / "zz.ecsv", "--out", out)
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_evaluate_run_on_real_tiny_run(tiny_task, cli):
    """End to end: a real tiny training run, then the paper's evaluation of its predictions."""
    code, stdout, err = cli("-q", "run", tiny_task("evalrun"))
    assert code == 0, err
    run_dir = tiny_task("evalrun").parent / "runs" / "evalrun"
    m = evaluate_run(run_dir)
    assert m["n_compared"] == 40 and 0.0 <= m["agreement_mean"] <= 1.0
    for name in ("agreement.ecsv", "confusion_averaged.png", "colour_colour.png", "agreement_vs_n_neighbours.ecsv",
                 "agreement_vs_background.ecsv", "agreement_vs_mag_F555W.ecsv", "summary.json"):
        assert (run_dir / "phangs_eval" / name).is_file(), name


# -- real LEGUS catalogues ---------------------------------------------------------------------------


def _legus(name: str, class_cols: dict[str, int], b_band: str) -> Table:
    """Tiny local reader of a LEGUS .tab table (1-based columns as in the LEGUS readme)."""
    root = shared_data_dir()
    path = root / "legus_catalogs" / name if root else None
    if path is None or not path.is_file():
        pytest.skip(f"LEGUS catalogue {name} not available (set ASTROTL_SHARED_DATA)")
    a = np.loadtxt(path)
    t = Table({"id": a[:, 0].astype(int), "x": a[:, 1] - 1, "y": a[:, 2] - 1})
    for band, col in (("F275W", 6), ("F336W", 8), (b_band, 10), ("F555W", 12), ("F814W", 14)):
        t[f"mag_{band}"] = a[:, col - 1]
    for key, col in class_cols.items():
        t[key] = a[:, col - 1]
    return t


@pytest.mark.shared
def test_legus_ngc628_mode_vs_mean(capsys):
    t = _legus("hlsp_legus_hst_acs-wfc3_ngc628-c_multiband_v1_padagb-mwext-avgapcor.tab",
               {"class_mode": 34, "class_mean": 35}, "F435W")
    t["class_mean_rounded"] = np.floor(np.asarray(t["class_mean"]) + 0.5).astype(int)  # nearest class, .5 up
    r = compare_classifications(t, t, None, a_col="class_mode", b_col="class_mean_rounded", plots=False)
    agree = {c: r[f"agreement_{c}"] for c in ("1", "2", "3", "4", "mean", "1+2")}
    with capsys.disabled():
        print(f"\nNGC 628 LEGUS mode vs rounded mean (N={r['n_compared']}): "
              + ", ".join(f"C{k} {v:.3f}" for k, v in agree.items()))
    assert r["n_compared"] == 1559  # 1:334 2:357 3:326 4:542 (README)
    # the mean of 3-4 classifiers agrees with their mode better than two independent studies do (Table 1)
    assert all(0.7 < agree[c] < 0.95 for c in ("1", "2", "3", "4"))
    assert agree["1+2"] > agree["1"] > agree["2"]


@pytest.mark.shared
def test_legus_ngc1566_human_vs_ml(tmp_path, capsys):
    t = _legus("hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab",
               {"class_human": 36, "class_ml": 37}, "F438W")
    # M_V < -7.8 at 17.7 Mpc is m_F555W < 23.44 (Whitmore et al. 2021, Sects. 5.5 and 5.6)
    r = compare_classifications(t, t, tmp_path, a_col="class_human", b_col="class_ml", a_name="human",
                                b_name="ML", mag_limit=("mag_F555W", 23.44))
    agree = {c: r[f"agreement_{c}"] for c in ("1", "2", "3", "4", "mean", "1+2")}
    boxes = r["tables"]["colour_boxes"]
    merit = r["tables"]["colour_merit"]
    with capsys.disabled():
        print(f"\nNGC 1566 LEGUS human (mode of 3) vs LEGUS ML (N={r['n_compared']}): "
              + ", ".join(f"C{k} {v:.3f}" for k, v in agree.items()))
        print("U-B vs V-I boxes (m_V < 23.44), human/ML counts and QR:")
        for row in boxes:
            print(f"  class {row['class']:>3s} box {row['box']}: {row['n_human']:4d}/{row['n_ML']:4d}  QR {row['qr']:.2f}")
        print("figure of merit (count / mean count):",
              ", ".join(f"{m['classifier']} {m['ratio_mean']:.2f}+-{m['ratio_std']:.2f}" for m in merit))
    assert r["n_compared"] > 1000
    # plausible ranges: the paper's human vs CNN NGC 1566 values are 0.78-0.82 / 0.44-0.53 / 0.49-0.55 /
    # 0.48-0.68 (C1+2 0.80-0.82); the older LEGUS ML agrees somewhat less
    assert 0.55 < agree["1"] < 0.9
    assert 0.2 < agree["2"] < 0.7
    assert 0.4 < agree["3"] < 0.75
    assert 0.3 < agree["4"] < 0.85
    assert agree["1+2"] > max(agree["1"], agree["2"]) and 0.6 < agree["1+2"] < 0.9
    b = {(row["class"], row["box"]): row for row in boxes}
    for who in ("n_human", "n_ML"):
        assert b[("3", 4)][who] > b[("3", 1)][who] + b[("3", 2)][who]  # associations are young (Sect. 5)
        assert b[("1", 2)][who] > b[("1", 4)][who]  # symmetric clusters are mostly not very young
    assert b[("1+2", 2)]["qr"] < 1.0  # both methods find the intermediate-age clusters alike
    assert (tmp_path / "colour_colour.png").is_file()
