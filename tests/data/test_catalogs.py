"""astrotl.catalogs: ECSV/FITS/CSV/LEGUS/PHANGS readers, 0-based conversion, duplicate ids."""

from __future__ import annotations

import make_fits
import numpy as np
import pytest
from astropy.table import Table
from data_helpers import require_shared

from astrotl.catalogs import (check_unique_ids, guess_format, pixel_positions, read_catalog, read_legus,
                              require_columns, sky_positions)
from astrotl.errors import DataError


@pytest.mark.parametrize("suffix", [".ecsv", ".csv", ".fits"])
def test_generic_formats(tmp_path, suffix):
    path = make_fits.make_catalog(tmp_path / f"cat{suffix}")
    t = read_catalog(path)
    assert len(t) == 32 and {"id", "x", "y", "ra", "dec", "cls"} <= set(t.colnames)
    x, y = pixel_positions(t, "x", "y", 0)
    assert x[0] == pytest.approx(30.0) and y[0] == pytest.approx(36.0)


def test_one_based_conversion_happens_once(tmp_path):
    t = read_catalog(make_fits.make_catalog(tmp_path / "cat.csv", pixel_origin=1))
    x, y = pixel_positions(t, "x", "y", 1)
    assert x[0] == pytest.approx(30.0) and y[0] == pytest.approx(36.0)


def test_guess_format():
    assert guess_format("a/b.tab") == "legus"
    assert guess_format("b.FITS") == "fits"
    assert guess_format("b.fits.gz") == "fits"
    with pytest.raises(DataError, match="set data.format"):
        guess_format("b.xyz")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_catalog(tmp_path / "nope.ecsv")
    (tmp_path / "bad.ecsv").write_text("# %ECSV 1.0\n# ---\n# garbage: [\nid x\n1 2 3\n")
    with pytest.raises(DataError, match="cannot read catalogue"):
        read_catalog(tmp_path / "bad.ecsv")


def test_duplicate_ids():
    t = Table({"id": [1, 2, 2, 3, 3], "x": np.zeros(5)})
    with pytest.raises(DataError, match=r"2 duplicated id\(s\) in column 'id' \('2', '3'\)"):
        check_unique_ids(t, "id")
    check_unique_ids(Table({"id": [1, 2, 3]}), "id")


def test_require_columns_suggests():
    t = Table({"X_IMAGE": [1.0], "Y_IMAGE": [2.0]})
    with pytest.raises(DataError, match=r"no column 'x_image' \(data.x_col/y_col\) \(did you mean 'X_IMAGE'\?\)"):
        pixel_positions(t, "x_image", "y_image")
    with pytest.raises(DataError, match="columns are: X_IMAGE, Y_IMAGE"):
        require_columns(t, ["ra"])


def test_masked_positions_become_nan():
    t = Table({"x": np.ma.array([1.0, 2.0], mask=[False, True]), "y": [1.0, 2.0]})
    x, _ = pixel_positions(t, "x", "y")
    assert x[0] == 1.0 and np.isnan(x[1])


def test_sky_positions_sexagesimal_and_units():
    t = Table({"ra": ["10:00:00", "10:00:01"], "dec": ["+02:00:00", "+02:00:01"]})
    ra, dec = sky_positions(t, "ra", "dec")
    assert ra[0] == pytest.approx(150.0) and dec[1] == pytest.approx(2.0 + 1 / 3600)
    t = Table({"ra": [150.0], "dec": [2.0]})
    t["ra"].unit = t["dec"].unit = "arcsec"
    ra, _ = sky_positions(t, "ra", "dec")
    assert ra[0] == pytest.approx(150 / 3600)


@pytest.mark.parametrize("n_cols", [35, 39])
def test_legus_variants(tmp_path, n_cols):
    path = make_fits.make_legus_like(tmp_path / f"l{n_cols}.tab", n_cols)
    t = read_catalog(path)  # .tab -> legus
    assert t.meta["legus_columns"] == n_cols and t.meta["pixel_origin"] == 0
    assert len(t.colnames) == n_cols + 2 * 5  # + nondet_/offfov_ per band
    assert t["x"][0] == pytest.approx(9.0) and t["y"][0] == pytest.approx(19.0)  # 1-based -> 0-based
    band0, band1 = t.meta["bands"][0], t.meta["bands"][1]
    assert t[f"mag_{band0}"].mask[0] and t[f"nondet_{band0}"][0] and not t[f"offfov_{band0}"][0]
    assert t[f"mag_{band1}"].mask[1] and t[f"offfov_{band1}"][1]
    assert t["class_mode"].dtype.kind == "i"
    assert (n_cols == 35) == ("class_mean" in t.colnames)
    assert (n_cols == 39) == ("class_hybrid" in t.colnames)
    assert t.meta["bands"][2] == ("F435W" if n_cols == 35 else "F438W")


