"""Make the tiny FITS mosaics, catalogues and broken files the data tests use.

Nothing here is committed as data: the tests call these functions into ``tmp_path``. Run it as a
script to write a browsable example set::

    python tests/data/make_fits.py /tmp/astrotl_fits_example

The mosaic is ``ny x nx`` pixels per band, a TAN WCS centred on (RA, Dec) = (150, 2) deg at
0.04 arcsec/px (HST WFC3/UVIS), Gaussian noise plus a few Gaussian "clusters" at the catalogue
positions, and a NaN region (the corner outside the drizzled footprint) in the top-right corner.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

BANDS = ("F275W", "F336W", "F438W", "F555W", "F814W")
PIXSCALE_DEG = 0.04 / 3600.0


def make_wcs(ny: int, nx: int, ra: float = 150.0, dec: float = 2.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cdelt = [-PIXSCALE_DEG, PIXSCALE_DEG]
    return w


def source_positions(ny: int, nx: int) -> list[tuple[float, float]]:
    """0-based (x, y) of the test sources: inside, near the edge, in the NaN corner, outside."""
    return [
        (nx * 0.30, ny * 0.30),   # 0: well inside
        (nx * 0.50, ny * 0.40),   # 1: well inside
        (nx * 0.25, ny * 0.60),   # 2: well inside
        (2.0, ny * 0.5),          # 3: edge (stamp falls off the left side)
        (nx - 3.0, 3.0),          # 4: near the bottom-right corner (edge)
        (nx * 0.95, ny * 0.95),   # 5: in the NaN corner (all-NaN stamp -> missing bands)
        (nx + 50.0, ny * 0.5),    # 6: outside the image
    ]


def make_mosaic(directory: Path, *, ny: int = 120, nx: int = 100, bands=BANDS, seed: int = 0, hdu_name: str = "SCI",
                nan_corner: bool = True, with_wcs: bool = True, dtype=np.float32) -> dict[str, Path]:
    """Write one FITS file per band (PrimaryHDU without data + an image HDU named ``hdu_name``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    wcs = make_wcs(ny, nx)
    out = {}
    for b, band in enumerate(bands):
        img = rng.normal(0.0, 1.0, (ny, nx))
        for k, (x, y) in enumerate(source_positions(ny, nx)):
            img += (20.0 + 5 * k + 3 * b) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
        if nan_corner:
            img[int(ny * 0.85):, int(nx * 0.85):] = np.nan
        header = wcs.to_header() if with_wcs else fits.Header()
        header["FILTER"] = band
        path = directory / f"mosaic_{band.lower()}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img.astype(dtype), header=header, name=hdu_name)]).writeto(
            path, overwrite=True)
        out[band] = path
    return out


def make_catalog(path: Path, *, ny: int = 120, nx: int = 100, pixel_origin: int = 0, labels: bool = True,
                 sky: bool = True, mags: tuple[str, ...] = BANDS) -> Path:
    """A catalogue of :func:`source_positions` (plus random interior sources) in the format of the suffix."""
    path = Path(path)
    pos = source_positions(ny, nx)
    rng = np.random.default_rng(1)
    extra = [(float(rng.uniform(15, nx * 0.8)), float(rng.uniform(15, ny * 0.8))) for _ in range(25)]
    pos = pos + extra
    x = np.array([p[0] for p in pos]) + pixel_origin
    y = np.array([p[1] for p in pos]) + pixel_origin
    t = Table()
    t["id"] = np.arange(1, len(pos) + 1) * 10
    t["x"], t["y"] = x, y
    if sky:
        ra, dec = make_wcs(ny, nx).wcs_pix2world(x - pixel_origin, y - pixel_origin, 0)
        t["ra"], t["dec"] = ra, dec
    if labels:
        t["cls"] = (np.arange(len(pos)) % 4) + 1
    for band in mags:
        t[f"mag_{band}"] = rng.uniform(20, 25, len(pos))
    fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits"}[path.suffix]
    t.write(path, format=fmt, overwrite=True)
    return path


def truncate(path: Path, out: Path, fraction: float = 0.6) -> Path:
    """Copy the first ``fraction`` of a file (a broken download)."""
    data = Path(path).read_bytes()
    Path(out).write_bytes(data[: int(len(data) * fraction)])
    return Path(out)


def garbage(out: Path) -> Path:
    """A file with a .fits name that is not FITS."""
    Path(out).write_bytes(b"this is not a FITS file\n" * 200)
    return Path(out)


def make_legus_like(path: Path, n_cols: int = 39, n_rows: int = 6) -> Path:
    """A tiny LEGUS-format .tab table (1-based x, y; sentinel magnitudes)."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n_rows):
        r = [i + 1, 10.0 + i, 20.0 + i, 65.0, -54.9]
        for b in range(5):
            mag = 99.999 if (i == 0 and b == 0) else 66.666 if (i == 1 and b == 1) else 22.0 + rng.uniform()
            r += [mag, mag if mag > 60 else 0.05]
        r += [1.5] + [1e6] * 6 + [0.1] * 3 + [0.0] * 5 + [1.0, 0.5, 5]
        if n_cols == 35:
            r += [i % 5, float(i % 5)]
        else:
            r += [i % 5, 3, i % 5, 2, 0, 0]
        assert len(r) == n_cols, len(r)
        rows.append(r)
    Path(path).write_text("\n".join("  ".join(f"{v:.5f}" if isinstance(v, float) else str(v) for v in r)
                                    for r in rows) + "\n")
    return Path(path)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "astrotl_fits_example")
    files = make_mosaic(target)
    make_catalog(target / "catalog.ecsv")
    make_legus_like(target / "legus39.tab", 39)
    make_legus_like(target / "legus35.tab", 35)
    print(f"wrote {len(files)} band mosaics, catalog.ecsv and two LEGUS-like tables to {target}")
