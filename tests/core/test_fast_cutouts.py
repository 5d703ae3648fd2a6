"""The vectorised cutting path (MosaicStack.cutouts, catalog_cutouts.__getitems__) gives exactly the stamps of
astropy's Cutout2D: interior, edge, partial overlap, NaN footprints, even and odd sizes, fractional positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.table import Table
from astropy.wcs import WCS

from astrotl.fitsio import MosaicStack

SHAPE = (61, 48)  # ny, nx: not square, odd and even
BANDS = ("B1", "B2", "B3")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three bands on one grid with a WCS; B2 has a NaN footprint edge and an inf pixel, B3 a NaN hole."""
    d = tmp_path_factory.mktemp("fast_cut")
    rng = np.random.default_rng(7)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [24.5, 31.0]
    w.wcs.cdelt = [-1e-5, 1e-5]
    out = {}
    for b, band in enumerate(BANDS):
        data = rng.normal(10 * b, 1, SHAPE).astype(np.float32)
        if band == "B2":
            data[:, 40:] = np.nan  # off the drizzle footprint
            data[5, 5] = np.inf
        if band == "B3":
            data[25:35, 10:20] = np.nan
        path = d / f"{band}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=w.to_header(), name="SCI")]).writeto(path)
        out[band] = str(path)
    return out


def reference(stack: MosaicStack, x, y, size: int) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """One stamp as astrotl cut it before the fast path: Cutout2D(mode='partial', fill NaN) per band."""
    n = len(stack.bands)
    xs = list(x) if np.ndim(x) else [x] * n
    ys = list(y) if np.ndim(y) else [y] * n
    out = np.full((n, size, size), np.nan, dtype=np.float32)
    missing = []
    for c, b in enumerate(stack.bands):
        ny, nx = b.shape
        if not (np.isfinite(xs[c]) and np.isfinite(ys[c]) and -0.5 <= xs[c] < nx - 0.5 and -0.5 <= ys[c] < ny - 0.5):
            missing.append(b.band)
            continue
        try:
            cut = Cutout2D(b.data, (xs[c], ys[c]), (size, size), mode="partial", fill_value=np.nan, copy=True)
        except NoOverlapError:  # a 1-pixel stamp centred at -0.5
            missing.append(b.band)
            continue
        out[c] = np.asarray(cut.data, dtype=np.float32)
        if not np.isfinite(out[c]).any():
            missing.append(b.band)
    finite = np.isfinite(out)
    out[~finite] = np.nan
    return out, float(1.0 - finite.mean()), tuple(missing)


def positions(rng, n: int):
    """Interior, edge, partial-overlap (centre just inside), integer, half-integer and outside positions."""
    ny, nx = SHAPE
    x = np.concatenate([rng.uniform(-0.5, nx - 0.5, n), [0.0, -0.5, nx - 0.5001, 12.5, 13.0, 3.49999, 46.9, -0.6,
                                                           nx - 0.5, np.nan, 24.0, 44.0]])
    y = np.concatenate([rng.uniform(-0.5, ny - 0.5, n), [0.0, 30.0, 60.4999, 12.5, 13.5, 3.50001, 1.0, 20.0,
                                                           20.0, 5.0, 30.0, 58.7]])
    return x, y


@pytest.mark.parametrize("size", [1, 4, 7, 8, 16, 25])
def test_batch_equals_cutout2d(images, size):
    stack = MosaicStack.open(images, "SCI")
    rng = np.random.default_rng(size)
    x, y = positions(rng, 150)
    batch = stack.cutouts(x, y, size)
    assert batch.stamps.shape == (len(x), 3, size, size) and batch.stamps.dtype == np.float32
    kinds = {"interior": 0, "edge": 0, "nan": 0, "outside": 0}
    for i in range(len(x)):
        ref, nanf, missing = reference(stack, x[i], y[i], size)
        np.testing.assert_array_equal(batch.stamps[i], ref, err_msg=f"x={x[i]}, y={y[i]}, size={size}")
        assert batch.nan_fraction[i] == nanf and batch.missing_bands(i) == missing
        kinds["outside" if batch.outside[i] else "edge" if batch.edge[i] else "nan" if nanf else "interior"] += 1
    assert all(v > 0 for k, v in kinds.items() if size > 1 or k != "edge"), kinds  # every case was exercised
    stack.close()


def test_single_cutout_and_per_band_positions(images):
    """cutout() (one stamp) is the batch path; per-band positions (sky coordinates) cut each band at its own place."""
    stack = MosaicStack.open(images, "SCI")
    xb = np.array([[10.2, 47.0, 3.0], [11.7, 46.2, 2.5], [9.5, 45.5, -0.4]])  # [bands, N]
    yb = np.array([[20.0, 59.9, 30.0], [21.5, 60.0, 31.0], [19.25, 58.0, 30.5]])
    batch = stack.cutouts(xb, yb, 9)
    for i in range(3):
        ref, nanf, missing = reference(stack, list(xb[:, i]), list(yb[:, i]), 9)
        np.testing.assert_array_equal(batch.stamps[i], ref)
        stamp, flags = stack.cutout(list(xb[:, i]), list(yb[:, i]), 9)
        np.testing.assert_array_equal(stamp, ref)
        assert flags == batch.flags(i) and flags.nan_fraction == nanf and flags.missing_bands == missing
    with pytest.raises(ValueError, match=r"positions must have shape \[N\] or \[3, N\]"):
        stack.cutouts(np.zeros((2, 4)), np.zeros((2, 4)), 9)
    stack.close()


