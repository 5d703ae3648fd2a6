"""The ``astrotl`` command line.

    astrotl run tasks/phangs_clusters.yaml [--set trainer.max_epochs=3] [--overwrite | --resume]
    astrotl validate tasks/phangs_clusters.yaml
    astrotl list [tasks|datasets|backbones|heads|plugins]
    astrotl schema phangs_clusters

Every sub-command, astrotl's own included, is a module with ``COMMAND``, ``add_parser(subparsers)``
and ``run(args, out) -> int``, registered through the ``astrotl_register_commands`` hook (astrotl's
own through its built-in plugin). One plugin manager is made per process; commands find the
registries it filled as ``args.registries``.

User errors print one line ``astrotl: error: ...`` on stderr and exit with code 2. SIGINT and
SIGTERM print one line ``astrotl: interrupted by SIGTERM; continue the run with --resume``, mark the
run ``interrupted`` and exit with 130 / 143 (see :mod:`astrotl.signals`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .. import __version__
from ..errors import AstrotlError

log = logging.getLogger("astrotl")


class _Parser(argparse.ArgumentParser):
    """argparse with astrotl's error contract: one line, exit code 2."""

    def error(self, message):  # noqa: D102
        sys.stderr.write(f"astrotl: error: {' '.join(message.split())}; see `{self.prog} --help`\n")
        raise SystemExit(2)


def _pre_parse(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--disable-plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return known


def _parser(commands: list) -> argparse.ArgumentParser:
    p = _Parser(prog="astrotl", description="Transfer learning on astronomical images.")
    p.add_argument("--version", action="version", version=f"astrotl {__version__}")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   help="do not load this plugin (repeatable; also ASTROTL_DISABLE_PLUGINS=a,b)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in commands:
        module.add_parser(sub)
    return p


def command_modules(registries) -> list:
    """The command modules every plugin (astrotl's built-in one first) registered, by name."""
    seen: dict[str, object] = {}
    results = registries.pm.hook.astrotl_register_commands()
    # pluggy calls the most recently registered plugin first; the built-in plugin was registered first
    for result in reversed(results):
        for module in result or []:
            name = getattr(module, "COMMAND", None)
            if not name:
                from ..errors import PluginError

                raise PluginError(f"a plugin registered the command module {module!r} without a COMMAND name")
            if name in seen and seen[name] is not module:
                from ..errors import PluginError

                raise PluginError(f"the command '{name}' is registered twice ({seen[name].__name__} and "
                                  f"{module.__name__}); disable one plugin with --disable-plugin")
            seen[name] = module
    return list(seen.values())


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("astrotl").setLevel(level)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.propagate = False  # Lightning has its own handler; avoid printing each line twice
        if quiet:
            lg.setLevel(logging.WARNING)


def _error(exc: BaseException) -> int:
    sys.stderr.write(f"astrotl: error: {' '.join(str(exc).split())}\n")
    return 2


#: What to do after an interrupt, per command (the line is ``astrotl: interrupted by SIGTERM; <hint>``).
RESUME_HINTS = {"run": "continue the run with --resume",
                "cutouts": "run the same command again to continue (the files already written are kept)"}


def _is_secondary_rank() -> bool:
    """A DDP process other than rank 0: it stays silent (rank 0 prints the one line)."""
    return any(os.environ.get(k) not in (None, "", "0") for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def _interrupted(signame: str, code: int, command: str | None) -> int:
    from ..rundir import mark_interrupted

    mark_interrupted(signame)
    if not _is_secondary_rank():
        hint = RESUME_HINTS.get(command or "")
        sys.stderr.write(f"astrotl: interrupted by {signame}{'; ' + hint if hint else ''}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``astrotl`` command line; return the exit code (0 ok, 2 user error, 130/143 interrupted)."""
    from ..signals import RunInterrupted, interruptible

    command = None
    try:
        with interruptible():
            from ..plugins import load_registries

            try:
                known = _pre_parse(argv)
                registries = load_registries(disable=known.disable_plugin, strict_disable=True)
                commands = command_modules(registries)
            except AstrotlError as exc:
                return _error(exc)
            parser = _parser(commands)
            args = parser.parse_args(argv)
            if not args.command:
                parser.print_help(sys.stderr)
                return 2
            command = args.command
            args.registries = registries
            _setup_logging(args.verbose, args.quiet)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            by_name = {m.COMMAND: m for m in commands}
            try:
                return by_name[args.command].run(args, sys.stdout)
            except AstrotlError as exc:
                return _error(exc)
    except RunInterrupted as exc:
        return _interrupted(exc.signame, exc.exit_code, command)
    except KeyboardInterrupt:  # before the handlers were installed, or raised by code of its own
        return _interrupted("SIGINT", 130, command)
    except BrokenPipeError:  # e.g. `astrotl list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        if type(exc).__name__ == "SIGTERMException":  # Lightning's own SIGTERM exit (code 0) when ours was not first
            return _interrupted("SIGTERM", 143, command)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
