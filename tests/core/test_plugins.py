"""Plugin discovery, registration, disabling and validation."""

from __future__ import annotations

import textwrap
import types

import pytest

from astrotl import hookimpl
from astrotl.errors import PluginError, UnknownNameError
from astrotl.plugins import load_registries
from astrotl.tasks.classification import ClassificationTask
from testutils import run_cli_subprocess


def test_builtin_and_phangs_components_registered():
    regs = load_registries()
    assert {"resnet18", "vgg19_bn"} <= set(regs.backbones.names())
    assert "phangs_clusters" in regs.tasks and regs.tasks.plugin_of("phangs_clusters") == "phangs"
    assert "phangs_sim" in regs.datasets
    assert {"linear", "mlp"} <= set(regs.heads.names())


def _plugin(**hooks):
    mod = types.ModuleType("throwaway")
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    return mod


class ThrowawayTask(ClassificationTask):
    """A task from a throwaway plugin."""

    name = "throwaway_task"


def test_registered_plugin_adds_a_task():
    regs = load_registries(extra_plugins=[("throwaway", _plugin(astrotl_register_tasks=lambda: [ThrowawayTask]))])
    assert regs.tasks.get("throwaway_task") is ThrowawayTask
    assert regs.tasks.plugin_of("throwaway_task") == "throwaway"


def test_misspelt_hook_is_an_error():
    bad = _plugin(astrotl_register_taks=lambda: [ThrowawayTask])
    with pytest.raises(PluginError, match="astrotl_register_taks"):
        load_registries(extra_plugins=[("bad", bad)])


def test_duplicate_name_is_an_error_naming_both_plugins():
    class Clash(ClassificationTask):
        """Clashing name."""

        name = "phangs_clusters"

    with pytest.raises(PluginError, match="'phangs_clusters' is registered twice, by 'phangs' and 'dup'"):
        load_registries(extra_plugins=[("dup", _plugin(astrotl_register_tasks=lambda: [Clash]))])


def test_registering_an_instance_or_wrong_type_is_an_error():
    with pytest.raises(PluginError, match="not a subclass of astrotl.interfaces.Task"):
        load_registries(extra_plugins=[("bad", _plugin(astrotl_register_tasks=lambda: [object]))])
    with pytest.raises(PluginError, match="must return a list of classes"):
        load_registries(extra_plugins=[("bad", _plugin(astrotl_register_tasks=lambda: ThrowawayTask))])


def test_component_without_name_is_an_error():
    class Nameless(ClassificationTask):
        """No name."""

        name = ""

    with pytest.raises(PluginError, match="has no 'name'"):
        load_registries(extra_plugins=[("bad", _plugin(astrotl_register_tasks=lambda: [Nameless]))])


def test_disable_plugin_by_name(monkeypatch):
    regs = load_registries(disable=["phangs"])
    assert "phangs_clusters" not in regs.tasks
    with pytest.raises(UnknownNameError, match="unknown task 'phangs_clusters'"):
        regs.tasks.get("phangs_clusters")
    monkeypatch.setenv("ASTROTL_DISABLE_PLUGINS", "phangs")
    assert "phangs_sim" not in load_registries().datasets


def test_third_party_plugin_installed_via_entry_point(tmp_path):
    """A plugin installed as a distribution (dist-info with an entry point) shows up in `astrotl list`."""
    (tmp_path / "astrotl_throwaway.py").write_text(textwrap.dedent('''
        from astrotl import hookimpl
        from astrotl.tasks.classification import ClassificationTask

        class GalaxyBarsTask(ClassificationTask):
            """Find bars in galaxies (throwaway test plugin)."""
            name = "galaxy_bars"

        @hookimpl
        def astrotl_register_tasks():
            return [GalaxyBarsTask]
    '''))
    dist = tmp_path / "astrotl_throwaway-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: astrotl-throwaway\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[astrotl.plugins]\nthrowaway = astrotl_throwaway\n")
    env = {"PYTHONPATH": str(tmp_path)}
    res = run_cli_subprocess("list", "tasks", env=env)
    assert res.returncode == 0, res.stderr
    assert "galaxy_bars" in res.stdout and "(plugin: throwaway)" in res.stdout
    res = run_cli_subprocess("list", "plugins", env=env)
    assert "throwaway" in res.stdout
    res = run_cli_subprocess("--disable-plugin", "throwaway", "list", "tasks", env=env)
    assert res.returncode == 0 and "galaxy_bars" not in res.stdout


def test_broken_third_party_plugin_is_named(tmp_path):
    (tmp_path / "astrotl_broken.py").write_text("raise ImportError('needs libfoo')\n")
    dist = tmp_path / "astrotl_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: astrotl-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[astrotl.plugins]\nbroken = astrotl_broken\n")
    res = run_cli_subprocess("list", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "failed to import" in res.stderr and "--disable-plugin" in res.stderr
    ok = run_cli_subprocess("--disable-plugin", "broken", "list", env={"PYTHONPATH": str(tmp_path)})
    assert ok.returncode == 0
