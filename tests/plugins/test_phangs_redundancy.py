"""Redundant candidates (class 4.9): within 5 px keep the brightest (Whitmore et al. 2021, Sect. 6.3.1)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from astropy.table import Table
from testutils import shared_data_dir

from astrotl.errors import ConfigError, DataError
from astrotl_phangs.redundancy import mark_redundant, redundant_mask


def _greedy(x, y, mag, radius):
    """Reference: the paper's procedure written as a plain loop, brightest first."""
    n = len(x)
    m = np.where(np.isfinite(mag) & (mag < 50), mag, np.inf)
    red = np.zeros(n, bool)
    kept = np.zeros(n, bool)
    by = np.full(n, -1)
    for i in np.lexsort((np.arange(n), m)):
        if red[i]:
            continue
        kept[i] = True
        near = (np.hypot(x - x[i], y - y[i]) <= radius) & ~kept & ~red
        by[near] = i
        red[near] = True
    return red, by


def test_fainter_neighbour_marked_49():
    t = Table({"id": [7, 8, 9], "x": [10.0, 13.0, 40.0], "y": [10.0, 13.0, 40.0],
               "mag_F555W": [22.0, 21.0, 23.0], "class": ["1", "3", "2"], "subclass": ["1", "3", "2"]})
    out = mark_redundant(t, subclass_col="subclass")
    assert out["redundant"].tolist() == [True, False, False]  # 4.24 px from a brighter one
    assert out["class"].tolist() == ["4.9", "3", "2"]
    assert out["subclass"].tolist() == ["4.9", "3", "2"]
    assert out["redundant_of"][0] == 8 and out["redundant_of"].mask.tolist() == [False, True, True]
    assert out.meta["redundancy"]["n_redundant"] == 1
    assert t["class"].tolist() == ["1", "3", "2"]  # input untouched


def test_integer_class_column_becomes_float():
    t = Table({"x": [0.0, 5.0], "y": [0.0, 0.0], "mag_F555W": [20.0, 21.0], "class": [1, 2]})
    out = mark_redundant(t, id_col=None)
    assert out["class"].tolist() == [1.0, 4.9]  # exactly 5 px counts as within
    assert out["redundant_of"].tolist() == [-1, 0]
    out = mark_redundant(t, radius=4.99, id_col=None)
    assert out["class"].tolist() == [1.0, 2.0]
    assert not out["redundant"].any()


def test_chain_redundant_does_not_suppress():
    # A (brightest) - B 4 px - C 4 px further: C is 8 px from A, so only B is redundant
    x = np.array([0.0, 4.0, 8.0])
    red, by = redundant_mask(x, np.zeros(3), [20.0, 21.0, 22.0])
    assert red.tolist() == [False, True, False] and by.tolist() == [-1, 0, -1]
    # if C is brighter than B it is kept and B is suppressed by the brightest kept neighbour (A)
    red, by = redundant_mask(x, np.zeros(3), [20.0, 22.0, 21.0])
    assert red.tolist() == [False, True, False] and by.tolist() == [-1, 0, -1]


def test_sentinels_and_ties_and_active():
    x = np.array([0.0, 1.0, 2.0])
    red, _ = redundant_mask(x, np.zeros(3), [99.999, 23.0, np.nan])  # 99.999 / NaN = faintest
    assert red.tolist() == [True, False, True]
    red, _ = redundant_mask(x[:2], np.zeros(2), [21.0, 21.0])  # equal magnitude: earlier row wins
    assert red.tolist() == [False, True]
    red, by = redundant_mask(x, np.zeros(3), [20.0, 21.0, 22.0], active=[False, True, True])
    assert red.tolist() == [False, False, True] and by.tolist() == [-1, -1, 1]


def test_matches_reference_loop_on_random_fields():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 400))
        x, y = rng.uniform(0, 120, n), rng.uniform(0, 120, n)
        mag = rng.normal(22, 1, n)
        mag[rng.random(n) < 0.05] = 99.999
        red, by = redundant_mask(x, y, mag, 5.0)
        ref_red, ref_by = _greedy(x, y, mag, 5.0)
        np.testing.assert_array_equal(red, ref_red)
        np.testing.assert_array_equal(by, ref_by)


def test_vectorised_speed():
    rng = np.random.default_rng(0)
    n = 100_000
    x, y = rng.uniform(0, 15000, n), rng.uniform(0, 15000, n)
    t0 = time.perf_counter()
    red, _ = redundant_mask(x, y, rng.normal(22, 1, n))
    assert time.perf_counter() - t0 < 5.0
    assert 0 < red.sum() < n


def test_bad_input():
    t = Table({"x": [0.0, 1.0], "y": [0.0, 1.0], "mag": [20.0, 21.0], "class": [1, 2]})
    with pytest.raises(DataError, match=r"no column 'mag_F555W'; columns present: x, y, mag, class"):
        mark_redundant(t)
    with pytest.raises(DataError, match=r"empty \(0 rows\)"):
        mark_redundant(t[:0], mag_col="mag")
    with pytest.raises(ConfigError, match="radius must be a positive number of pixels"):
        mark_redundant(t, mag_col="mag", radius=0)
    t["x"][0] = np.nan
    with pytest.raises(DataError, match="1 candidates have non-finite x/y"):
        mark_redundant(t, mag_col="mag")
    with pytest.raises(DataError, match="same length"):
        redundant_mask([0.0, 1.0], [0.0], [1.0, 2.0])


def _legus_628():
    root = shared_data_dir()
    path = root / "legus_catalogs" / "hlsp_legus_hst_acs-wfc3_ngc628-c_multiband_v1_padagb-mwext-avgapcor.tab" if root else None
    if path is None or not path.is_file():
        pytest.skip("LEGUS NGC 628 catalogue not available (set ASTROTL_SHARED_DATA)")
    a = np.loadtxt(path)
    return Table({"id": a[:, 0].astype(int), "x": a[:, 1] - 1, "y": a[:, 2] - 1, "mag_F555W": a[:, 11],
                  "class": a[:, 33].astype(int)})


@pytest.mark.shared
def test_legus_ngc628_redundancy(capsys):
    """LEGUS has no redundancy check (Sect. 6.3.1): some classified candidates lie within 5 px of a brighter one."""
    t = _legus_628()
    out = mark_redundant(t, active=np.asarray(t["class"]) > 0)
    n_cls = int((t["class"] > 0).sum())
    n_red = int(out["redundant"].sum())
    by_class = {c: int(((t["class"] == c) & out["redundant"]).sum()) for c in (1, 2, 3, 4)}
    with capsys.disabled():
        print(f"\nNGC 628 LEGUS: {n_red} of {n_cls} classified candidates redundant within 5 px; by class {by_class}")
    assert 0 < n_red < 0.3 * n_cls
    assert np.all(np.asarray(out["class"])[np.asarray(out["redundant"])] == 4.9)
