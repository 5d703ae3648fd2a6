"""``astrotl phangs-compare A B --out DIR``: the Whitmore et al. (2021) comparison of two classifications.

``A`` and ``B`` are catalogues (ECSV, FITS, CSV, a LEGUS ``.tab`` table, a run's
``predictions.ecsv`` or an ``astrotl ensemble`` table); they may be the same file with two class
columns (``--a-col true_class --b-col pred_class``). Writes agreement fractions, the averaged
confusion matrix, agreement versus magnitude / crowding / background and the U-B vs V-I box
counts with Quality Ratios to ``DIR`` (see :mod:`astrotl_phangs.evaluation`).
"""

from __future__ import annotations

from pathlib import Path

COMMAND = "phangs-compare"

#: Class columns tried in order when --a-col / --b-col are not given.
A_DEFAULTS = ("class", "true_class", "class_mode", "class_human", "pred_class")
B_DEFAULTS = ("class", "pred_class", "class_mode", "class_ml", "true_class")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        COMMAND, help="compare two cluster classifications as Whitmore et al. 2021 (agreement, confusion, colour boxes)",
        description="Compare two star-cluster classifications the way Whitmore et al. (2021) do: match the catalogues "
                    "(by id, or within 2 px), agreement fractions per class (mean of both studies as reference), "
                    "Class 1+2, the averaged confusion matrix, agreement vs magnitude/crowding/background, and "
                    "U-B vs V-I age-box counts with Quality Ratios.")
    p.add_argument("a", metavar="A", help="first catalogue (.ecsv/.fits/.csv/LEGUS .tab or a run's predictions.ecsv)")
    p.add_argument("b", metavar="B", help="second catalogue (may be the same file as A)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for tables, plots and summary.json")
    p.add_argument("--a-col", default=None, help=f"class column of A (default: first of {', '.join(A_DEFAULTS)})")
    p.add_argument("--b-col", default=None, help=f"class column of B (default: first of {', '.join(B_DEFAULTS)})")
    p.add_argument("--a-name", default=None, help="label of A in tables and plots (default: file name)")
    p.add_argument("--b-name", default=None, help="label of B (default: file name)")
    p.add_argument("--match", choices=("auto", "id", "position"), default="auto",
                   help="match by id, by position, or auto: id if both hold the same ids, else position")
    p.add_argument("--radius", type=float, default=2.0, help="matching radius in pixels (default 2, as the paper)")
    p.add_argument("--id-col", default="id", help="identifier column (default id)")
    p.add_argument("--bin-by", action="append", default=None, metavar="COLUMN",
                   help="column of A to bin the agreement by (repeatable; default: mag_F555W, n_neighbours, "
                        "crowd, crowding, background when present)")
    p.add_argument("--n-bins", type=int, default=4, help="equal-count bins per column (default 4)")
    p.add_argument("--mag-limit", default=None, metavar="COLUMN<VALUE",
                   help="only objects brighter than this in the colour-colour statistics, e.g. 'mag_F555W<23.44'")
    p.add_argument("--classes", default="1,2,3,4", help="comma-separated classes to score (default 1,2,3,4)")
    p.add_argument("--no-plots", action="store_true", help="write tables only")


def _read(path: str):
    from astrotl.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"catalogue '{p}' does not exist; pass an .ecsv/.fits/.csv/.tab catalogue or predictions.ecsv")
    try:
        from astrotl.catalogs import read_catalog
    except ImportError:  # pragma: no cover - catalogue readers not installed
        from astrotl.ensemble import read_predictions

        return read_predictions(p)
    return read_catalog(p)


def _pick(table, given: str | None, defaults: tuple[str, ...], which: str, avoid: str | None = None) -> str:
    from astrotl.errors import DataError

    if given:
        if given not in table.colnames:
            raise DataError(f"catalogue {which} has no column '{given}'; columns present: {', '.join(table.colnames)}")
        return given
    for c in defaults:
        if c in table.colnames and c != avoid:
            return c
    raise DataError(f"catalogue {which} has none of the class columns {', '.join(defaults)}; name it with "
                    f"--{which.lower()}-col (columns present: {', '.join(table.colnames)})")


def _mag_limit(text: str | None):
    from astrotl.errors import ConfigError

    if not text:
        return None
    col, sep, value = text.partition("<")
    try:
        if not sep or not col.strip():
            raise ValueError
        return col.strip(), float(value)
    except ValueError:
        raise ConfigError(f"--mag-limit must look like COLUMN<VALUE (e.g. mag_F555W<23.44), got {text!r}") from None


def run(args, out) -> int:
    from astrotl.errors import ConfigError

    from .evaluation import compare_classifications

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise ConfigError(f"--classes must list at least one class, got {args.classes!r}")
    if args.n_bins < 1:
        raise ConfigError(f"--n-bins must be >= 1, got {args.n_bins}")
    same = Path(args.a).resolve() == Path(args.b).resolve()
    a = _read(args.a)
    b = a if same else _read(args.b)
    a_col = _pick(a, args.a_col, A_DEFAULTS, "A")
    b_col = _pick(b, args.b_col, B_DEFAULTS, "B", avoid=a_col if same else None)
    if same and a_col == b_col:
        raise ConfigError(f"A and B are the same file and both class columns are '{a_col}'; "
                          f"choose two different columns with --a-col/--b-col")
    a_name = args.a_name or (a_col if same else Path(args.a).stem)
    b_name = args.b_name or (b_col if same else Path(args.b).stem)
    if a_name == b_name:
        b_name = b_name + "_B"
    combined = {"1+2": ("1", "2")} if {"1", "2"} <= set(classes) else {}
    res = compare_classifications(a, b, args.out, a_col=a_col, b_col=b_col, a_name=a_name, b_name=b_name,
                                  match=args.match, radius=args.radius, id_col=args.id_col, classes=classes,
                                  combined=combined, bin_columns=args.bin_by, n_bins=args.n_bins,
                                  mag_limit=_mag_limit(args.mag_limit), plots=not args.no_plots)
    parts = [f"C{c} {res[f'agreement_{c}']:.2f}" for c in classes + list(combined)]
    out.write(f"{a_name} vs {b_name}: {res['n_compared']} objects compared ({res['method']} match, "
              f"{res['n_matched']} matched of {res['n_a']}/{res['n_b']}); agreement "
              + ", ".join(parts) + f", mean {res['agreement_mean']:.2f}; wrote {args.out}\n")
    return 0
