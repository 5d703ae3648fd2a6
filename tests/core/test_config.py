"""Task-file loading and validation: every error path names the problem, the line and the fix."""

from __future__ import annotations

import pytest
import yaml

from astrotl.config import apply_overrides, expand_env, load_config, load_yaml
from astrotl.errors import ConfigError, UnknownNameError
from astrotl.plugins import load_registries


@pytest.fixture(scope="module")
def regs():
    return load_registries()


def test_valid_file_resolves_with_defaults(tiny_task, regs):
    cfg = load_config(tiny_task(), regs)
    d = cfg.to_dict()
    assert d["task"]["name"] == "phangs_clusters"
    assert d["task"]["augment"] == "d4"  # default filled in
    assert d["task"]["combine"] == {"1+2": ["1", "2"]}
    assert d["backbone"]["weights"] == "none"
    assert d["trainer"]["early_stopping"]["patience"] == 5
    # the resolved config is itself a valid task file and round-trips
    again = load_config(_write(tiny_task().parent / "again.yaml", d), regs)
    assert again.to_dict() == d


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_task_files_validate(regs):
    from testutils import REPO

    files = sorted((REPO / "tasks").rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f, regs)


def test_unknown_top_level_key_did_you_mean_with_line(tmp_path, tiny_task, regs):
    p = tiny_task()
    text = p.read_text().replace("seed: 0", "sede: 0")
    p.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("sede"))
    with pytest.raises(ConfigError, match=rf"line {line}: unknown key 'sede' \(did you mean 'seed'\?\)"):
        load_config(p, regs)


def test_unknown_component_key_did_you_mean(tiny_task, regs):
    p = tiny_task(backbone={"name": "resnet18", "weigths": "none"})
    with pytest.raises(ConfigError, match=r"unknown key 'backbone.weigths' \(did you mean 'weights'\?\)"):
        load_config(p, regs)


def test_unknown_nested_key_lists_valid_keys(tiny_task, regs):
    p = tiny_task(trainer={"early_stopping": {"patiense": 2}})
    with pytest.raises(ConfigError, match=r"trainer.early_stopping.patiense' \(did you mean 'patience'\?\).*valid keys"):
        load_config(p, regs)


@pytest.mark.parametrize("section,bad,good", [
    ("task", "phangs_cluster", "phangs_clusters"),
    ("data", "phangs_simm", "phangs_sim"),
    ("backbone", "resnet81", "resnet18"),
    ("head", "linaer", "linear"),
])
def test_unknown_names_did_you_mean(tiny_task, regs, section, bad, good):
    p = tiny_task(**{section: {"name": bad}})
    with pytest.raises(UnknownNameError, match=rf"unknown \w+ '{bad}' \(did you mean '{good}'\?\)"):
        load_config(p, regs)


def test_missing_name_in_section(tiny_task, regs):
    p = tiny_task()
    data = yaml.safe_load(p.read_text())
    data["head"] = {"dropout": 0.1}
    _write(p, data)
    with pytest.raises(ConfigError, match="section 'head' needs a 'name'"):
        load_config(p, regs)


def test_bad_value_names_key_and_value(tiny_task, regs):
    p = tiny_task(trainer={"max_epochs": 0})
    with pytest.raises(ConfigError, match=r"bad value 0 for 'trainer.max_epochs'.*greater than or equal to 1"):
        load_config(p, regs)


def test_component_validator_message(tiny_task, regs):
    p = tiny_task(data={"mag_range": [25, 20]})
    with pytest.raises(ConfigError, match="mag_range must be"):
        load_config(p, regs)


def test_yaml_syntax_error_reports_line(tmp_path, regs):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\ntask:\n  name: phangs_clusters\n   bad_indent: 1\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*broken.yaml' line 4"):
        load_config(p, regs)


def test_missing_file(tmp_path, regs):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", regs)


