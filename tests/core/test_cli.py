"""The command line: list / schema / validate, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from testutils import REPO, run_cli_subprocess


def test_list_all_kinds(cli):
    code, out, err = cli("list")
    assert code == 0
    for word in ("tasks:", "datasets:", "backbones:", "heads:", "phangs_clusters", "phangs_sim", "resnet18", "vgg19_bn"):
        assert word in out


def test_list_one_kind_and_plugins(cli):
    code, out, _ = cli("list", "backbones")
    assert code == 0 and "resnet18" in out and "phangs_sim" not in out and "weights:" in out
    code, out, _ = cli("list", "plugins")
    assert code == 0 and "phangs" in out and "builtin" in out


def test_list_unknown_kind(cli):
    code, out, err = cli("list", "backbone")
    assert code == 2 and "did you mean 'backbones'" in err and err.count("\n") == 1


def test_schema_of_components_and_sections(cli):
    code, out, _ = cli("schema", "phangs_sim")
    assert code == 0
    schema = json.loads(out)
    assert "n_train" in schema["properties"] and schema["additionalProperties"] is False
    code, out, _ = cli("schema", "trainer")
    assert code == 0 and "max_epochs" in json.loads(out)["properties"]
    code, out, err = cli("schema", "resnet19")
    assert code == 2 and "did you mean 'resnet18'" in err


def test_validate_ok_and_print(cli, tiny_task):
    code, out, _ = cli("validate", tiny_task())
    assert code == 0 and out.startswith("OK:") and "task phangs_clusters" in out
    code, out, _ = cli("validate", tiny_task(), "--print", "--set", "trainer.max_epochs=4")
    assert code == 0 and yaml.safe_load(out)["trainer"]["max_epochs"] == 4


def test_validate_shipped_default_task(cli):
    code, out, err = cli("validate", REPO / "tasks" / "phangs_clusters.yaml")
    assert code == 0, err


def _bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntask: {name: phangs_clusters\n")
    return p


@pytest.mark.parametrize("case", ["unknown_task", "unknown_backbone", "unknown_key", "bad_value", "yaml_syntax",
                                  "missing_file", "bad_set", "missing_weights_file"])
def test_bad_input_one_line_exit_2_no_run_dir(cli, tiny_task, tmp_path, case):
    args = {
        "unknown_task": lambda: ["run", tiny_task(task={"name": "phangs"})],
        "unknown_backbone": lambda: ["run", tiny_task(backbone={"name": "resnet"})],
        "unknown_key": lambda: ["run", tiny_task(data={"n_trian": 5})],
        "bad_value": lambda: ["run", tiny_task(data={"n_train": -1})],
        "yaml_syntax": lambda: ["run", _bad_yaml(tmp_path)],
        "missing_file": lambda: ["run", tmp_path / "missing.yaml"],
        "bad_set": lambda: ["run", tiny_task(), "--set", "trainer"],
        "missing_weights_file": lambda: ["run", tiny_task(backbone={"weights": str(tmp_path / "nope.safetensors")})],
    }[case]()
    code, out, err = cli(*args)
    assert code == 2
    assert err.startswith("astrotl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "bad input must not leave a run directory"


def test_real_process_exit_code_and_no_traceback(tiny_task):
    res = run_cli_subprocess("run", tiny_task(backbone={"name": "resnt18"}))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "did you mean 'resnet18'" in res.stderr


def test_no_command_prints_help(cli):
    code, out, err = cli()
    assert code == 2 and "usage" in err.lower()
