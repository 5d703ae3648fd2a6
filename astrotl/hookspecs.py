"""Hook specifications: the one place that says what a plugin can provide.

A plugin is a module (or object) with functions named like the specs below, decorated with
:data:`astrotl.hookimpl`, and announced under the entry-point group ``astrotl.plugins``::

    # pyproject.toml of a plugin
    [project.entry-points."astrotl.plugins"]
    mything = "astrotl_mything"

    # astrotl_mything/__init__.py
    from astrotl import hookimpl

    @hookimpl
    def astrotl_register_tasks():
        return [MyThingTask]

Hooks are called with keyword arguments only. Each ``astrotl_register_*`` hook returns a list of
component classes; the class attribute ``name`` becomes the YAML key. Two plugins registering
the same name is an error naming both.
"""

from __future__ import annotations

import pluggy

PROJECT = "astrotl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration phase: called once when the registries are built ---------------------------


@hookspec
def astrotl_register_datasets() -> list[type]:
    """Return :class:`astrotl.interfaces.ImageDataset` subclasses to register."""


@hookspec
def astrotl_register_backbones() -> list[type]:
    """Return :class:`astrotl.interfaces.Backbone` subclasses to register."""


@hookspec
def astrotl_register_heads() -> list[type]:
    """Return :class:`astrotl.interfaces.Head` subclasses to register."""


@hookspec
def astrotl_register_tasks() -> list[type]:
    """Return :class:`astrotl.interfaces.Task` subclasses to register."""


@hookspec
def astrotl_register_commands() -> list:
    """Return command modules (or objects) adding ``astrotl`` sub-commands.

    Each has ``COMMAND`` (the sub-command name), ``add_parser(subparsers)`` (adds an argparse
    sub-parser named ``COMMAND``) and ``run(args, out) -> int`` (the exit code; raise
    :class:`astrotl.errors.AstrotlError` for user errors).
    """


# -- run phase: called by the engine around a run --------------------------------------------


@hookspec
def astrotl_run_finished(run_dir, config, metrics) -> None:
    """Called on the main process after a run wrote its outputs (e.g. to upload or notify).

    Parameters
    ----------
    run_dir : pathlib.Path
        The finished run directory.
    config : dict
        The resolved configuration.
    metrics : dict
        The metrics written to ``metrics.json``.
    """
