"""Fine-tuning strategies: linear probe, last n blocks, first K blocks / layers, layer-wise lr decay;
frozen means frozen, BatchNorm running statistics included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrotl import finetune
from astrotl.errors import ConfigError
from astrotl.plugins import load_registries


@pytest.fixture(scope="module")
def regs():
    return load_registries()


def make(regs, name="timm:resnet10t", in_chans=5, **cfg):
    cls = regs.backbones.get(name)
    cfg.setdefault("weights", "none")
    return cls(cls.Config(**cfg), in_chans=in_chans, bands=tuple(f"b{i}" for i in range(in_chans)))


def train_step(bb: nn.Module, steps: int = 1, lr: float = 0.1) -> nn.Module:
    """One optimiser step of backbone + linear head on random data, the way the engine does it."""
    model = nn.Sequential(bb, nn.Linear(bb.num_features, 3))
    model.train()
    opt = torch.optim.SGD(finetune.param_groups(model, lr), lr=lr)
    for _ in range(steps):
        x, y = torch.randn(8, bb.in_chans, 32, 32) * 3 + 1, torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module, prefix: str) -> bool:
    now = module.state_dict()
    return any(not torch.equal(before[k], now[k]) for k in before if k.startswith(prefix) and before[k].is_floating_point())


def test_linear_probe_trains_only_the_head_and_keeps_bn_statistics(regs):
    bb = make(regs, n_blocks=0)
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.weights_info["finetune"]["strategy"] == "linear_probe"
    before, stats = snapshot(bb.net), bn_stats(bb.net)
    model = train_step(bb)
    assert not bb.net.training  # stays in eval mode though the model was put in train mode
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_stats(bb.net)))  # running_mean unchanged
    assert not changed(before, bb.net, "")
    assert model[1].weight.grad is not None


def test_freeze_first_blocks_truly_frozen_bn_included(regs):
    bb = make(regs, freeze_blocks=2)
    blocks = bb.blocks()
    before = snapshot(bb.net)
    frozen_stats, free_stats = bn_stats(blocks[1]), bn_stats(blocks[3])
    train_step(bb)
    assert all(torch.equal(a, b) for a, b in zip(frozen_stats, bn_stats(blocks[1])))
    assert not all(torch.equal(a, b) for a, b in zip(free_stats, bn_stats(blocks[3])))
    assert not changed(before, bb.net, "conv1.") and not changed(before, bb.net, "layer1.")
    assert changed(before, bb.net, "layer3.")


def test_last_n_blocks_like_zoobot(regs):
    bb = make(regs, n_blocks=2)
    blocks = bb.blocks()
    assert len(blocks) == 5
    assert all(not p.requires_grad for b in blocks[:3] for p in b.parameters())
    assert all(p.requires_grad for b in blocks[3:] for p in b.parameters())
    assert bb.weights_info["finetune"]["strategy"] == "last_2_blocks"
    before = snapshot(bb.net)
    train_step(bb)
    assert not changed(before, bb.net, "layer2.") and changed(before, bb.net, "layer4.")


def test_freeze_layers_vgg16_like_the_open_globular_paper(regs):
    bb = make(regs, "vgg16", in_chans=3, freeze_layers=7)  # Keras layers[:10] of VGG16 = the first 7 convolutions
    convs = [m for m in bb.net.features if isinstance(m, nn.Conv2d)]
    assert all(not c.weight.requires_grad for c in convs[:7]) and all(c.weight.requires_grad for c in convs[7:])
    bn = make(regs, "vgg11_bn", in_chans=3, freeze_layers=2)
    layers = finetune.weight_layers(bn.net)
    assert isinstance(layers[0], nn.ModuleList) and isinstance(layers[0][1], nn.BatchNorm2d)  # conv + its norm
    stats = bn_stats(layers[1])
    train_step(bn)
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_stats(layers[1])))


def test_layerwise_lr_decay_param_groups(regs):
    bb = make(regs, "timm:convnext_atto", lr_decay=0.5)
    model = nn.Sequential(bb, nn.Linear(bb.num_features, 2))
    groups = finetune.param_groups(model, 1e-3)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-3)
    assert lrs["block_-1"] == pytest.approx(5e-4) and lrs["block_-5"] == pytest.approx(1e-3 * 0.5 ** 5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    head = next(g for g in groups if g["name"] == "head")
    assert any(p is model[1].weight for p in head["params"])
    stem = next(g for g in groups if g["name"] == "block_-5")
    assert any(p is bb.net.stem[0].weight for p in stem["params"])
    # frozen parameters are left out; without decay there is one group
    probe = make(regs, "timm:convnext_atto", n_blocks=1, lr_decay=0.5)
    names = [g["name"] for g in finetune.param_groups(nn.Sequential(probe, nn.Linear(320, 2)), 1e-3)]
    assert names == ["head", "block_-1"]
    assert [g["name"] for g in finetune.param_groups(nn.Sequential(make(regs), nn.Linear(512, 2)), 1e-3)] == ["all"]


def test_engine_optimizer_uses_param_groups(regs):
    from astrotl.config import OptimConfig
    from astrotl.engine import TaskModule

    class _Task:
        def make_metrics(self):
            return nn.ModuleDict()

    bb = make(regs, "timm:resnet10t", lr_decay=0.8, freeze_blocks=1)
    module = TaskModule(_Task(), nn.Sequential(bb, nn.Linear(512, 2)), OptimConfig(lr=0.01, scheduler="none"), 3)
    opt = module.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[-1] == pytest.approx(0.01) and lrs[0] == pytest.approx(0.01 * 0.8 ** 4)
    assert len(opt.param_groups) == 5  # head + 4 unfrozen blocks (the stem is frozen)


@pytest.mark.parametrize("cfg, msg", [
    ({"n_blocks": 6}, r"n_blocks=6 but timm:resnet10t has only 5 blocks"),
    ({"freeze_blocks": 9}, r"freeze_blocks=9 but timm:resnet10t has only 5 blocks"),
    ({"freeze_layers": 99}, r"freeze_layers=99 but timm:resnet10t has only \d+ conv/linear layers"),
])
def test_bad_strategy_numbers(regs, cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        make(regs, **cfg)


def test_everything_frozen_is_a_config_error(regs):
    from astrotl.config import OptimConfig
    from astrotl.engine import TaskModule

    class _Task:
        def make_metrics(self):
            return nn.ModuleDict()

    bb = make(regs, n_blocks=0)
    head = nn.Linear(512, 2)
    head.requires_grad_(False)
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        TaskModule(_Task(), nn.Sequential(bb, head), OptimConfig(), 1).configure_optimizers()