def test_legus_bad_tables(tmp_path):
    (tmp_path / "short.tab").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(DataError, match="has 3 columns; LEGUS multiband tables have 35 or 39"):
        read_legus(tmp_path / "short.tab")
    (tmp_path / "ragged.tab").write_text(" ".join(["1"] * 35) + "\n" + " ".join(["1"] * 34) + "\n")
    with pytest.raises(DataError, match="line 2 has 34 columns"):
        read_legus(tmp_path / "ragged.tab")
    (tmp_path / "text.tab").write_text(" ".join(["a"] * 35) + "\n")
    with pytest.raises(DataError, match="non-numeric"):
        read_legus(tmp_path / "text.tab")
    with pytest.raises(DataError, match="5 magnitude columns"):
        read_legus(make_fits.make_legus_like(tmp_path / "ok.tab", 35), bands=["A", "B"])


def test_phangs_columns(tmp_path):
    t = Table({"ID_PHANGS_CLUSTER": [1, 2], "PHANGS_X": [10.0, 20.0], "PHANGS_Y": [5.0, 6.0],
               "PHANGS_RA": [150.0, 150.1], "PHANGS_DEC": [2.0, 2.1], "PHANGS_CLUSTER_CLASS_HUMAN": [1, 3],
               "PHANGS_F555W_VEGA_TOT": [22.0, -9999.0], "PHANGS_F555W_VEGA_TOT_ERR": [0.1, -9999.0]})
    t.write(tmp_path / "phangs.fits")
    out = read_catalog(tmp_path / "phangs.fits")  # auto-detected by its PHANGS_X column
    assert {"id", "x", "y", "ra", "dec", "class_human", "mag_F555W", "magerr_F555W"} <= set(out.colnames)
    assert out["x"][0] == 10.0 and out["mag_F555W"].mask.tolist() == [False, True]


# -- the real LEGUS tables (../shared/data/legus_catalogs) ------------------------------------------

NGC1566 = "hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab"
NGC628 = "hlsp_legus_hst_acs-wfc3_ngc628-c_multiband_v1_padagb-mwext-avgapcor.tab"


def _counts(col) -> dict[int, int]:
    values, counts = np.unique(np.asarray(col), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v != 0}


@pytest.mark.shared
def test_legus_ngc1566_real():
    t = read_legus(require_shared("legus_catalogs", NGC1566))
    assert len(t) == 2752 and t.meta["legus_columns"] == 39
    assert _counts(t["class_mode"]) == {1: 258, 2: 214, 3: 261, 4: 328}      # README: 1,061 human-classified
    assert _counts(t["class_hybrid"]) == {1: 477, 2: 404, 3: 692, 4: 878}    # README: 2,451 hybrid
    assert t["id"][0] == 1 and t["x"][0] == pytest.approx(3005.141) and t["y"][0] == pytest.approx(5900.0)
    assert t["nondet_F275W"][0] and t["mag_F275W"].mask[0] and t["mag_F336W"][0] == pytest.approx(21.635)
    check_unique_ids(t, "id")


@pytest.mark.shared
def test_legus_ngc628_real():
    t = read_catalog(require_shared("legus_catalogs", NGC628), "legus")
    assert len(t) == 3080 and t.meta["legus_columns"] == 35
    assert _counts(t["class_mode"]) == {1: 334, 2: 357, 3: 326, 4: 542}      # README: 1,559 classified
    assert "F435W" in t.meta["bands"] and "class_mean" in t.colnames
    assert t["offfov_F275W"][0] and t["mag_F275W"].mask[0]                   # 66.666 = off the field
    assert t["x"][0] == pytest.approx(1830.0)
    check_unique_ids(t, "id")
