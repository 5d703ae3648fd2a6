"""``astrotl clumps-regions-check RUN_DIR``: open a clump run's DS9 files and check them against its catalogue.

For every test image the command reads ``regions/<id>_sky.reg`` (ICRS) with the ``regions`` package,
converts the boxes to pixels with the image's own WCS (rebuilt from the run's data section), reads
``regions/<id>.reg`` (image coordinates) and compares both with the boxes of
``tables/detections.ecsv``; it also recomputes the catalogue's RA/Dec from the box centres. It
prints the largest differences and fails (exit 2) when a sky region is more than ``--tolerance``
pixels (default 0.01) off, a file is missing or the counts differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrotl.errors import DataError

COMMAND = "clumps-regions-check"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(COMMAND, help="check a clump run's DS9 region files (sky and pixel) against its catalogue")
    p.add_argument("run_dir", help="a finished run of the clumps task, e.g. runs/clumps")
    p.add_argument("--tolerance", type=float, default=0.01, help="largest allowed difference in pixels (0.01)")


def check_regions(run_dir: str | Path, registries, tolerance: float = 0.01) -> dict[str, float]:
    """Compare the run's region files with its detections catalogue; return the largest differences.

    Returns
    -------
    dict
        ``n_images``, ``n_detections``, ``max_sky_px`` (sky regions converted with the image WCS),
        ``max_pixel_px`` (image regions) and ``max_radec_deg`` (catalogue RA/Dec against the WCS of
        the box centres).

    Raises
    ------
    DataError
        A missing file, a count mismatch, a data set without ``wcs(index)``, or a difference above
        ``tolerance``.
    """
    from astropy.table import Table

    from astrotl.engine import cache_dir_for
    from astrotl.loadrun import load_run

    from .postprocess import read_ds9_regions

    loaded = load_run(run_dir, registries)
    run = loaded.path
    cat_file = run / "tables" / "detections.ecsv"
    if not cat_file.is_file():
        raise DataError(f"'{run}' has no tables/detections.ecsv; give a finished run of the clumps task")
    det = Table.read(cat_file)
    cfg = loaded.config
    ds_cls, ds_cfg = cfg.component("data")
    ds = ds_cls(ds_cfg, split="test", seed=cfg.run.seed, cache_dir=cache_dir_for(cfg))
    if not callable(getattr(ds, "wcs", None)):
        raise DataError(f"data set '{ds_cls.name}' has no wcs(index): the run has no sky regions to check")
    ids = np.asarray(ds.catalog()["id"]) if "id" in ds.catalog().colnames else np.arange(len(ds))
    worst = {"max_sky_px": 0.0, "max_pixel_px": 0.0, "max_radec_deg": 0.0}
    n = 0
    for i in range(len(ds)):
        mine = det[np.asarray(det["index"]) == i] if len(det) else det
        boxes = np.stack([np.asarray(mine[k], float) for k in ("x0", "y0", "x1", "y1")], 1) if len(mine) \
            else np.zeros((0, 4))
        files = [run / "regions" / f"{ids[i]}{suffix}.reg" for suffix in ("_sky", "")]
        for f in files:
            if not f.is_file():
                raise DataError(f"region file '{f}' is missing; rerun the run (task.regions: true)")
        w = ds.wcs(i)
        sky = read_ds9_regions(files[0], wcs=w)["boxes"]
        pix = read_ds9_regions(files[1])["boxes"]
        if not len(sky) == len(pix) == len(boxes):
            raise DataError(f"image {ids[i]}: {len(sky)} sky and {len(pix)} pixel regions for {len(boxes)} detections")
        if len(boxes):
            worst["max_sky_px"] = max(worst["max_sky_px"], float(np.abs(sky - boxes).max()))
            worst["max_pixel_px"] = max(worst["max_pixel_px"], float(np.abs(pix - boxes).max()))
            ra, dec = w.pixel_to_world_values(np.asarray(mine["x_centre"], float), np.asarray(mine["y_centre"], float))
            d = max(float(np.abs(np.asarray(ra) - np.asarray(mine["ra"], float)).max()),
                    float(np.abs(np.asarray(dec) - np.asarray(mine["dec"], float)).max()))
            worst["max_radec_deg"] = max(worst["max_radec_deg"], d)
        n += len(boxes)
    if worst["max_sky_px"] > tolerance or worst["max_pixel_px"] > tolerance:
        raise DataError(f"region files of '{run}' differ from the catalogue by up to {worst['max_sky_px']:.3g} px (sky) "
                        f"/ {worst['max_pixel_px']:.3g} px (image), more than {tolerance:g} px")
    return {"n_images": len(ds), "n_detections": n, **worst}


def run(args, out) -> int:
    r = check_regions(args.run_dir, args.registries, tolerance=args.tolerance)
    out.write(f"{r['n_images']} images, {r['n_detections']} detections: sky regions converted with each image's WCS "
              f"differ from the catalogue boxes by at most {r['max_sky_px']:.2e} px, image regions by "
              f"{r['max_pixel_px']:.2e} px; catalogue RA/Dec = WCS(box centre) within {r['max_radec_deg']:.1e} deg\n")
    return 0
