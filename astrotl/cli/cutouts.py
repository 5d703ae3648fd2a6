"""``astrotl cutouts``: write one multi-extension FITS cutout per catalogue row.

    astrotl cutouts --image F555W=f555w.fits --image F814W=f814w.fits --catalog clusters.ecsv \\
        --size 299 --out cutouts/
    astrotl cutouts --task tasks/my_cutouts.yaml --out cutouts/      # the task file's data section

Every input is checked (files, HDUs, WCS, columns, duplicate ids) before the first file is
written; files already in ``--out`` are kept unless ``--overwrite`` (an interrupted export simply
continues). ``--out/index.ecsv`` lists every row with its file and flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "cutouts"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(COMMAND, help="cut one multi-extension FITS file per catalogue row (one HDU per band)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", metavar="FILE", help="take the options from this task file's data section (catalog_cutouts)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a data option, e.g. --set size=64 (repeatable; with or without --task)")
    p.add_argument("--image", action="append", default=[], metavar="BAND=PATH",
                   help="a band's FITS mosaic (repeatable, in channel order)")
    p.add_argument("--hdu", help="HDU of the images, by EXTNAME or index (default: first 2-D image)")
    p.add_argument("--catalog", help="source catalogue (.ecsv, .fits, .csv, LEGUS .tab)")
    p.add_argument("--format", choices=["auto", "ecsv", "fits", "csv", "legus", "phangs"], help="catalogue format")
    p.add_argument("--coords", choices=["pixel", "sky"], help="cut at pixel x,y (default) or at ra,dec via the WCS")
    p.add_argument("--x-col"), p.add_argument("--y-col"), p.add_argument("--ra-col"), p.add_argument("--dec-col")
    p.add_argument("--id-col", help="unique id column (default: id)")
    p.add_argument("--label-col", help="label column, written as CLASS in each file")
    p.add_argument("--pixel-origin", type=int, choices=[0, 1], help="1 if x,y are 1-based (DS9/IRAF/SExtractor)")
    p.add_argument("--size", type=int, help="stamp side in pixels (default 299)")
    p.add_argument("--drop", action="append", default=[], choices=["outside", "edge", "nan", "missing_band"],
                   help="skip rows with this flag (repeatable)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--pattern", default="{id}.fits", help="file name pattern ({id}, {index}); default {id}.fits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    return p


def _data_options(args) -> dict:
    from ..config import apply_overrides, expand_env, load_yaml
    from ..errors import ConfigError

    opts: dict = {}
    if args.task:
        data, _ = load_yaml(args.task)
        section = dict(data.get("data") or {})
        name = section.pop("name", "catalog_cutouts")
        if name != "catalog_cutouts":
            raise ConfigError(f"'{args.task}' has data: {{name: {name}}}; astrotl cutouts needs a catalog_cutouts data "
                              f"section")
        opts.update(section)
    images = {}
    for item in args.image:
        if "=" not in item:
            raise ConfigError(f"--image '{item}' is not BAND=PATH (e.g. --image F555W=f555w.fits)")
        band, path = item.split("=", 1)
        band = band.strip()
        if not band or not path.strip():
            raise ConfigError(f"--image '{item}' is not BAND=PATH (e.g. --image F555W=f555w.fits)")
        if band in images:
            raise ConfigError(f"--image: band {band} is given twice ({images[band]} and {path.strip()}); give each band "
                              f"once")
        images[band] = path.strip()
    if images:
        opts["images"] = images
    for key in ("hdu", "catalog", "format", "coords", "x_col", "y_col", "ra_col", "dec_col", "id_col", "label_col",
                "pixel_origin", "size"):
        value = getattr(args, key)
        if value is not None:
            opts[key] = int(value) if key == "hdu" and str(value).isdigit() else value
    if args.drop:
        opts["drop_flagged"] = list(args.drop)
    opts = apply_overrides(opts, args.overrides)
    if "images" not in opts or "catalog" not in opts:
        raise ConfigError("give the images (--image BAND=PATH, repeatable) and --catalog, or --task FILE with a "
                          "catalog_cutouts data section")
    opts["cache"] = "none"
    opts["normalize"] = {"scale": "none"}  # raw pixels are exported; no noise estimate needed
    return expand_env(opts)


def run(args, out) -> int:
    from pydantic import ValidationError

    from ..config import _format_errors
    from ..datasets.cutouts import CatalogCutoutConfig, CatalogCutoutDataset
    from ..engine import default_cache_dir
    from ..mef import export_cutouts

    from ..errors import ConfigError, OutputError
    from ..mef import check_pattern

    check_pattern(args.pattern)  # before any input is read
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(f"--out '{args.out}' is a file; give a folder for the cutouts")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give a positive number of rows")
    opts = _data_options(args)
    try:
        cfg = CatalogCutoutConfig.model_validate(opts)
    except ValidationError as exc:
        raise _format_errors(exc, CatalogCutoutConfig, ("data",), {}, "astrotl cutouts") from None
    ds = CatalogCutoutDataset(cfg, split="predict", seed=0, cache_dir=default_cache_dir())
    index = export_cutouts(ds, args.out, pattern=args.pattern, overwrite=args.overwrite, limit=args.limit)
    n_new = int(sum(index["written"]))
    counts = {name: int(sum(index[f"flag_{name}"])) for name in ("outside", "edge", "nan", "missing_band")}
    flags = ", ".join(f"{k} {v}" for k, v in counts.items())
    out.write(f"wrote {n_new} cutouts ({len(index) - n_new} already there) of {len(ds.bands)} bands "
              f"({', '.join(ds.bands)}), {cfg.size}x{cfg.size} px, to {Path(args.out)}; flagged: {flags}; "
              f"index: {Path(args.out) / 'index.ecsv'}\n")
    return 0
