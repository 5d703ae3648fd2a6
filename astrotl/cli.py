"""The ``astrotl`` command line.

    astrotl run tasks/phangs_clusters.yaml [--set trainer.max_epochs=3] [--overwrite | --resume]
    astrotl validate tasks/phangs_clusters.yaml
    astrotl list [tasks|datasets|backbones|heads|plugins]
    astrotl schema phangs_clusters

User errors print one line ``astrotl: error: ...`` on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

from . import __version__
from .errors import AstrotlError

log = logging.getLogger("astrotl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="astrotl", description="Transfer learning on astronomical images.")
    p.add_argument("--version", action="version", version=f"astrotl {__version__}")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   help="do not load this plugin (repeatable; also ASTROTL_DISABLE_PLUGINS=a,b)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add_config_args(sp):
        sp.add_argument("file", help="task file (YAML), e.g. tasks/phangs_clusters.yaml")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set trainer.max_epochs=3 (repeatable)")

    r = sub.add_parser("run", help="train, validate and evaluate as a task file says")
    add_config_args(r)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run of the same name")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")

    pr = sub.add_parser("predict", help="classify new data with a finished run's model; write catalogue + predictions")
    pr.add_argument("run_dir", help="a finished run directory, e.g. runs/phangs_clusters")
    pr.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .csv)")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override the run's config, e.g. --set data.catalog=new.ecsv (repeatable)")
    pr.add_argument("--data", dest="data_file", help="YAML file with a data: section replacing the run's")
    pr.add_argument("--batch-size", type=int, default=None)
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    pr.add_argument("--split", default="predict", choices=["predict", "test", "val", "train"],
                    help="which split of the data section to classify (default: predict = all of new data)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    v = sub.add_parser("validate", help="check a task file (names, keys, values) without running it")
    add_config_args(v)
    v.add_argument("--print", action="store_true", dest="show", help="print the resolved configuration")

    ls = sub.add_parser("list", help="list registered tasks, datasets, backbones, heads or plugins")
    ls.add_argument("kind", nargs="?", default="all", help="tasks, datasets, backbones, heads, plugins or all")

    s = sub.add_parser("schema", help="print the JSON schema of a component's options (or of run/trainer/optim)")
    s.add_argument("name", help="a component name (see astrotl list), or run, trainer, optim")
    for module in _extra_command_modules():
        module.add_parser(sub)
    return p


#: Modules that add sub-commands: each has ``COMMAND`` (its name), ``add_parser(subparsers)`` and
#: ``run(args, out) -> int``. Kept in their own modules so the core CLI stays small.
EXTRA_COMMANDS: list[str] = ["astrotl.cli_ensemble", "astrotl.cli_cutouts", "astrotl.cli_weights"]


_PLUGIN_COMMANDS: list = []


def _extra_command_modules():
    """Core command modules plus those plugins register with ``astrotl_register_commands``."""
    import importlib

    return [importlib.import_module(m) for m in EXTRA_COMMANDS] + list(_PLUGIN_COMMANDS)


def _load_plugin_commands(argv: list[str] | None) -> None:
    """Collect plugin sub-commands before parsing (honours --disable-plugin)."""
    from .plugins import make_plugin_manager

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--disable-plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    pm = make_plugin_manager(disable=known.disable_plugin)
    _PLUGIN_COMMANDS.clear()
    core = {m.rsplit(".", 1)[-1] for m in EXTRA_COMMANDS}
    for result in pm.hook.astrotl_register_commands():
        for module in result or []:
            if getattr(module, "COMMAND", None) in COMMANDS or module.__name__.rsplit(".", 1)[-1] in core:
                continue
            _PLUGIN_COMMANDS.append(module)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("astrotl").setLevel(level)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.propagate = False  # Lightning has its own handler; avoid printing each line twice
        if quiet:
            lg.setLevel(logging.WARNING)


def _registries(args):
    from .plugins import load_registries

    return load_registries(disable=args.disable_plugin)


def cmd_list(args, out) -> int:
    from .plugins import KINDS

    regs = _registries(args)
    kind = args.kind
    if kind == "plugins":
        for name, mod in regs.plugins():
            out.write(f"{name:20s} {mod}\n")
        return 0
    kinds = list(KINDS) if kind == "all" else [regs.of(kind).kind]
    for k in kinds:
        reg = regs.of(k)
        out.write(f"{k}:\n")
        for name in reg:
            cls = reg.get(name)
            extra = ""
            if k == "backbones" and "weights" in cls.Config.model_fields:
                extra = f"  [weights: {getattr(cls, 'weight_options', 'none | imagenet | auto | <file>')}]"
            out.write(f"  {name:22s} {cls.summary()}  (plugin: {reg.plugin_of(name)}){extra}\n")
    return 0


def cmd_schema(args, out) -> int:
    from .config import OptimConfig, RunConfig, TrainerConfig

    top = {"run": RunConfig, "trainer": TrainerConfig, "optim": OptimConfig}
    if args.name in top:
        schema = top[args.name].model_json_schema()
    else:
        regs = _registries(args)
        kind, cls = regs.find(args.name)
        schema = cls.Config.model_json_schema()
        schema["title"] = f"{kind[:-1]} '{cls.name}'"
        schema["description"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    out.write(json.dumps(schema, indent=2) + "\n")
    return 0


def cmd_validate(args, out) -> int:
    from .config import load_config

    regs = _registries(args)
    cfg = load_config(args.file, regs, args.overrides)
    if args.show:
        out.write(cfg.to_yaml())
    else:
        comp = {s: cfg.component(s)[0].name for s in ("task", "data", "backbone", "head")}
        out.write(f"OK: {args.file}: run '{cfg.run.name}', task {comp['task']}, data {comp['data']}, "
                  f"backbone {comp['backbone']}, head {comp['head']}\n")
    return 0


def cmd_run(args, out) -> int:
    from .config import load_config
    from .engine import run

    regs = _registries(args)
    cfg = load_config(args.file, regs, args.overrides)
    path = run(cfg, regs, overwrite=args.overwrite, resume=args.resume)
    from .engine import is_main_process

    if is_main_process():
        metrics_file = path / "metrics.json"
        summary = ""
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())["metrics"]
            if "test_accuracy" in m:
                summary = f" test accuracy {m['test_accuracy']:.3f} (chance {m.get('chance_accuracy', float('nan')):.2f})"
        out.write(f"finished: {path}{summary}; see {path / 'report.md'}\n")
    return 0


def cmd_predict(args, out) -> int:
    from .predict import predict

    regs = _registries(args)
    path = predict(args.run_dir, regs, out=args.out, overrides=args.overrides, data_file=args.data_file,
                   overwrite=args.overwrite, batch_size=args.batch_size, device=args.device, split=args.split)
    out.write(f"wrote {path}\n")
    return 0


COMMANDS = {"predict": cmd_predict, "run": cmd_run, "validate": cmd_validate, "list": cmd_list, "schema": cmd_schema}


def main(argv: list[str] | None = None) -> int:
    try:
        _load_plugin_commands(argv)
    except AstrotlError as exc:
        sys.stderr.write(f"astrotl: error: {' '.join(str(exc).split())}\n")
        return 2
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.verbose, args.quiet)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    commands = dict(COMMANDS)
    for module in _extra_command_modules():
        commands[module.COMMAND] = module.run
    try:
        return commands[args.command](args, sys.stdout)
    except AstrotlError as exc:
        msg = " ".join(str(exc).split())
        sys.stderr.write(f"astrotl: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("astrotl: interrupted; continue the run with --resume\n")
        return 130
    except BrokenPipeError:  # e.g. `astrotl list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
