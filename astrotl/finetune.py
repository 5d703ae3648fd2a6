"""Fine-tuning strategies: what trains, what is frozen, and at which learning rate.

Set in the backbone section of a task file (any astrotl backbone)::

    backbone:
      name: resnet18
      weights: run:runs/gz1_pretrain
      n_blocks: 2          # train only the last 2 blocks (Zoobot's n_blocks); 0 = linear probe
      freeze_blocks: 0     # freeze the first K blocks
      freeze_layers: 0     # freeze the first K conv/linear layers (with their norms)
      lr_decay: 0.75       # layer-wise learning-rate decay

Strategies
----------

linear probe (``n_blocks: 0``)
    the whole backbone is frozen; only the head trains.
last n blocks (``n_blocks: n``)
    the first ``len(blocks) - n`` blocks are frozen, as Zoobot's ``n_blocks``.
first K blocks / layers (``freeze_blocks: K`` / ``freeze_layers: K``)
    e.g. the open/globular-cluster VGG16 of Stipp & Montana-Lopez froze Keras' ``layers[:10]``:
    input, 2 conv, pool, 2 conv, pool, 3 conv = the first 7 convolutions, ``freeze_layers: 7``.
layer-wise learning-rate decay (``lr_decay: d``)
    the head (and anything after the last block) gets the optimiser's ``lr``, the top block
    ``lr * d``, the next ``lr * d**2`` and so on down to the stem (timm's convention).

Frozen means frozen: parameters get ``requires_grad=False`` *and* the frozen modules stay in
``eval()`` mode during training, so BatchNorm running statistics (and dropout / stochastic depth)
do not move -- Zoobot leaves BatchNorm statistics of frozen blocks updating; astrotl does not.
The engine builds its optimiser from :func:`param_groups`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ConfigError

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def freeze_module(module: nn.Module) -> None:
    """No gradients and evaluation mode (the owning backbone keeps it there in ``train()``)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def weight_layers(module: nn.Module) -> list[nn.Module]:
    """The conv / linear layers of ``module`` in definition order, each with the parameterised
    modules (norms, layer scales) that follow it up to the next conv / linear layer.

    Modules with parameters before the first conv / linear layer join the first group.
    """
    groups: list[list[nn.Module]] = []
    pending: list[nn.Module] = []
    for m in module.modules():
        if isinstance(m, WEIGHT_LAYERS):
            groups.append(pending + [m])
            pending = []
        elif any(True for _ in m.parameters(recurse=False)):
            if groups:
                groups[-1].append(m)
            else:
                pending.append(m)
    return [nn.ModuleList(g) if len(g) > 1 else g[0] for g in groups]


def apply_strategy(backbone, config) -> None:
    """Freeze what ``config`` (``freeze_blocks``, ``freeze_layers``, ``n_blocks``) says; validate the numbers."""
    blocks = backbone.blocks()
    nb = len(blocks)
    k = getattr(config, "freeze_blocks", 0) or 0
    if k > nb:
        raise ConfigError(f"backbone.freeze_blocks={k} but {backbone.name} has only {nb} blocks; use 0..{nb}")
    n = getattr(config, "n_blocks", None)
    if n is not None and n > nb:
        raise ConfigError(f"backbone.n_blocks={n} but {backbone.name} has only {nb} blocks; use 0..{nb} "
                          f"(0 = linear probe, null = train everything)")
    kl = getattr(config, "freeze_layers", 0) or 0
    if kl:
        nl = len(weight_layers(backbone.net))
        if kl > nl:
            raise ConfigError(f"backbone.freeze_layers={kl} but {backbone.name} has only {nl} conv/linear layers; use 0..{nl}")
    if k:
        backbone.freeze(k)
    if n == 0:
        freeze_module(backbone.net)
        backbone.frozen.append(backbone.net)
    elif n is not None and nb - n > 0:
        for block in blocks[: nb - n]:
            freeze_module(block)
            backbone.frozen.append(block)
    if kl:
        backbone.freeze_layers(kl)


def describe(backbone, config) -> dict[str, Any]:
    """What is trained, for the run's records."""
    total = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    n = getattr(config, "n_blocks", None)
    strategy = ("linear_probe" if n == 0 else f"last_{n}_blocks" if n is not None else
                "partial_freeze" if trainable < total else "full")
    return {"strategy": strategy, "blocks": len(backbone.blocks()), "n_blocks": n,
            "freeze_blocks": getattr(config, "freeze_blocks", 0), "freeze_layers": getattr(config, "freeze_layers", 0),
            "lr_decay": getattr(config, "lr_decay", 1.0), "backbone_params": total, "backbone_trainable_params": trainable}


def param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups of ``model``'s trainable parameters, with layer-wise decay.

    The decay comes from the ``lr_decay`` of the :class:`~astrotl.interfaces.Backbone` inside
    ``model`` (1.0: one group at ``lr``). Each group holds ``params``, ``lr`` and ``name``.
    Returns ``[]`` when nothing is trainable.
    """
    from .interfaces import Backbone

    trainable = [p for p in model.parameters() if p.requires_grad]
    backbone = next((m for m in model.modules() if isinstance(m, Backbone)), None)
    decay = float(getattr(getattr(backbone, "config", None), "lr_decay", 1.0) or 1.0)
    if not trainable:
        return []
    if backbone is None or decay == 1.0:
        return [{"params": trainable, "lr": lr, "name": "all"}]
    depth: dict[int, int] = {}  # id(param) -> distance from the top block (1 = top)
    blocks = backbone.blocks()
    for i, block in enumerate(blocks):
        for p in block.parameters():
            depth[id(p)] = len(blocks) - i  # later blocks overwrite shared parameters: the shallower wins
    groups: dict[int, dict[str, Any]] = {}
    for p in trainable:
        d = depth.get(id(p), 0)
        g = groups.setdefault(d, {"params": [], "lr": lr * decay ** d, "name": "head" if d == 0 else f"block_-{d}"})
        g["params"].append(p)
    return [groups[d] for d in sorted(groups)]
