"""astrotl's built-in plugin: generic data sets, backbones, heads and tasks (no survey knowledge)."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .datasets import BUILTIN_DATASETS

    return list(BUILTIN_DATASETS)


@hookimpl
def astrotl_register_backbones():
    from .backbones import BUILTIN_BACKBONES

    return list(BUILTIN_BACKBONES)


@hookimpl
def astrotl_register_heads():
    from .heads import BUILTIN_HEADS

    return list(BUILTIN_HEADS)


@hookimpl
def astrotl_register_tasks():
    from .tasks import builtin_tasks

    return builtin_tasks()


@hookimpl
def astrotl_register_commands():
    from .cli import compare, cutouts, ensemble, explain, weights
    from .cli.core import COMMANDS

    return [*COMMANDS, ensemble, cutouts, weights, compare, explain]
