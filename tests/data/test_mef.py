"""astrotl.mef: one multi-extension FITS file per candidate (write, read, export, import)."""

from __future__ import annotations

import make_fits
import numpy as np
import pytest
from astropy.io import fits

from astrotl.datasets import CatalogCutoutDataset, ImageFolderDataset
from astrotl.errors import DataError
from astrotl.mef import export_cutouts, import_cutouts, read_mef, safe_filename, write_mef


def dataset(mosaic, cache_dir, **over):
    cfg = CatalogCutoutDataset.Config(images=mosaic["images"], catalog=mosaic["catalog"], hdu="SCI", size=10,
                                      label_col="cls", **over)
    return CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=cache_dir)


def test_write_read_roundtrip(tmp_path):
    img = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    img[0, 0, 0] = np.nan
    write_mef(tmp_path / "a.fits", img, ["F555W", "F814W"], meta={"ID": np.int64(7), "NANFRAC": np.float32(0.02),
                                                                "EDGE": np.bool_(True), "LONGKEYWORD": "x"})
    with fits.open(tmp_path / "a.fits") as h:
        assert [x.name for x in h] == ["PRIMARY", "F555W", "F814W"] and h[0].header["ID"] == 7
        assert h["F814W"].header["FILTER"] == "F814W"
    cut = read_mef(tmp_path / "a.fits")
    assert cut.bands == ("F555W", "F814W") and cut.meta["EDGE"] is True
    np.testing.assert_array_equal(cut.image, img)
    swapped = read_mef(tmp_path / "a.fits", ["F814W", "F555W"])
    np.testing.assert_array_equal(swapped.image, img[::-1])
    with pytest.raises(DataError, match=r"has no band 'F336W' \(it has \['F555W', 'F814W'\]\)"):
        read_mef(tmp_path / "a.fits", ["F336W"])
    with pytest.raises(DataError, match="does not match 3 bands"):
        write_mef(tmp_path / "b.fits", img, ["a", "b", "c"])


def test_read_broken_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_mef(tmp_path / "none.fits")
    with pytest.raises(DataError, match="not a readable FITS file"):
        read_mef(make_fits.garbage(tmp_path / "g.fits"))


def test_export_import(mosaic, cache_dir, tmp_path):
    ds = dataset(mosaic, cache_dir)
    out = tmp_path / "cuts"
    index = export_cutouts(ds, out)
    assert len(index) == 32 and all(index["written"]) and (out / "index.ecsv").is_file()
    assert sorted(p.name for p in out.glob("*.fits")) == sorted(f"{i}.fits" for i in ds.catalog()["id"])
    cut = read_mef(out / "10.fits")
    expected, flags, _ = ds.raw_cutout(0, with_wcs=True)
    np.testing.assert_array_equal(cut.image, expected)
    assert cut.meta["ID"] == 10 and cut.meta["X"] == pytest.approx(30.0) and cut.meta["CLASS"] == "1"
    assert cut.wcs[0] is not None and cut.meta["EDGE"] is False
    edge = read_mef(out / "40.fits")
    assert edge.meta["EDGE"] is True and edge.meta["NANFRAC"] > 0
    outside = read_mef(out / "70.fits")
    assert outside.meta["OUTSIDE"] is True and np.isnan(outside.image).all()
    # the cutout WCS points at the source's sky position
    ra, dec = cut.wcs[0].wcs_pix2world(4.5, 4.5, 0)  # stamp centre of an even 10 px stamp at integer x,y=30,36
    assert ra == pytest.approx(ds.catalog()["ra"][0], abs=2e-5)
    stack, table = import_cutouts(out)
    assert stack.shape == (32, 5, 10, 10) and "id" in table.colnames and "class" in table.colnames


def test_export_resumes_and_overwrites(mosaic, cache_dir, tmp_path):
    ds = dataset(mosaic, cache_dir)
    out = tmp_path / "cuts"
    export_cutouts(ds, out, limit=5)
    index = export_cutouts(ds, out)
    assert int(sum(index["written"])) == 27
    index = export_cutouts(ds, out, overwrite=True, pattern="cand_{index:04d}.fits")
    assert int(sum(index["written"])) == 32 and (out / "cand_0000.fits").is_file()


def test_exported_folder_is_an_image_folder(mosaic, cache_dir, tmp_path):
    out = tmp_path / "cuts"
    export_cutouts(dataset(mosaic, cache_dir), out)
    cfg = ImageFolderDataset.Config(root=str(out), labels="index.ecsv", file_col="file", label_col="class",
                                    bands=list(make_fits.BANDS), normalize={"scale": "none"})
    ds = ImageFolderDataset(cfg, split="predict", seed=0, cache_dir=cache_dir)
    assert len(ds) == 32 and ds[0]["image"].shape == (5, 10, 10) and ds.info().classes == ("1", "2", "3", "4")


def test_safe_filename():
    assert safe_filename("NGC 628/c:12") == "NGC_628_c_12"
    assert safe_filename("../x") == "_x"


@pytest.mark.parametrize("pattern, match", [
    ("../x_{id}.fits", "plain file name inside --out"), ("/tmp/x_{id}.fits", "plain file name inside --out"),
    ("sub/{id}.fits", "plain file name inside --out"), (".{id}.fits", "plain file name inside --out"),
    ("x.fits", "neither {id} nor {index}"), ("{name}.fits", "only {id} and {index}"), ("{id}.png", "must end in .fits"),
    ("{id:d}.fits", "only {id} and {index}"), ("{id", "only {id} and {index}")])
def test_export_pattern_must_stay_inside_out(mosaic, cache_dir, tmp_path, pattern, match):
    """Issue 8 group 4: the pattern cannot write outside --out (nor all rows to one file)."""
    from astrotl.errors import OutputError

    ds = dataset(mosaic, cache_dir)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(OutputError, match=match):
        export_cutouts(ds, tmp_path / "cuts", pattern=pattern)
    assert sorted(tmp_path.rglob("*")) == before


def test_export_refuses_colliding_names_and_a_file_as_out(mosaic, cache_dir, tmp_path):
    from astrotl.errors import OutputError

    ds = dataset(mosaic, cache_dir)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        export_cutouts(ds, tmp_path / "afile")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        export_cutouts(ds, tmp_path / "afile" / "sub")
    assert (tmp_path / "afile").read_text() == "x"


def test_export_removes_temp_files_of_an_interrupted_export(mosaic, cache_dir, tmp_path):
    ds = dataset(mosaic, cache_dir)
    out = tmp_path / "cuts"
    out.mkdir()
    stale = out / ".10.fits.abcd1234.tmp.fits"
    stale.write_bytes(b"half a FITS file")
    export_cutouts(ds, out, limit=2)
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == ["10.fits", "20.fits", "index.ecsv"]
