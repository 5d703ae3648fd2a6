"""Backbones: the registry (families timm:, zoobot:, run:), every weights resolution path with fake
caches in tmp_path, N-band first-conv adaptation, and `astrotl list backbones`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from astrotl import backbones as B
from astrotl import weights as W
from astrotl.errors import ConfigError, RandomInitWarning, UnknownNameError, WeightsError
from astrotl.plugins import load_registries

BANDS5 = ("F275W", "F336W", "F438W", "F555W", "F814W")


@pytest.fixture(scope="module")
def regs():
    return load_registries()



def make(regs, name: str, in_chans: int = 5, bands=BANDS5, **cfg):
    cls = regs.backbones.get(name)
    return cls(cls.Config(**cfg), in_chans=in_chans, bands=tuple(bands)[:in_chans])


def hf_repo(cache: Path, repo: str, state: dict, config: dict | None, rev: str = "9f8e7d6c") -> Path:
    root = cache / W.hf_repo_folder(repo)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    if config is not None:
        (snap / "config.json").write_text(json.dumps(config))
    (snap / "README.md").write_text("---\nlibrary_name: timm\nlicense: apache-2.0\n---\n# test\n")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    return snap


def atto_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=0).state_dict()


ZOOBOT_CFG = {"architecture": "convnext_atto", "num_classes": 0, "num_features": 320,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "first_conv": "stem.0"}}


# -- registry -----------------------------------------------------------------------------------


def test_families_resolve_and_are_cached(regs):
    cls = regs.backbones.get("timm:resnet10t")
    assert cls.name == "timm:resnet10t" and regs.backbones.get("timm:resnet10t") is cls
    assert "timm:resnet10t" in regs.backbones and "timm:*" in regs.backbones.names()
    assert regs.backbones.plugin_of("timm:resnet10t") == "builtin"
    for name in ("resnet18", "resnet50", "vgg16", "vgg19_bn", "convnext_tiny"):
        assert name in regs.backbones


def test_unknown_names_say_did_you_mean(regs):
    with pytest.raises(UnknownNameError, match=r"unknown timm model 'resnt10t' \(did you mean 'resnet10t'\?\)"):
        regs.backbones.get("timm:resnt10t")
    with pytest.raises(UnknownNameError, match=r"unknown backbone family 'tim:' \(did you mean 'timm:'\?\)"):
        regs.backbones.get("tim:resnet10t")
    with pytest.raises(UnknownNameError, match=r"unknown Zoobot encoder 'convnxt_nano' \(did you mean 'convnext_nano'\?\)"):
        regs.backbones.get("zoobot:convnxt_nano")
    with pytest.raises(UnknownNameError, match="needs a model name"):
        regs.backbones.get("timm:")
    with pytest.raises(WeightsError, match="does not exist"):
        regs.backbones.get("run:/no/such/run")


def test_config_with_family_name_validates_and_round_trips(regs, tmp_path):
    from astrotl.config import resolve

    data = {"name": "t", "task": {"name": "classification"}, "data": {"name": "phangs_sim"},
            "backbone": {"name": "timm:resnet10t", "weights": "none", "n_blocks": 2}}
    cfg = resolve(data, regs)
    assert cfg.to_dict()["backbone"]["name"] == "timm:resnet10t"
    bad = dict(data, backbone={"name": "timm:resnet10t", "n_block": 2})
    with pytest.raises(ConfigError, match=r"unknown key 'backbone.n_block' \(did you mean 'n_blocks'\?\)"):
        resolve(bad, regs)


def test_list_backbones_shows_families_and_weight_options(cli):
    code, out, err = cli("list", "backbones")
    assert code == 0, err
    assert "timm:*" in out and "zoobot:*" in out and "run:*" in out and "convnext_tiny" in out
    assert "[weights: zoobot (default)" in out and "<torchvision tag>" in out and "hf-hub:<org/repo>" in out


# -- architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "convnext_tiny", "timm:resnet10t", "timm:convnext_atto"])
def test_random_backbones_any_bands(regs, env, name):
    bb = make(regs, name, weights="none")
    x = torch.randn(2, 5, 32, 32)
    assert bb(x).shape == (2, bb.num_features)
    assert bb.forward_features(x).shape[:2] == (2, bb.feature_channels)
    assert bb.weights_info["source"] == "random" and bb.weights_info["warning"] is None
    assert len(bb.blocks()) >= 4 and hasattr(bb, "net")


# -- weights: torchvision ---------------------------------------------------------------------


def test_imagenet_offline_error_and_auto_warning(regs, env):
    with pytest.raises(WeightsError, match=r"ImageNet weights for resnet18 .* not found offline: expected 'resnet18-f37072fd.pth'"):
        make(regs, "resnet18", weights="imagenet")
    with pytest.warns(RandomInitWarning, match="RANDOM INITIALISATION"):
        bb = make(regs, "resnet18", weights="auto")
    assert bb.weights_info["source"] == "random" and "resnet18-f37072fd.pth" in bb.weights_info["warning"]


def test_torchvision_imagenet_from_torch_hub_adapted_to_5_bands(regs, env, monkeypatch):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    hub = env["torch"] / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    f = hub / "resnet18-f37072fd.pth"
    torch.save(ref.state_dict(), f)
    real = W.torchvision_request("resnet18")
    real.sha256_prefix = W.file_record(f)["sha256"][:8]  # our fake file cannot have torchvision's hash
    monkeypatch.setattr(B, "torchvision_request", lambda arch, tag="DEFAULT": real)
    bb = make(regs, "resnet18", weights="imagenet")
    info = bb.weights_info
    assert info["source"] == "imagenet" and info["path"] == str(f.resolve()) and info["sha256"].startswith(real.sha256_prefix)
    assert info["normalisation"]["mean"] == [0.485, 0.456, 0.406] and "ImageNet" in info["licence"]
    assert info["first_conv"].startswith("adapted 3 -> 5 bands (repeat")
    assert torch.equal(bb.net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.allclose(bb.net.conv1.weight, W.adapt_first_conv(ref.conv1.weight, 5))
    bbm = make(regs, "resnet18", weights="imagenet", input_adapter="map", rgb_bands=["F814W", "F555W", "F438W"])
    assert torch.equal(bbm.net.conv1.weight[:, 4], ref.conv1.weight[:, 0])
    assert bbm.net.conv1.weight[:, :2].abs().sum() == 0


def test_torchvision_weight_tag_request(regs, env):
    with pytest.raises(WeightsError, match=r"resnet50 \(torchvision IMAGENET1K_V2\) not found offline: expected 'resnet50-11ad3fa6.pth'"):
        make(regs, "resnet50", weights="IMAGENET1K_V2")
    with pytest.raises(WeightsError, match=r"convnext_tiny \(torchvision IMAGENET1K_V1\) not found offline"):
        make(regs, "convnext_tiny", weights="imagenet")


# -- weights: timm and Hugging Face cache --------------------------------------------------------


def test_timm_pretrained_from_fake_hf_cache(regs, env):
    torch.manual_seed(2)
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    hf_repo(env["hf"], "timm/resnet10t.c3_in1k", ref.state_dict(), {"architecture": "resnet10t", "num_classes": 1000})
    bb = make(regs, "timm:resnet10t", weights="imagenet")
    assert bb.weights_info["source"] == "imagenet" and "models--timm--resnet10t.c3_in1k" in bb.weights_info["path"]
    assert bb.weights_info["licence"] == "apache-2.0"
    assert torch.equal(bb.net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert bb.net.conv1[0].weight.shape[1] == 5 and "adapted 3 -> 5" in bb.weights_info["first_conv"]
    grey = make(regs, "timm:resnet10t", in_chans=1, bands=("L",), weights="auto")
    assert torch.allclose(grey.net.conv1[0].weight, ref.conv1[0].weight.sum(1, keepdim=True))


def test_timm_auto_without_cache_is_loud_random(regs, env):
    with pytest.warns(RandomInitWarning, match="timm model resnet10t"):
        bb = make(regs, "timm:resnet10t", weights="auto")
    assert bb.weights_info["source"] == "random"


# -- weights: Zoobot ------------------------------------------------------------------------------


def test_zoobot_encoder_from_fake_hf_cache(regs, env):
    state = atto_state(3)
    snap = hf_repo(env["hf"], "mwalmsley/zoobot-encoder-atto_test", state, ZOOBOT_CFG)
    cls = regs.backbones.get("zoobot:atto_test")
    assert cls.model_name == "convnext_atto" and cls.Config().weights == "zoobot"
    bb = cls(cls.Config(), in_chans=5, bands=BANDS5)
    info = bb.weights_info
    assert info["source"] == "zoobot" and info["path"] == str((snap / "model.safetensors").resolve())
    assert info["normalisation"]["mean"] == [0.5, 0.5, 0.5] and info["licence"] == "apache-2.0"
    assert torch.equal(bb.net.stages[3].blocks[1].conv_dw.weight, state["stages.3.blocks.1.conv_dw.weight"])
    assert torch.allclose(bb.net.stem[0].weight, W.adapt_first_conv(state["stem.0.weight"], 5))
    assert bb(torch.randn(2, 5, 32, 32)).shape == (2, 320)
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        cls(cls.Config(weights="imagenet"), in_chans=3, bands=("R", "G", "B"))


def test_zoobot_offline_missing(regs, env):
    cls = regs.backbones.get("zoobot:convnext_pico")  # architecture from the published table
    assert cls.model_name == "convnext_pico"
    with pytest.raises(WeightsError, match=r"Zoobot encoder 'convnext_pico' .* not found offline: expected "
                                           r"'mwalmsley--zoobot-encoder-convnext_pico.safetensors'"):
        cls(cls.Config(), in_chans=3, bands=("R", "G", "B"))


def test_zoobot_weights_dir_flat_file(regs, env):
    state = atto_state(4)
    save_file(state, str(env["weights"] / "mwalmsley--zoobot-encoder-atto_flat.safetensors"))
    W.sidecar_path(env["weights"] / "mwalmsley--zoobot-encoder-atto_flat.safetensors").write_text(
        json.dumps({"hf_config": ZOOBOT_CFG}))
    bb = make(regs, "zoobot:atto_flat", in_chans=3, bands=("g", "r", "i"))
    assert bb.weights_info["source"] == "zoobot" and "first_conv" not in bb.weights_info
    assert torch.equal(bb.net.stem[0].weight, state["stem.0.weight"])


def test_zoobot_finetuned_lightning_checkpoint(regs, env, tmp_path):
    state = atto_state(5)
    hf_repo(env["hf"], "mwalmsley/zoobot-encoder-atto_ckpt", atto_state(6), ZOOBOT_CFG)
    ckpt = {"state_dict": {**{f"encoder.{k}": v for k, v in state.items()},
                           "head.linear.weight": torch.zeros(2, 320), "head.linear.bias": torch.zeros(2)},
            "epoch": 7, "global_step": 70, "pytorch-lightning_version": "2.2.5",
            "hyper_parameters": {"name": "hf_hub:mwalmsley/zoobot-encoder-atto_ckpt", "n_blocks": 2, "learning_rate": 1e-4}}
    torch.save(ckpt, tmp_path / "finetuned.ckpt")
    bb = make(regs, "zoobot:atto_ckpt", weights=str(tmp_path / "finetuned.ckpt"))
    assert bb.weights_info["source"] == "file" and bb.weights_info["path"].endswith("finetuned.ckpt")
    assert torch.equal(bb.net.stages[2].blocks[0].mlp.fc1.weight, state["stages.2.blocks.0.mlp.fc1.weight"])


# -- weights: earlier runs and files --------------------------------------------------------------


def _export(bb, run: Path, data_bands, **extra_meta: str) -> Path:
    run.mkdir(parents=True)
    meta = {"format": "astrotl", "backbone": bb.arch_name, "bands": json.dumps(list(data_bands)),
            "in_chans": str(bb.in_chans), "data": json.dumps({"name": "image_folder", "pixel_norm": "dataset"}),
            **extra_meta}
    save_file({f"net.{k}": v.contiguous() for k, v in bb.net.state_dict().items()}, str(run / "backbone.safetensors"),
              metadata=meta)
    return run


def test_run_backbone_3_band_pretrain_to_5_band_task(regs, env, tmp_path):
    pre = make(regs, "timm:resnet10t", in_chans=3, bands=("i", "r", "g"), weights="none")
    run = _export(pre, tmp_path / "runs" / "gz1_pretrain", ("i", "r", "g"))
    bb = make(regs, "timm:resnet10t", weights=f"run:{run}")
    info = bb.weights_info
    assert info["source"] == "run" and info["run"] == str(run) and info["trained_bands"] == ["i", "r", "g"]
    assert info["trained_data"] == "image_folder" and "adapted 3 -> 5 bands (repeat; from ['i', 'r', 'g']" in info["first_conv"]
    assert torch.equal(bb.net.layer4[0].conv2.weight, pre.net.layer4[0].conv2.weight)
    cls = regs.backbones.get(f"run:{run}")  # the architecture comes from the run's metadata
    assert cls.name == f"run:{run}" and cls.Config().weights == f"run:{run}" and cls.arch_name == "timm:resnet10t"
    again = cls(cls.Config(n_blocks=1), in_chans=5, bands=BANDS5)
    assert torch.equal(again.net.layer1[0].conv1.weight, pre.net.layer1[0].conv1.weight)
    assert again.export_metadata()["backbone"] == "timm:resnet10t"
    with pytest.raises(WeightsError, match=r"hold a 'timm:resnet10t' backbone but this backbone is 'resnet18'"):
        make(regs, "resnet18", weights=f"run:{run}")


def test_same_bands_in_another_order_are_reordered(regs, env, tmp_path):
    # GZ1 (i, r, g) weights on g, r, i data: the first convolution's input channels follow the bands, not the slots
    pre = make(regs, "timm:resnet10t", in_chans=3, bands=("i", "r", "g"), weights="none")
    run = _export(pre, tmp_path / "runs" / "gz1_pretrain", ("i", "r", "g"))
    bb = make(regs, "timm:resnet10t", in_chans=3, bands=("g", "r", "i"), weights=f"run:{run}")
    w0, w = pre.net.conv1[0].weight, bb.net.conv1[0].weight
    assert torch.equal(w[:, 0], w0[:, 2]) and torch.equal(w[:, 1], w0[:, 1]) and torch.equal(w[:, 2], w0[:, 0])
    assert "reordered from bands ['i', 'r', 'g'] to ['g', 'r', 'i']" in bb.weights_info["first_conv"]
    same = make(regs, "timm:resnet10t", in_chans=3, bands=("i", "r", "g"), weights=f"run:{run}")
    assert torch.equal(same.net.conv1[0].weight, w0)  # same order: untouched


def test_file_with_other_band_count_is_refused(regs, env, tmp_path):
    four = make(regs, "timm:resnet10t", in_chans=4, bands=("a", "b", "c", "d"), weights="none")
    save_file(four.net.state_dict(), str(tmp_path / "four.safetensors"))
    with pytest.raises(WeightsError, match=r"trained on 4 input bands; this data has 5 .*only 1- or 3-band weights can be adapted"):
        make(regs, "timm:resnet10t", weights=str(tmp_path / "four.safetensors"))
    same = make(regs, "timm:resnet10t", in_chans=4, bands=("a", "b", "c", "d"), weights=str(tmp_path / "four.safetensors"))
    assert torch.equal(same.net.conv1[0].weight, four.net.conv1[0].weight)


def test_wrong_architecture_file_is_refused(regs, env, tmp_path):
    atto = make(regs, "timm:convnext_atto", in_chans=3, bands=("R", "G", "B"), weights="none")
    save_file(atto.net.state_dict(), str(tmp_path / "atto.safetensors"))
    with pytest.raises(WeightsError, match="no first-convolution tensor 'conv1.0.weight'"):
        make(regs, "timm:resnet10t", weights=str(tmp_path / "atto.safetensors"))


# -- the backbone contract: multi-scale maps, their channels and strides, the CAM layer -----------------


def _run_dir_of(regs, tmp_path, name: str) -> Path:
    pre = make(regs, name, weights="none")
    return _export(pre, tmp_path / "runs" / "pre", BANDS5)


@pytest.mark.parametrize("name, cam_type", [
    ("resnet18", "Sequential"), ("vgg11_bn", "ReLU"), ("convnext_tiny", "Sequential"),
    ("timm:resnet18", "Sequential"), ("timm:convnext_atto", "ConvNeXtStage"), ("timm:mobilenetv3_small_100", "Sequential"),
    ("zoobot:convnext_nano", "ConvNeXtStage"), ("run:", "Sequential")])
def test_feature_maps_match_feature_info(regs, env, tmp_path, name, cam_type):
    if name == "run:":
        name = f"run:{_run_dir_of(regs, tmp_path, 'timm:resnet10t')}"
    bb = make(regs, name, weights="none") if not name.startswith("run:") else make(regs, name)
    info = bb.feature_info  # known before any forward pass
    assert len(info) >= 4 and all(set(d) == {"channels", "stride"} for d in info)
    strides = [d["stride"] for d in info]
    assert strides == sorted(strides) and strides[-1] == 32 and len(set(strides)) == len(strides)
    x = torch.randn(2, 5, 64, 64)
    maps = bb.feature_maps(x)
    assert len(maps) == len(info)
    for m, d in zip(maps, info):
        assert m.shape == (2, d["channels"], 64 // d["stride"], 64 // d["stride"])
    assert maps[-1].shape == bb.forward_features(x).shape and bb.forward_features(x).shape[1] == bb.feature_channels
    assert bb(x).shape == (2, bb.num_features)
    cam = bb.cam_layer()
    assert type(cam).__name__ == cam_type and any(cam is m for m in bb.net.modules())
    seen = []
    handle = cam.register_forward_hook(lambda _m, _i, o: seen.append(o.shape))
    bb(x)
    handle.remove()
    assert seen and len(seen[-1]) == 4  # the hooked layer gives a spatial map


def test_timm_pooled_and_map_sizes_differ_where_timm_says(regs, env):
    bb = make(regs, "timm:mobilenetv3_small_100", weights="none").eval()  # its head conv comes after the pool
    x = torch.randn(1, 5, 32, 32)
    assert bb(x).shape[1] == bb.num_features == 1024 and bb.forward_features(x).shape[1] == bb.feature_channels == 576


def test_vision_transformer_refuses_spatial_maps(regs, env):
    bb = make(regs, "timm:vit_tiny_patch16_224", weights="none")
    for call in (lambda: bb.feature_info, lambda: bb.feature_maps(torch.randn(1, 5, 224, 224)), bb.cam_layer,
                 lambda: bb.forward_features(torch.randn(1, 5, 224, 224))):
        with pytest.raises(ConfigError, match="vision transformer: its features are tokens .* use a convolutional backbone"):
            call()


# -- the stem: how much a ResNet shrinks small stamps before its first block ---------------------------


@pytest.mark.parametrize("factor, side", [(4, 2), (2, 4), (1, 8)])
def test_stem_downsample_keeps_resolution_and_weights(regs, env, factor, side):
    native = make(regs, "resnet18", weights="none").eval()
    bb = make(regs, "resnet18", weights="none", stem_downsample=factor).eval()
    bb.load_state_dict(native.state_dict())  # the same tensors: pretrained weights load at any stem
    x = torch.randn(2, 5, 64, 64)
    assert bb.forward_features(x).shape == (2, 512, side, side)  # 64 px / (stem x 8) at layer4
    info = bb.feature_info
    assert [d["stride"] for d in info] == [factor, 2 * factor, 4 * factor, 8 * factor]
    for m, d in zip(bb.feature_maps(x), info):
        assert m.shape[-1] == 64 // d["stride"]
    assert bb.export_metadata()["stem_downsample"] == factor
    if factor == 4:
        assert torch.equal(bb(x), native(x))
    assert make(regs, "resnet18", weights="none").export_metadata()["stem_downsample"] == 4


def test_stem_downsample_is_refused_where_there_is_no_stem(regs, env):
    with pytest.raises(ConfigError, match=r"backbone 'vgg11_bn' has no adjustable stem, so backbone.stem_downsample "
                                          r"does not apply; remove it, or use a ResNet"):
        make(regs, "vgg11_bn", weights="none", stem_downsample=2)
    with pytest.raises(Exception, match="stem_downsample"):
        make(regs, "resnet18", weights="none", stem_downsample=3)


def test_stem_downsample_travels_with_the_weights(regs, env, tmp_path):
    pre = make(regs, "resnet18", weights="none", stem_downsample=2)
    run = _export(pre, tmp_path / "runs" / "pre", BANDS5, stem_downsample="2")
    inherited = make(regs, "resnet18", weights=f"run:{run}")
    assert inherited.stem_downsample == 2 and inherited.weights_info["trained_stem_downsample"] == 2
    assert inherited.forward_features(torch.randn(1, 5, 32, 32)).shape[-1] == 2
    assert make(regs, "resnet18", weights=f"run:{run}", stem_downsample=4).stem_downsample == 4  # the config wins


def test_a_run_with_a_fine_stem_predicts_with_it(cli, tmp_path, _cache_dir):
    import yaml
    from astropy.table import Table

    from testutils import TINY

    cfg = dict(TINY, name="stem2", output_dir=str(tmp_path / "runs"),
               backbone={"name": "resnet18", "weights": "none", "stem_downsample": 2})
    (tmp_path / "stem2.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = cli("-q", "run", tmp_path / "stem2.yaml")
    assert code == 0, err
    run = tmp_path / "runs" / "stem2"
    code, _, err = cli("predict", run, "--split", "test", "--out", tmp_path / "again.ecsv")
    assert code == 0, err
    a, b = Table.read(run / "predictions.ecsv"), Table.read(tmp_path / "again.ecsv")
    cols = [c for c in a.colnames if c.startswith("p_")]
    assert len(cols) == 4 and list(a["pred_class"]) == list(b["pred_class"])
    assert np.allclose([a[c] for c in cols], [b[c] for c in cols], atol=1e-5)
    # a fine-tuning stage on it gets the same stem without saying so
    cfg2 = dict(TINY, name="child", output_dir=str(tmp_path / "runs"),
                backbone={"name": "resnet18", "weights": f"run:{run}"})
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(cfg2))
    code, _, err = cli("-q", "run", tmp_path / "child.yaml")
    assert code == 0, err
    from astrotl.weights import read_metadata

    assert read_metadata(tmp_path / "runs" / "child" / "backbone.safetensors")["stem_downsample"] == 2
    assert read_metadata(tmp_path / "runs" / "child" / "model.safetensors")["stem_downsample"] == 2
    child = tmp_path / "runs" / "child"  # its config says nothing about the stem: predict reads it from the model
    code, _, err = cli("predict", child, "--split", "test", "--out", tmp_path / "child.ecsv")
    assert code == 0, err
    a, b = Table.read(child / "predictions.ecsv"), Table.read(tmp_path / "child.ecsv")
    assert np.allclose([a[c] for c in cols], [b[c] for c in cols], atol=1e-5)
