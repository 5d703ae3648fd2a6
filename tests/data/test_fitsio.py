"""astrotl.fitsio: opening band mosaics (HDU by name/index, WCS, memmap), cutouts and their flags."""

from __future__ import annotations

import pickle

import make_fits
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D

from astrotl.errors import DataError
from astrotl.fitsio import BandMosaic, MosaicStack, geometry_flags


def test_open_by_name_index_and_auto(mosaic):
    path = mosaic["images"]["F555W"]
    for hdu in ("SCI", "sci", 1, "1", None):
        b = BandMosaic.open(path, band="F555W", hdu=hdu)
        assert b.hdu == 1 and b.shape == (120, 100)
        assert b.wcs is not None and b.wcs.has_celestial
        b.close()


def test_data_is_memory_mapped(mosaic):
    b = BandMosaic.open(mosaic["images"]["F555W"], band="F555W", hdu="SCI")
    data = b.data
    base = data
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) or isinstance(base, __import__("mmap").mmap)
    b.close()


def test_pickle_drops_and_reopens_the_file(mosaic):
    b = BandMosaic.open(mosaic["images"]["F555W"], band="F555W", hdu="SCI")
    expected = np.array(b.data[10:12, 10:12])
    clone = pickle.loads(pickle.dumps(b))
    assert clone._hdul is None
    np.testing.assert_array_equal(clone.data[10:12, 10:12], expected)
    b.close(), clone.close()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"band F555W: FITS file .* does not exist"):
        BandMosaic.open(tmp_path / "nope.fits", band="F555W")


def test_not_fits(tmp_path):
    bad = make_fits.garbage(tmp_path / "bad.fits")
    with pytest.raises(DataError, match="not a readable FITS file"):
        BandMosaic.open(bad, band="F336W")


def test_truncated_data(mosaic, tmp_path):
    bad = make_fits.truncate(mosaic["images"]["F555W"], tmp_path / "trunc.fits", 0.6)
    with pytest.raises(DataError, match="truncated"):
        BandMosaic.open(bad, band="F555W", hdu="SCI")


def test_truncated_header(mosaic, tmp_path):
    bad = make_fits.truncate(mosaic["images"]["F555W"], tmp_path / "trunc.fits", 0.02)
    with pytest.raises(DataError, match="F555W"):
        BandMosaic.open(bad, band="F555W", hdu="SCI")


def test_hdu_missing_with_suggestion(mosaic):
    with pytest.raises(DataError, match=r"no HDU named 'SCII' \(did you mean 'SCI'\?\)"):
        BandMosaic.open(mosaic["images"]["F555W"], band="F555W", hdu="SCII")
    with pytest.raises(DataError, match="has no HDU 7"):
        BandMosaic.open(mosaic["images"]["F555W"], band="F555W", hdu=7)


def test_hdu_without_image(mosaic):
    with pytest.raises(DataError, match="not a 2-D image"):
        BandMosaic.open(mosaic["images"]["F555W"], band="F555W", hdu=0)


def test_cube_rejected_and_degenerate_axis_squeezed(tmp_path):
    fits.PrimaryHDU(np.zeros((3, 10, 10), np.float32)).writeto(tmp_path / "cube.fits")
    with pytest.raises(DataError, match="3-D array"):
        BandMosaic.open(tmp_path / "cube.fits", band="X", hdu=0)
    fits.PrimaryHDU(np.ones((1, 10, 12), np.float32)).writeto(tmp_path / "flat.fits")
    b = BandMosaic.open(tmp_path / "flat.fits", band="X")
    assert b.shape == (10, 12) and b.data.shape == (10, 12)


def test_no_wcs_is_an_error_only_for_sky(tmp_path):
    images = {b: str(p) for b, p in make_fits.make_mosaic(tmp_path, bands=("V",), with_wcs=False).items()}
    MosaicStack.open(images, "SCI").close()
    with pytest.raises(DataError, match="no celestial WCS, needed for coords: sky"):
        MosaicStack.open(images, "SCI", need_wcs=True)


def test_different_grids(tmp_path):
    a = make_fits.make_mosaic(tmp_path / "a", bands=("V",), ny=50, nx=60)
    b = make_fits.make_mosaic(tmp_path / "b", bands=("I",), ny=50, nx=61)
    with pytest.raises(DataError, match="different pixel grids"):
        MosaicStack.open({"V": a["V"], "I": b["I"]}, "SCI")


def test_hdu_map_names_unknown_band(mosaic):
    with pytest.raises(DataError, match=r"data.hdu names band\(s\) \['F999W'\]"):
        MosaicStack.open(mosaic["images"], {"F999W": "SCI"})


def test_cutout_matches_slicing_and_flags(mosaic):
    stack = MosaicStack.open(mosaic["images"], "SCI")
    stamp, flags = stack.cutout(30.0, 36.0, 9)
    assert stamp.shape == (5, 9, 9) and stamp.dtype == np.float32
    np.testing.assert_array_equal(stamp[3], stack.bands[3].data[32:41, 26:35])
    assert not flags.edge and not flags.outside and flags.nan_fraction == 0 and not flags.missing_band
    # edge: the stamp runs off the left side; the missing pixels are NaN
    stamp, flags = stack.cutout(2.0, 60.0, 9)
    assert flags.edge and not flags.outside and 0 < flags.nan_fraction < 1
    assert np.isnan(stamp[:, :, 0]).all() and np.isfinite(stamp[:, :, -1]).all()
    # all-NaN corner: every band missing
    stamp, flags = stack.cutout(95.0, 114.0, 4)
    assert flags.all_nan and flags.missing_bands == stack.names
    # outside: flagged, not raised
    stamp, flags = stack.cutout(500.0, 60.0, 9)
    assert flags.outside and flags.edge and np.isnan(stamp).all()
    stamp, flags = stack.cutout(np.nan, 60.0, 9)
    assert flags.outside
    stack.close()


def test_cutout_with_wcs(mosaic):
    stack = MosaicStack.open(mosaic["images"], "SCI")
    stamp, flags, wcs = stack.cutout(30.0, 36.0, 9, with_wcs=True)
    ra0, dec0 = stack.bands[0].wcs.wcs_pix2world(30.0, 36.0, 0)
    ra1, dec1 = wcs[0].wcs_pix2world(4.0, 4.0, 0)
    assert abs(ra0 - ra1) < 1e-9 and abs(dec0 - dec1) < 1e-9


def test_geometry_flags_agree_with_cutout2d():
    rng = np.random.default_rng(0)
    shape = (50, 40)
    x = rng.uniform(-5, 45, 400)
    y = rng.uniform(-5, 55, 400)
    data = np.zeros(shape)
    for size in (7, 8):
        outside, edge = geometry_flags(x, y, shape, size)
        for i in range(len(x)):
            inside = -0.5 <= x[i] < shape[1] - 0.5 and -0.5 <= y[i] < shape[0] - 0.5
            assert outside[i] == (not inside)
            if not inside:
                continue
            cut = Cutout2D(data, (x[i], y[i]), size, mode="partial", fill_value=np.nan)
            sl = cut.slices_original
            full = (sl[0].stop - sl[0].start == size) and (sl[1].stop - sl[1].start == size)
            assert edge[i] == (not full), (x[i], y[i], size)
