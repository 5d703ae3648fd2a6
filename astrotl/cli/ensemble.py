"""``astrotl ensemble RUN_DIR... --out FILE.ecsv``: combine several runs' predictions.

Per candidate (matched by id) the mean, median, mode and standard deviation of the models'
classes, the quality factor (fraction of models agreeing with the mode) and each model's class,
as in Whitmore et al. (2021, Appendix 10.1). See :mod:`astrotl.ensemble`.
"""

from __future__ import annotations

COMMAND = "ensemble"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        COMMAND, help="combine several runs' predictions into per-candidate mean/median/mode/std/quality factor",
        description="Combine the predictions.ecsv of several finished runs, matched by id, into one table "
                    "with each candidate's mean, median, mode and standard deviation of the model classes, "
                    "the quality factor (fraction of models agreeing with the mode) and every model's class "
                    "(Whitmore et al. 2021, Appendix 10.1).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories (or predictions .ecsv files)")
    p.add_argument("--out", required=True, metavar="FILE", help="output table (.ecsv, .fits or .csv)")
    p.add_argument("--class-col", default="pred_class", help="column with each model's class (default: pred_class)")
    p.add_argument("--id-col", default="id", help="candidate identifier column (default: id)")
    p.add_argument("--names", default=None, metavar="A,B,...",
                   help="comma-separated member names for the class_<name> columns (default: run directory names)")
    p.add_argument("--intersection", action="store_true",
                   help="keep only candidates present in every run (default: different candidate sets are an error)")
    p.add_argument("--tie-break", choices=("smallest", "first"), default="smallest",
                   help="mode ties: smallest class code (default) or the tied class of the earliest run listed")
    p.add_argument("--mode-only", action="store_true",
                   help="skip mean/median/std (for non-numeric class codes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args, out) -> int:
    from ..ensemble import OUT_SUFFIXES, ensemble_runs
    from ..errors import ConfigError
    from ..io import check_output_file

    check_output_file(args.out, overwrite=args.overwrite, suffixes=OUT_SUFFIXES)  # before reading any run
    names = None
    if args.names:
        names = [s.strip() for s in args.names.split(",")]
        if len(names) != len(args.runs):
            raise ConfigError(f"--names lists {len(names)} names for {len(args.runs)} runs; give one name per run")
    table = ensemble_runs(args.runs, args.out, names=names, class_col=args.class_col, id_col=args.id_col,
                          on_mismatch="intersection" if args.intersection else "error",
                          tie_break=args.tie_break, numeric_stats=not args.mode_only, overwrite=args.overwrite)
    qf = table["quality_factor"]
    n_tie = int(table["mode_tie"].sum())
    dropped = table.meta["ensemble"]["n_dropped"]
    out.write(f"wrote {args.out}: {len(table)} candidates, {len(args.runs)} models, "
              f"mean quality factor {float(qf.mean()):.3f}, {n_tie} mode ties"
              + (f", {dropped} candidates not in every run dropped" if dropped else "") + "\n")
    return 0
