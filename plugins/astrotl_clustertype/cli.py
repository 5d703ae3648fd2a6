"""The plugin's commands: ``astrotl clustertype-evaluate`` and ``astrotl clustertype-cv``.

Each is an object with ``COMMAND``, ``add_parser(subparsers)`` and ``run(args, out)``, registered by the
plugin's ``astrotl_register_commands`` hook like astrotl's own commands. See
:mod:`astrotl_clustertype.evaluate`.
"""

from __future__ import annotations

from types import SimpleNamespace


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "clustertype-evaluate", help="score a classification run on the real Stellarium cluster images (as they are)",
        description="Apply a finished open/globular classifier (e.g. runs/clustertype, trained on simulations) to "
                    "every Stellarium cluster image and score it with its task: accuracy, F1 and ROC AUC of "
                    "'globular', confusion matrix, ROC curve. Without --data/--set the images get the model's size "
                    "and band names.")
    p.add_argument("run_dir", help="a finished classification run, e.g. runs/clustertype")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty; see --overwrite)")
    p.add_argument("--root", default=None, metavar="CACHE",
                   help="Stellarium cache (default $ASTROTL_STELLARIUM_CACHE or ~/.cache/astrotl/stellarium)")
    p.add_argument("--data", dest="data_file", metavar="FILE", help="YAML file with a data: section to use instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override the run's data section instead (repeatable)")
    p.add_argument("--split", default="predict", choices=["predict", "test", "val", "train"],
                   help="split to score (default predict: every image)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace what astrotl wrote in --out before")


def _evaluate(args, out) -> int:
    from .evaluate import evaluate_run

    res = evaluate_run(args.run_dir, args.registries, out=args.out, overrides=args.overrides,
                       data_file=args.data_file, split=args.split, root=args.root, overwrite=args.overwrite,
                       device=args.device)
    out.write(f"{res.line}; see {res.out / 'report.md'}\n")
    return 0


def _cv_parser(sub) -> None:
    p = sub.add_parser(
        "clustertype-cv", help="k-fold cross-validation on the real Stellarium cluster images (one run per fold)",
        description="Fine-tune (or train) on the Stellarium cluster images with k-fold cross-validation: one "
                    "astrotl run per fold, <name>_fold<i> in the task's output_dir, the folds made by the data "
                    "set's n_folds / fold options (stratified, whole overlap groups; test = fold i, validation = "
                    "fold i+1). Writes one row per fold to --out with the mean +- std and the pooled out-of-fold "
                    "scores in its meta, and the pooled predictions next to it.")
    p.add_argument("file", help="task file with data: {name: clustertype_stellarium}, e.g. tasks/clustertype_stellarium.yaml")
    p.add_argument("--out", required=True, metavar="FILE.ecsv", help="per-fold table")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value for every fold, e.g. --set backbone.weights=none (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace earlier fold runs and --out")
    g.add_argument("--reuse", action="store_true", help="keep fold runs that finished with the same configuration")


def _cv(args, out) -> int:
    from .evaluate import cross_validate

    res = cross_validate(args.file, args.registries, out=args.out, folds=args.folds, overrides=args.overrides,
                         overwrite=args.overwrite, reuse=args.reuse)
    out.write(f"{res.line}; wrote {args.out}\n")
    return 0


def _command(name, add_parser, run) -> SimpleNamespace:
    return SimpleNamespace(COMMAND=name, add_parser=add_parser, run=run, __name__=f"astrotl_clustertype.cli.{name}")


COMMANDS = [_command("clustertype-evaluate", _evaluate_parser, _evaluate), _command("clustertype-cv", _cv_parser, _cv)]
