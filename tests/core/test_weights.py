"""Weights: safe loading, first-conv adaptation, the resolution order, metadata, and `astrotl weights`.

Every cache here is fake and lives in tmp_path: a weights dir, a torch hub dir and a Hugging Face
cache with the real ``models--org--name/{refs/main, snapshots/<rev>/...}`` layout.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from astrotl import weights as W
from astrotl.errors import WeightsError



def fake_hf_repo(cache: Path, repo: str, files: dict[str, object], rev: str = "0123abcd", refs: bool = True) -> Path:
    """Write a Hugging Face cache entry: models--org--name/snapshots/<rev>/<files> (+ refs/main)."""
    root = cache / W.hf_repo_folder(repo)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
            save_file(content, str(snap / name))
        elif isinstance(content, (dict, list)):
            (snap / name).write_text(json.dumps(content))
        else:
            (snap / name).write_text(str(content))
    if refs:
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(rev)
    return snap


class Custom:  # a class a pickle would need to import and run: must be refused
    def __init__(self):
        self.x = 1


# -- safe loading ------------------------------------------------------------------------------


def test_load_safetensors_and_pt_and_lightning_ckpt(tmp_path):
    sd = {"a.weight": torch.randn(2, 3), "b.bias": torch.zeros(2)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3,
                "hyper_parameters": {"lr": 0.1, "name": "x"}}, tmp_path / "w.ckpt")
    for f in ("w.safetensors", "w.pt"):
        out = W.load_state_dict_file(tmp_path / f)
        assert torch.equal(out["a.weight"], sd["a.weight"])
    ck = W.strip_prefixes(W.load_state_dict_file(tmp_path / "w.ckpt"))
    assert set(ck) == set(sd)


def test_pickle_with_custom_class_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "extra": Custom()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(WeightsError, match=r"refused to load .*would execute code .*Custom.*state_dict"):
        W.load_state_dict_file(tmp_path / "evil.pt")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo astrotl-test-should-never-print",))


@pytest.mark.parametrize("how", ["torch_zip", "plain_pickle_p2", "plain_pickle_p4", "protocol0_eval"])
def test_malicious_pickle_is_refused_as_code_never_as_truncated(tmp_path, capfd, how):
    """Issue 8 group 7: refused because loading would execute code; torch's hint to use
    weights_only=False (and to allow-list globals) is never passed on."""
    f = tmp_path / "evil.pt"
    if how == "torch_zip":
        torch.save({"w": torch.zeros(1), "x": _RunsCode()}, f)
    elif how == "protocol0_eval":
        f.write_bytes(b"cbuiltins\neval\n(S'print(1)'\ntR.")
    else:
        f.write_bytes(pickle.dumps({"x": _RunsCode()}, protocol=2 if how.endswith("p2") else 4))
    with pytest.raises(WeightsError) as info:
        W.load_state_dict_file(f)
    msg = str(info.value)
    assert "would execute code" in msg and ("system" in msg or "eval" in msg), msg
    for banned in ("weights_only", "truncated", "will likely succeed", "add_safe_globals", "safe_globals", "\n"):
        assert banned not in msg, (banned, msg)
    assert "astrotl-test-should-never-print" not in capfd.readouterr().out


@pytest.mark.parametrize("damage", ["half", "garbage", "empty"])
def test_damaged_torch_file_is_named_damaged(tmp_path, damage):
    torch.save({"w": torch.zeros(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    f = tmp_path / "bad.pt"
    f.write_bytes({"half": data[: len(data) // 2], "garbage": b"hello world" * 40, "empty": b""}[damage])
    with pytest.raises(WeightsError, match=r"cannot be read \(.+\); it is truncated or not a PyTorch file") as info:
        W.load_state_dict_file(f)
    assert "would execute code" not in str(info.value) and "weights_only" not in str(info.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        W.load_state_dict_file(tmp_path / "nope.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        W.load_state_dict_file(tmp_path / "bad.safetensors")
    (tmp_path / "trunc.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(WeightsError, match="cannot be read"):
        W.load_state_dict_file(tmp_path / "trunc.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        W.load_state_dict_file(tmp_path / "list.pt")
    (tmp_path / "vit.npz").write_bytes(b"PK")
    with pytest.raises(WeightsError, match="NumPy archive"):
        W.load_state_dict_file(tmp_path / "vit.npz")


def test_strip_prefixes_takes_the_zoobot_encoder():
    sd = {"encoder.stem.0.weight": torch.zeros(1), "encoder.stages.0.x": torch.zeros(1), "head.linear.weight": torch.zeros(1)}
    assert set(W.strip_prefixes(sd)) == {"stem.0.weight", "stages.0.x"}
    assert set(W.strip_prefixes({"module.net.conv1.weight": torch.zeros(1)})) == {"conv1.weight"}


# -- first-conv adaptation ---------------------------------------------------------------------


def test_adapt_first_conv_repeat_keeps_flat_response():
    w = torch.randn(8, 3, 3, 3)
    new = W.adapt_first_conv(w, 6, "repeat")
    assert new.shape == (8, 6, 3, 3)
    assert torch.allclose(new.sum(dim=1), w.sum(dim=1), atol=1e-5)  # a flat image gives the same response
    five = W.adapt_first_conv(w, 5, "repeat")  # R, G, B, R, G rescaled by 3/5
    assert five.shape == (8, 5, 3, 3) and torch.allclose(five[:, 3], w[:, 0] * 0.6)
    assert torch.equal(W.adapt_first_conv(w, 3), w)
    assert torch.allclose(W.adapt_first_conv(w, 1), w.sum(dim=1, keepdim=True))


def test_adapt_first_conv_map_and_errors():
    w = torch.randn(4, 3, 3, 3)
    bands = ("u", "b", "v", "i", "z")
    new = W.adapt_first_conv(w, 5, "map", bands, ["i", "v", "b"])
    assert torch.equal(new[:, 3], w[:, 0]) and torch.equal(new[:, 2], w[:, 1]) and torch.equal(new[:, 1], w[:, 2])
    assert new[:, [0, 4]].abs().sum() == 0
    with pytest.raises(WeightsError, match="needs rgb_bands"):
        W.adapt_first_conv(w, 5, "map", bands, None)
    with pytest.raises(WeightsError, match=r"\['q'\] are not among the data's bands"):
        W.adapt_first_conv(w, 5, "map", bands, ["q", "v", "b"])
    with pytest.raises(WeightsError, match="only RGB"):
        W.adapt_first_conv(torch.randn(4, 4, 3, 3), 5)
    with pytest.raises(WeightsError, match="unknown input_adapter 'tile'"):
        W.adapt_first_conv(w, 5, "tile")


# -- resolution order --------------------------------------------------------------------------


def test_resolution_order_weights_dir_then_torch_hub_then_hf(env):
    req = W.WeightsRequest(what="test weights", filename="org--net.safetensors", source="test",
                           url="https://example.org/net-abcdef12.pth", hf_repo="org/net")
    assert W.locate(req) is None
    snap = fake_hf_repo(env["hf"], "org/net", {"model.safetensors": {"w": torch.ones(1)}})
    assert W.locate(req) == snap / "model.safetensors"
    hub = env["torch"] / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, hub / "net-abcdef12.pth")
    assert W.locate(req) == hub / "net-abcdef12.pth"
    save_file({"w": torch.ones(1)}, str(env["weights"] / "org--net.safetensors"))
    assert W.locate(req) == env["weights"] / "org--net.safetensors"


def test_hf_cache_without_refs_uses_the_snapshot(env):
    snap = fake_hf_repo(env["hf"], "org/norefs", {"pytorch_model.bin": "x"}, refs=False)
    assert W.find_in_hf_cache("org/norefs", "pytorch_model.bin") == snap / "pytorch_model.bin"


def test_offline_missing_message_names_file_places_and_fix(env):
    req = W.torchvision_request("resnet18")
    with pytest.raises(WeightsError) as exc:
        W.load_request(req)
    msg = str(exc.value)
    assert "not found offline: expected 'resnet18-f37072fd.pth'" in msg
    assert str(env["weights"]) in msg and str(env["torch"]) in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "astrotl weights import resnet18-f37072fd.pth" in msg and "ASTROTL_ALLOW_DOWNLOAD=1" in msg
    zreq = W.zoobot_request("convnext_nano")
    with pytest.raises(WeightsError, match=r"models--mwalmsley--zoobot-encoder-convnext_nano/snapshots/<rev>/model.safetensors.*--for zoobot:convnext_nano"):
        W.load_request(zreq)


def test_download_only_when_allowed(env, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        torch.save({"w": torch.ones(1)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    req = W.WeightsRequest(what="net", filename="net-abcdef12.pth", source="t", url="https://example.org/net-abcdef12.pth")
    assert W.locate(req) is None and calls == []
    monkeypatch.setenv("ASTROTL_ALLOW_DOWNLOAD", "1")
    assert W.locate(req) is None and calls == []  # HF_HUB_OFFLINE=1 still wins
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert W.locate(req) == env["torch"] / "hub" / "checkpoints" / "net-abcdef12.pth"
    assert calls == ["https://example.org/net-abcdef12.pth"]


def test_sha256_is_verified(env, tmp_path):
    hub = env["torch"] / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, hub / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match=r"expected it to start with f37072fd .*corrupt or not the official one"):
        W.load_request(W.torchvision_request("resnet18"))
    f = env["weights"] / "mine.safetensors"
    save_file({"w": torch.ones(1)}, str(f))
    W.sidecar_path(f).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="changed since it was imported"):
        W.load_spec_file("mine")


def test_metadata_from_safetensors_and_sidecar(env):
    f = env["weights"] / "astro.safetensors"
    save_file({"w": torch.ones(1)}, str(f), metadata={"bands": json.dumps(["g", "r", "i"]), "backbone": "resnet18"})
    W.sidecar_path(f).write_text(json.dumps({"licence": "CC-BY-4.0", "normalisation": {"mean": [0.1]}}))
    state, info = W.load_spec_file("astro")  # a bare name is looked up in the weights dir
    assert info["source"] == "file" and info["trained_bands"] == ["g", "r", "i"]
    assert info["licence"] == "CC-BY-4.0" and info["normalisation"] == {"mean": [0.1]}
    assert len(info["sha256"]) == 64 and info["path"] == str(f.resolve())
    with pytest.raises(WeightsError, match="not a file, not run:<dir>, and not a name in the weights directory"):
        W.load_spec_file("nothing-here")


def test_run_dir_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist .*astrotl run tasks/gz1_pretrain.yaml"):
        W.resolve_run_dir(f"run:{tmp_path / 'missing'}")
    (tmp_path / "half").mkdir()
    with pytest.raises(WeightsError, match="has no backbone.safetensors: the run did not finish"):
        W.resolve_run_dir(f"run:{tmp_path / 'half'}")


def test_unknown_torchvision_tag(env):
    with pytest.raises(WeightsError, match="unknown torchvision weight tag 'IMAGENET1K_V9' for resnet50; .*IMAGENET1K_V2"):
        W.torchvision_request("resnet50", "IMAGENET1K_V9")


# -- CLI -------------------------------------------------------------------------------------


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "pre"
    run.mkdir(parents=True)
    save_file({"net.conv1.weight": torch.randn(4, 3, 3, 3)}, str(run / "backbone.safetensors"),
              metadata={"backbone": "resnet18", "bands": json.dumps(["g", "r", "i"]), "task": "classification"})
    (run / "run.json").write_text(json.dumps({"weights": {"source": "random"}}))
    return run


def test_cli_weights_list(env, tmp_path, cli):
    save_file({"w": torch.ones(2)}, str(env["weights"] / "mine.safetensors"))
    fake_hf_repo(env["hf"], "mwalmsley/zoobot-encoder-convnext_nano", {"model.safetensors": {"w": torch.ones(1)}})
    run = _run_dir(tmp_path)
    code, out, err = cli("weights", "list", "--runs", tmp_path / "runs")
    assert code == 0, err
    assert "mine.safetensors" in out and "weights-dir" in out
    assert "zoobot:convnext_nano" in out and "hf-cache" in out
    assert f"run:{run}" in out and "resnet18 trained by task classification" in out


def test_cli_weights_info_and_offline_failure(env, tmp_path, cli):
    run = _run_dir(tmp_path)
    code, out, err = cli("weights", "info", f"run:{run}")
    assert code == 0, err
    assert "sha256:" in out and "first conv: conv1.weight (4, 3, 3, 3) -> 3 input band(s)" in out
    assert 'bands:    ["g", "r", "i"]' in out and f"use as:   weights: run:{run}" in out
    code, out, err = cli("weights", "info", "resnet50:IMAGENET1K_V2")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("astrotl: error: ImageNet weights for resnet50 (torchvision IMAGENET1K_V2) not found offline")
    code, out, err = cli("weights", "info", "nonsense")
    assert code == 2 and "is not a file, run:<dir>" in err


def test_cli_weights_info_subprocess_offline_one_line(env, tmp_path):
    from tests.conftest import run_cli_subprocess

    r = run_cli_subprocess("weights", "info", "zoobot:convnext_nano", timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Zoobot encoder 'convnext_nano'" in r.stderr and "Traceback" not in r.stderr


def test_cli_weights_import(env, tmp_path, cli):
    src = tmp_path / "carried" / "model.safetensors"
    src.parent.mkdir()
    save_file({"w": torch.ones(3)}, str(src))
    code, out, err = cli("weights", "import", src, "--for", "zoobot:convnext_nano", "--licence", "apache-2.0")
    assert code == 0, err
    dest = env["weights"] / "mwalmsley--zoobot-encoder-convnext_nano.safetensors"
    assert dest.is_file() and "use as:   weights: zoobot" in out
    side = json.loads(W.sidecar_path(dest).read_text())
    assert side["sha256"] == W.file_record(src)["sha256"] and side["licence"] == "apache-2.0"
    assert side["for"] == "zoobot:convnext_nano" and side["imported_from"] == str(src.resolve())
    assert W.locate(W.zoobot_request("convnext_nano")) == dest
    code, out, err = cli("weights", "import", src, "--for", "zoobot:convnext_nano")
    assert code == 2 and "already exists; pass --force" in err
    torch.save({"x": Custom()}, tmp_path / "evil.pt")
    code, out, err = cli("weights", "import", tmp_path / "evil.pt")
    assert code == 2 and "refused to load" in err and not (env["weights"] / "evil.pt").exists()


def test_cli_weights_export(env, tmp_path, cli):
    run = _run_dir(tmp_path)
    code, out, err = cli("weights", "export", run, "--name", "gz1-r18")
    assert code == 0, err
    dest = env["weights"] / "gz1-r18.safetensors"
    assert dest.is_file() and "weights: gz1-r18" in out
    side = json.loads(W.sidecar_path(dest).read_text())
    assert side["source"].startswith("astrotl run") and side["run_weights"] == {"source": "random"}
    state, info = W.load_spec_file("gz1-r18")
    assert info["trained_backbone"] == "resnet18" and info["trained_bands"] == ["g", "r", "i"]
    code, out, err = cli("weights", "export", tmp_path / "runs" / "nope")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("sub", ["import", "export"])
@pytest.mark.parametrize("name", ["../escaped", "../../escaped.safetensors", "/tmp/astrotl-escaped", "sub/dir",
                                  "..", ".hidden", "", "a\\b"])
def test_cli_weights_name_cannot_escape_the_weights_dir(env, tmp_path, cli, sub, name):
    """Issue 8 group 4: --name is a plain file name in the weights dir, nothing else."""
    src = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(3)}, str(src))
    arg = src if sub == "import" else _run_dir(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = cli("weights", sub, arg, "--name", name)
    assert code == 2 and err.startswith("astrotl: error: --name") and "plain file name" in err
    assert err.count("\n") == 1 and sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/astrotl-escaped").exists() and not Path("/tmp/astrotl-escaped.safetensors").exists()


def test_cli_weights_import_into_a_weights_dir_that_is_a_file(env, tmp_path, cli, monkeypatch):
    src = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(3)}, str(src))
    (tmp_path / "wfile").write_text("not a folder")
    monkeypatch.setenv("ASTROTL_WEIGHTS_DIR", str(tmp_path / "wfile"))
    code, out, err = cli("weights", "import", src)
    assert code == 2 and "cannot write" in err and "not a folder" in err and err.count("\n") == 1
    assert (tmp_path / "wfile").read_text() == "not a folder"
