"""``astrotl phangs-mosaic OUT_DIR``: paint a simulated five-band PHANGS-HST-like mosaic and its catalogue.

Writes ``mosaic_f275w.fits`` ... ``mosaic_f814w.fits`` (image HDU ``SCI``, e-/s, TAN WCS, NaN off
the footprint), ``candidates.ecsv`` (id, x, y, ra, dec, cls, subclass, magnitudes, ...,
redundant) and ``data_catalog_cutouts.yaml``, a ``data:`` section for any ``catalog_cutouts`` task
or for ``astrotl predict RUN_DIR --data``. See :mod:`astrotl_phangs.mosaic`.
"""

from __future__ import annotations

from pathlib import Path

COMMAND = "phangs-mosaic"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        COMMAND, help="paint a simulated five-band PHANGS-HST-like mosaic (FITS + WCS) and its candidate catalogue",
        description="Paint a simulated HST WFC3/UVIS five-band mosaic of a spiral galaxy (one FITS file per band, "
                    "e-/s, TAN WCS, NaN outside the drizzle footprint) with PHANGS-HST-like cluster candidates, and "
                    "write their catalogue (candidates.ecsv) plus a catalog_cutouts data section. Same arguments "
                    "and OUT_DIR: the existing files are reused.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (created)")
    p.add_argument("--n-sources", type=int, default=3000, metavar="N", help="candidates in the catalogue (default 3000)")
    p.add_argument("--shape", type=int, nargs=2, default=(3000, 3000), metavar=("NY", "NX"),
                   help="mosaic size in pixels (default 3000 3000; 0.04 arcsec/px)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="simulation seed (default 0)")
    p.add_argument("--crowding", type=float, default=1.0, help="objects per 32x32 px incl. faint field ones (default 1)")
    p.add_argument("--background", type=float, default=1.0, help="scale of the galaxy light (default 1)")
    p.add_argument("--psf-fwhm", type=float, default=2.1, help="F555W PSF FWHM in pixels (default 2.1)")
    p.add_argument("--mag-range", type=float, nargs=2, default=(20.5, 24.5), metavar=("BRIGHT", "FAINT"),
                   help="F555W Vega magnitudes of the candidates (default 20.5 24.5)")
    p.add_argument("--no-noise", action="store_true", help="noiseless model images")
    p.add_argument("--ra", type=float, default=24.174, help="RA of the centre, deg (default NGC 628)")
    p.add_argument("--dec", type=float, default=15.784, help="Dec of the centre, deg (default NGC 628)")


def run(args, out) -> int:
    import collections

    import yaml

    from astrotl.errors import ConfigError
    from astrotl.io import write_text

    from .mosaic import paint_mosaic
    from .simulate import SimConfig

    try:
        cfg = SimConfig(crowding=args.crowding, background=args.background, psf_fwhm_px=args.psf_fwhm,
                        mag_range=tuple(args.mag_range), noise=not args.no_noise)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("SimConfig.", "--").replace("_px", "").replace("_", "-")) from None
    res = paint_mosaic(args.out_dir, n_sources=args.n_sources, shape=tuple(args.shape), config=cfg, seed=args.seed,
                       ra=args.ra, dec=args.dec)
    data = res.cutout_config(size=32)
    snippet = ("# data section for a catalog_cutouts task (or astrotl predict --data), written by "
               "astrotl phangs-mosaic\n" + yaml.safe_dump({"data": {"name": "catalog_cutouts", **data}},
                                                        sort_keys=False))
    write_text(Path(args.out_dir) / "data_catalog_cutouts.yaml", snippet)
    cat = res.catalog
    counts = collections.Counter(str(c) for c in cat["cls"])
    what = "reused" if res.cached else f"painted in {res.seconds:.1f} s"
    out.write(f"{what}: {res.shape[0]} x {res.shape[1]} px x {len(res.images)} bands, {len(cat)} candidates "
              f"(class 1/2/3/4: {'/'.join(str(counts.get(k, 0)) for k in '1234')}; "
              f"{int((cat['subclass'] == '4.11').sum())} edge, {int(cat['redundant'].sum())} redundant) "
              f"-> {res.out_dir} (candidates.ecsv, data_catalog_cutouts.yaml)\n")
    return 0
