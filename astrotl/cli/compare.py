"""``astrotl compare``: a grid of configurations x seeds, each cell an ordinary run; one report.

    astrotl compare tasks/compare_backbones.yaml
    astrotl compare tasks/phangs_clusters.yaml --grid backbone.weights=none,auto --grid train_subset.size=100,300 \\
        --seeds 0,1,2 --out runs/init_vs_size --workers 2
    astrotl compare tasks/compare_backbones.yaml --dry-run        # the cells and what is done, nothing run
    astrotl compare tasks/compare_backbones.yaml --retry-failed   # run the failed cells again

Exit code 0 when no cell failed, 1 when some did (the report lists them), 2 for bad input (nothing run).
"""

from __future__ import annotations

import argparse
import sys

from . import RESUME_HINTS

COMMAND = "compare"

# what `astrotl: interrupted by SIGTERM; ...` says after an interrupted grid
RESUME_HINTS.setdefault(COMMAND, "run the same command again to continue (finished cells are kept)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} workers: give at least 1")
    return value


def add_parser(sub) -> None:
    from ..compare import EXECUTORS

    p = sub.add_parser("compare", help="run a grid of config values x seeds (locally in parallel or on SLURM); "
                       "report with mean +- std, learning curves, paired tests and ensembles")
    p.add_argument("file", help="task file (YAML), with or without a compare: block")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis, e.g. --grid backbone.weights=none,imagenet (repeatable; replaces the same key "
                        "of the compare block)")
    p.add_argument("--seeds", metavar="S1,S2", help="run seeds of every grid point, e.g. 0,1,2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value of every cell, e.g. --set trainer.max_epochs=3 (repeatable)")
    p.add_argument("--out", help="output folder (default: compare.out, else <output_dir>/<name>_compare)")
    p.add_argument("--workers", type=_positive, help="cells run at once (default: min(cells, CPU cores))")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="processes (this machine), local / debug (submitit, for testing), slurm (submitit job array)")
    p.add_argument("--ensemble", nargs="?", const="seed", metavar="AXES",
                   help="combine the predictions of cells differing only in these axes (default: seed), e.g. "
                        "--ensemble seed,backbone.name")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dry-run", action="store_true", help="validate and list the cells; run and write nothing")
    g.add_argument("--report-only", action="store_true", help="write the report from the cells there are; run nothing")


def run(args, out) -> int:
    from ..compare import compare

    command = "astrotl " + " ".join(_quote(a) for a in (sys.argv[1:] if sys.argv and "astrotl" in sys.argv[0]
                                                        else ["compare", str(args.file)]))
    result = compare(args.file, args.registries, dry_run=args.dry_run, report_only=args.report_only,
                     overrides=args.overrides, grid=args.grid, seeds=args.seeds, out=args.out, workers=args.workers,
                     executor=args.executor, retry_failed=args.retry_failed, ensemble=args.ensemble,
                     disable_plugins=tuple(args.disable_plugin), command=command)
    plan = result.plan
    if args.dry_run:
        for c in plan.cells:
            what = {"run": f"will run ({c.mode})", "finished": "finished (kept)",
                    "failed": "failed (kept; --retry-failed runs it again)"}.get(c.state, c.state)
            extra = f": {c.note}" if c.note else f": {c.error}" if c.error and c.state == "failed" else ""
            out.write(f"{c.name}  {what}{extra}\n")
        n = plan.counts()
        how = f"{plan.executor}, {plan.workers} worker(s)" + (f" x {plan.threads} thread(s)" if plan.threads else "")
        out.write(f"dry run: {len(plan.cells)} cells ({n['run']} to run, {n['finished']} finished, "
                  f"{n['failed']} failed, {n['skipped']} skipped) into {plan.out} ({how}); "
                  "nothing was run or written\n")
        return 0
    rep = result.report
    c = rep.counts
    out.write(f"compared {len(plan.cells)} cells: {c['finished']} finished, {c['skipped']} skipped, "
              f"{c['failed']} failed" + (f", {c['other']} not finished" if c["other"] else "") + f"; see {rep.path}\n")
    if c["failed"]:
        names = [str(r["cell"]) for r in rep.cells if str(r["status"]) == "failed"]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        sys.stderr.write(f"astrotl: {c['failed']} cell(s) failed ({shown}); the report says why; fix and run again "
                         f"with --retry-failed\n")
        return 1
    return 0


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))
