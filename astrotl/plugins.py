"""Plugin manager and component registries.

Plugins are found through the entry-point group ``astrotl.plugins`` (so a third-party package
is used just by installing it), plus astrotl's own built-in components. A plugin can be
disabled by its entry-point name with ``--disable-plugin NAME`` or the environment variable
``ASTROTL_DISABLE_PLUGINS=name1,name2``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError, did_you_mean
from .interfaces import Backbone, Head, ImageDataset, Task

log = logging.getLogger(__name__)

ENTRYPOINT_GROUP = "astrotl.plugins"
KINDS = {"tasks": Task, "datasets": ImageDataset, "backbones": Backbone, "heads": Head}
SINGULAR = {"tasks": "task", "datasets": "dataset", "backbones": "backbone", "heads": "head"}


class Registry:
    """Components of one kind by name, each remembering the plugin that registered it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}
        self._plugin: dict[str, str] = {}

    def add(self, cls: type, plugin: str) -> None:
        base = KINDS[self.kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {SINGULAR[self.kind]}, but it is not a "
                f"subclass of {base.__module__}.{base.__name__}; return classes, not instances"
            )
        name = getattr(cls, "name", "")
        if not name:
            raise PluginError(f"plugin '{plugin}': {cls.__name__} has no 'name' class attribute; set one (its YAML key)")
        if name.endswith(":*") and not callable(getattr(cls, "resolve_family", None)):
            raise PluginError(f"plugin '{plugin}': {cls.__name__} is registered as the family '{name}' but has no "
                              f"classmethod resolve_family(suffix, registry) returning the class for '{name[:-1]}<suffix>'")
        if name in self._items and self._items[name] is not cls:
            raise PluginError(
                f"{SINGULAR[self.kind]} name '{name}' is registered twice, by '{self._plugin[name]}' "
                f"and '{plugin}'; rename one or disable a plugin with --disable-plugin"
            )
        self._items[name] = cls
        self._plugin[name] = plugin

    def get(self, name: str) -> type:
        """The class registered as ``name``.

        A class registered under a *family* name ``"prefix:*"`` (e.g. ``timm:*``) answers every
        ``prefix:<anything>`` through its classmethod ``resolve_family(suffix, registry)``, which
        returns a concrete class (or raises :class:`UnknownNameError` with a "did you mean").
        """
        if name in self._items:
            return self._items[name]
        prefix, sep, suffix = str(name).partition(":")
        family = self._items.get(f"{prefix}:*") if sep else None
        if family is not None:
            return family.resolve_family(suffix, self)
        if sep:
            families = [n[:-1] for n in self._items if n.endswith(":*")]
            raise UnknownNameError(
                f"unknown {SINGULAR[self.kind]} family '{prefix}:'{did_you_mean(prefix + ':', families)}; "
                f"families: {', '.join(f'{f}<name>' for f in sorted(families)) or 'none'}"
            )
        raise UnknownNameError(
            f"unknown {SINGULAR[self.kind]} '{name}'{did_you_mean(name, self._items)}; "
            f"`astrotl list {self.kind}` shows the {len(self._items)} available"
        )

    def plugin_of(self, name: str) -> str:
        if name not in self._plugin and ":" in name:
            return self._plugin[f"{name.partition(':')[0]}:*"]
        return self._plugin[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        prefix, sep, _ = str(name).partition(":")
        return bool(sep) and f"{prefix}:*" in self._items

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Registries:
    """All registries plus the plugin manager that filled them."""

    pm: pluggy.PluginManager
    tasks: Registry = field(default_factory=lambda: Registry("tasks"))
    datasets: Registry = field(default_factory=lambda: Registry("datasets"))
    backbones: Registry = field(default_factory=lambda: Registry("backbones"))
    heads: Registry = field(default_factory=lambda: Registry("heads"))

    def of(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise UnknownNameError(f"unknown component kind '{kind}'{did_you_mean(kind, KINDS)}; use one of {', '.join(KINDS)}")
        return getattr(self, kind)

    def find(self, name: str) -> tuple[str, type]:
        """Find a component by name in any registry: ``(kind, class)``."""
        for kind in KINDS:
            if name in self.of(kind):
                return kind, self.of(kind).get(name)
        everything = [n for kind in KINDS for n in self.of(kind)]
        raise UnknownNameError(f"no task, dataset, backbone or head is named '{name}'{did_you_mean(name, everything)}; `astrotl list` shows them")

    def plugins(self) -> list[tuple[str, str, str]]:
        """``(name, module, version)`` of each registered plugin (version of its distribution)."""
        from . import __version__

        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist = dists.get(id(plugin))
            version = getattr(dist, "version", None) or (__version__ if name == "builtin" else "unknown")
            out.append((name, getattr(plugin, "__name__", repr(plugin)), str(version)))
        return sorted(out)

    def plugin_versions(self) -> dict[str, str]:
        """``{plugin name: version}``: what ``run.json`` records."""
        return {name: version for name, _, version in self.plugins()}


def disabled_from_env() -> list[str]:
    raw = os.environ.get("ASTROTL_DISABLE_PLUGINS", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def entrypoint_names() -> list[str]:
    """Names of the plugins installed under the ``astrotl.plugins`` entry-point group."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=ENTRYPOINT_GROUP)})


def make_plugin_manager(
    disable: Iterable[str] = (), extra_plugins: Iterable[tuple[str, Any]] = (), entrypoints: bool = True,
    strict_disable: bool = False,
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the entry-point plugins and ``extra_plugins``.

    Parameters
    ----------
    disable : iterable of str
        Plugin names (entry-point names, or ``builtin``) not to load.
    extra_plugins : iterable of (name, plugin)
        Plugins to register directly (used by tests and embedding applications).
    entrypoints : bool
        Load the ``astrotl.plugins`` entry points.
    strict_disable : bool
        A name in ``disable`` that is no installed plugin is an error (the command line's rule: a
        misspelt ``--disable-plugin`` must not be ignored silently).
    """
    from . import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if strict_disable:
        known = ["builtin", *entrypoint_names(), *(name for name, _ in extra_plugins)]
        for name in [*disable, *disabled_from_env()]:
            if name not in known:
                raise PluginError(f"--disable-plugin '{name}': no plugin of that name is installed"
                                  f"{did_you_mean(name, known)}; installed: {', '.join(known)}")
    blocked = set(disable) | set(disabled_from_env())
    for name in blocked:
        pm.set_blocked(name)
    if "builtin" not in blocked:
        pm.register(builtin, name="builtin")
    if entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRYPOINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must be named, not crash with a traceback
            raise PluginError(f"a plugin in entry-point group '{ENTRYPOINT_GROUP}' failed to import: {exc!r}; "
                              f"fix or uninstall it, or disable it with --disable-plugin NAME") from exc
    for name, plugin in extra_plugins:
        if name not in blocked:
            pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; astrotl hooks are named astrotl_register_tasks/datasets/backbones/heads "
                          f"and astrotl_run_finished (see astrotl.hookspecs)") from exc
    return pm


def load_registries(
    disable: Iterable[str] = (), extra_plugins: Iterable[tuple[str, Any]] = (), entrypoints: bool = True,
    strict_disable: bool = False,
) -> Registries:
    """Build the registries by calling every plugin's ``astrotl_register_*`` hooks."""
    pm = make_plugin_manager(disable=disable, extra_plugins=extra_plugins, entrypoints=entrypoints,
                             strict_disable=strict_disable)
    regs = Registries(pm=pm)
    for kind in KINDS:
        caller = getattr(pm.hook, f"astrotl_register_{kind}")
        for impl in caller.get_hookimpls():
            result = impl.function()
            if result is None:
                continue
            if not isinstance(result, (list, tuple)):
                raise PluginError(f"plugin '{impl.plugin_name}': astrotl_register_{kind} must return a list of classes, got {type(result).__name__}")
            for cls in result:
                regs.of(kind).add(cls, impl.plugin_name)
    return regs