def test_empty_and_non_mapping_files(tmp_path, regs):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_yaml(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_missing_required_section(tmp_path, regs):
    p = _write(tmp_path / "x.yaml", {"name": "x", "task": {"name": "phangs_clusters"}, "data": {"name": "phangs_sim"}})
    with pytest.raises(ConfigError, match="missing required key 'backbone'"):
        load_config(p, regs)


def test_run_name_must_be_a_safe_directory_name(tiny_task, regs):
    with pytest.raises(ConfigError, match="bad value '../evil' for 'name'"):
        load_config(tiny_task(), regs, ["name=../evil"])


def test_overrides_parse_types_and_create_sections():
    data = {"trainer": {"max_epochs": 3}, "data": {"name": "x"}}
    out = apply_overrides(data, ["trainer.max_epochs=7", "data.mag_range=[20, 23]", "optim.lr=1e-2", "name=abc"])
    assert out["trainer"]["max_epochs"] == 7
    assert out["data"]["mag_range"] == [20, 23]
    assert out["optim"]["lr"] == 0.01
    assert out["name"] == "abc"
    assert data["trainer"]["max_epochs"] == 3  # input untouched


@pytest.mark.parametrize("bad,match", [("trainer.max_epochs", "not of the form"), ("trainer..x=1", "empty key"),
                                       ("name.sub=1", "is a value, not a section")])
def test_bad_overrides(bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({"name": "x"}, [bad])


def test_override_typo_is_caught(tiny_task, regs):
    with pytest.raises(ConfigError, match=r"did you mean 'max_epochs'"):
        load_config(tiny_task(), regs, ["trainer.max_epoch=2"])


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("ASTRO_X", "/data")
    monkeypatch.delenv("ASTRO_UNSET", raising=False)
    assert expand_env({"a": "${ASTRO_X}/gz1", "b": ["${ASTRO_UNSET:-../shared}/y"]}) == {"a": "/data/gz1", "b": ["../shared/y"]}
    with pytest.raises(ConfigError, match="environment variable ASTRO_UNSET is not set"):
        expand_env("${ASTRO_UNSET}/z")


def test_empty_variable_never_makes_a_root_path(monkeypatch):
    """Issue 8 group 4: `output_dir: ${EMPTY}/runs` with EMPTY="" must not become /runs."""
    monkeypatch.setenv("ASTRO_EMPTY", "")
    with pytest.raises(ConfigError, match=r"output_dir: environment variable ASTRO_EMPTY is set but empty"):
        expand_env({"output_dir": "${ASTRO_EMPTY}/runs"})
    # as in the shell, ${VAR:-default} takes the default when VAR is empty, not only when unset
    assert expand_env("${ASTRO_EMPTY:-scratch}/runs") == "scratch/runs"
    with pytest.raises(ConfigError, match=r"expands to nothing.*starting at the root"):
        expand_env("${ASTRO_EMPTY:-}/runs")
    with pytest.raises(ConfigError, match=r"data.root: .*expands to nothing.*empty folder name"):
        expand_env({"data": {"root": "data/${ASTRO_UNSET_X:-}/gz1"}})
    assert expand_env("run${ASTRO_EMPTY:-}s") == "runs"  # an empty part inside a name is fine


def test_empty_variable_in_a_task_file_is_refused_before_anything_is_written(cli, tiny_task, tmp_path, monkeypatch):
    import yaml

    p = tiny_task()
    data = yaml.safe_load(p.read_text())
    data["output_dir"] = "${ASTRO_EMPTY}/astrotl-test-runs"
    p.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ASTRO_EMPTY", "")
    code, out, err = cli("run", p)
    assert code == 2 and "ASTRO_EMPTY is set but empty" in err and err.count("\n") == 1
    from pathlib import Path

    assert not Path("/astrotl-test-runs").exists()


def test_a_key_given_twice_is_an_error(tmp_path):
    """Issue 8 group 6: YAML keeps the last of two equal keys without a word (e.g. a band given twice)."""
    p = tmp_path / "t.yaml"
    p.write_text("name: x\ndata:\n  images:\n    F555W: a.fits\n    F814W: b.fits\n    F555W: c.fits\n")
    with pytest.raises(ConfigError, match=r"line 6: key 'F555W' is given twice in the same section \(first on line 4\)"):
        load_yaml(p)
    p.write_text("base: &b {a: 1}\nother:\n  <<: *b\n  a: 2\n")  # a merge key overriding is legitimate YAML
    assert load_yaml(p)[0]["other"] == {"a": 2}