def test_big_endian_memmap_is_read_in_place(images):
    stack = MosaicStack.open(images, "SCI")
    band = stack.bands[0]
    assert band.data.dtype.byteorder == ">"  # FITS data: big-endian, memory-mapped
    assert np.shares_memory(band.pixels, band.data)  # no copy of the image
    assert band.windows(8).shape == (SHAPE[0] - 7, SHAPE[1] - 7, 8, 8)
    import pickle

    clone = pickle.loads(pickle.dumps(band))  # DataLoader workers: the map is reopened, not pickled
    assert clone._pixels is None and clone._windows == {}
    np.testing.assert_array_equal(clone.windows(8)[3, 4], band.pixels[3:11, 4:12])
    stack.close()


def test_median_fast_path_equals_nanmedian():
    """normalize_images takes np.median for all-finite stamps: equal to np.nanmedian, to the bit."""
    from astrotl.data import NormalizeConfig, normalize_images

    rng = np.random.default_rng(0)
    for size in (8, 12, 16, 25, 32):
        x = rng.normal(0, 3, (6, 5, size, size)).astype(np.float32)
        a = np.median(x, axis=(2, 3), keepdims=True)
        b = np.nanmedian(x, axis=(2, 3), keepdims=True)
        np.testing.assert_array_equal(a, b)
        y = x.copy()
        y[0, 0, 0, 0] = np.nan  # one NaN anywhere: the nan-aware path for the whole stack
        cfg = NormalizeConfig(scale="none")
        np.testing.assert_array_equal(normalize_images(x, cfg)[1:], normalize_images(y, cfg)[1:])


@pytest.fixture(scope="module")
def dataset_factory(images, tmp_path_factory):
    from astrotl.datasets import CatalogCutoutDataset

    d = tmp_path_factory.mktemp("fast_cut_ds")
    rng = np.random.default_rng(3)
    x, y = positions(rng, 60)
    ok = np.isfinite(x) & np.isfinite(y)
    cat = d / "cat.ecsv"
    Table({"id": np.arange(ok.sum()), "x": x[ok], "y": y[ok], "cls": rng.integers(1, 3, ok.sum())}).write(cat)

    def make(**kw):
        cfg = CatalogCutoutDataset.Config(images=images, hdu="SCI", catalog=str(cat), size=kw.pop("size", 9),
                                          label_col="cls", keep_unlabelled=True, **kw)
        return CatalogCutoutDataset(cfg, split=kw.pop("split", "train"), seed=0, cache_dir=d / "cache")

    return make


@pytest.mark.parametrize("size", [8, 9])
def test_dataset_batches_equal_single_samples(dataset_factory, size):
    ds = dataset_factory(size=size)
    idx = list(range(len(ds)))[::-1]
    batch = ds.__getitems__(idx)
    for s, i in zip(batch, idx):
        one = ds[i]
        assert s["index"] == one["index"] == i and s["label"] == one["label"]
        torch.testing.assert_close(s["image"], one["image"], rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    got = torch.cat([b["image"] for b in loader])
    torch.testing.assert_close(got, torch.stack([ds[i]["image"] for i in range(len(ds))]), rtol=0, atol=0)


def test_flags_of_rows_already_cut_are_not_cut_again(dataset_factory, monkeypatch):
    from astrotl.fitsio import MosaicStack as MS

    fresh = dataset_factory(size=7, normalize={"scale": "image"}).flags()  # computed by its own pass
    ds = dataset_factory(size=7, normalize={"scale": "image"})
    import shutil

    shutil.rmtree(ds.cache_dir / "catalog_cutouts", ignore_errors=True)  # no flags cache on disk
    ds.__getitems__(list(range(len(ds))))  # what a prediction pass does
    calls = []
    original = MS.cutouts
    monkeypatch.setattr(MS, "cutouts", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    flags = ds.flags()
    assert calls == []
    for col in fresh.colnames:
        assert list(flags[col]) == list(fresh[col]), col
    assert fresh["flag_nan"].any() and fresh["flag_edge"].any() and fresh["flag_missing_band"].any()


def test_catalog_of_some_samples_cuts_only_those(dataset_factory, monkeypatch):
    """A chunk of a prediction asks for its samples' catalogue rows: only their pixel flags are computed."""
    from astrotl.fitsio import MosaicStack as MS

    whole = dataset_factory(size=5, normalize={"scale": "image"}).catalog()
    ds = dataset_factory(size=5, normalize={"scale": "image"})
    import shutil

    shutil.rmtree(ds.cache_dir / "catalog_cutouts", ignore_errors=True)
    cut = []
    original = MS.cutouts
    monkeypatch.setattr(MS, "cutouts", lambda self, x, *a, **k: cut.append(np.shape(x)[-1]) or original(self, x, *a, **k))
    part = ds.catalog(samples=np.arange(10, 30))
    assert sum(cut) == 20 and len(part) == 20
    for col in whole.colnames:
        assert list(part[col]) == list(whole[col][10:30]), col
