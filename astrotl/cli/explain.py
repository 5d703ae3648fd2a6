"""``astrotl explain RUN_DIR --out DIR``: Grad-CAM, Grad-CAM++ or guided Grad-CAM maps of a classifier.

Per class grids of the best, worst and most confused samples, the mean map per class, and where the
network looks (the fraction of the map's mass within a central radius, per class and per true/predicted
pair) in ``samples.ecsv``, ``summary.ecsv`` and ``report.md``. See :mod:`astrotl.explain`.
"""

from __future__ import annotations

COMMAND = "explain"


def add_parser(subparsers) -> None:
    from ..explain import METHODS, SAVE_FORMATS, STRETCHES, TARGETS

    p = subparsers.add_parser(
        COMMAND, help="class activation maps (Grad-CAM, Grad-CAM++, guided Grad-CAM) of a classification run",
        description="Explain a finished classification run with pytorch-grad-cam: per-class grids of the best, "
                    "worst and most confused samples, the mean map per class, and the fraction of the map's mass "
                    "within a central radius per class and per (true, predicted) pair (samples.ecsv, summary.ecsv, "
                    "report.md). Works for every backbone family and plugin: the layer is the backbone's cam_layer.")
    p.add_argument("run_dir", help="a finished classification run directory, e.g. runs/clustertype")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty; see --overwrite)")
    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="gradcam (default), gradcam++ or guided (guided Grad-CAM, as Stipp & Montana-Lopez 2019)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "predict"],
                   help="which split of the data section (default: the run's test split; predict = all of new data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override the run's data section, e.g. --set data.root=new/ (repeatable)")
    p.add_argument("--data", dest="data_file", metavar="FILE", help="YAML file with a data: section replacing the run's")
    p.add_argument("--radius", type=float, default=None, metavar="PX",
                   help="central radius in pixels for the mass fraction (default: a quarter of the image side)")
    p.add_argument("--save-cams", choices=SAVE_FORMATS, default=None,
                   help="also write one map per sample into DIR/cams (float32 [H, W])")
    p.add_argument("--target", choices=TARGETS, default="pred",
                   help="explain the predicted class (default) or the true class")
    p.add_argument("--n-per-class", type=int, default=6, metavar="N",
                   help="samples per row (best / worst / most confused) of each class grid (default 6)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="explain a seeded, class-stratified subset of N samples (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--rgb-bands", default=None, metavar="R,G,B",
                   help="bands shown as red, green, blue (names or channel numbers; default: see docs/explain.md)")
    p.add_argument("--stretch", choices=STRETCHES, default="asinh", help="stretch of one-band display images")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="module to explain instead of the backbone's cam_layer, e.g. 0.net.layer3 (finer maps)")
    p.add_argument("--dpi", type=int, default=120, help="resolution of the figures (default 120)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what astrotl wrote in --out before (files astrotl did not write are never deleted)")


def run(args, out) -> int:
    from ..explain import explain

    rgb = [b.strip() for b in args.rgb_bands.split(",")] if args.rgb_bands else None
    result = explain(args.run_dir, args.registries, out=args.out, method=args.method, split=args.split,
                     overrides=args.overrides, data_file=args.data_file, radius=args.radius, save_cams=args.save_cams,
                     target=args.target, n_per_class=args.n_per_class, max_samples=args.max_samples,
                     batch_size=args.batch_size, device=args.device, rgb_bands=rgb, stretch=args.stretch,
                     layer=args.layer, dpi=args.dpi, overwrite=args.overwrite)
    out.write(f"{result.line}; see {result.out / 'report.md'}\n")
    return 0
