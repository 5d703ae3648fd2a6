"""The plugin's command: ``astrotl clustertype-evaluate`` (k-fold cross-validation on the real images is the
core's ``cv:`` section: ``astrotl run tasks/clustertype_stellarium.yaml``).

It is an object with ``COMMAND``, ``add_parser(subparsers)`` and ``run(args, out)``, registered by the
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


def _command(name, add_parser, run) -> SimpleNamespace:
    return SimpleNamespace(COMMAND=name, add_parser=add_parser, run=run, __name__=f"astrotl_clustertype.cli.{name}")


COMMANDS = [_command("clustertype-evaluate", _evaluate_parser, _evaluate)]
