"""Generic backbones: torchvision classification models, any timm model, Zoobot encoders, and
backbones exported by earlier astrotl runs -- all for any number of input bands.

Names (the ``backbone: {name: ...}`` key)
-----------------------------------------

``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``vgg11_bn``, ``vgg16``, ``vgg16_bn``, ``vgg19_bn``, ``convnext_tiny``, ``convnext_small``, ``convnext_base``
    torchvision models with their ImageNet weight tags (``weights: imagenet`` is torchvision's
    ``DEFAULT``; ``weights: IMAGENET1K_V2`` picks a tag).
``timm:<model>``
    any timm model, e.g. ``timm:convnext_nano`` or ``timm:resnet50.a1_in1k`` (a pretrained tag),
    built with ``timm.create_model(name, pretrained=False, num_classes=0, in_chans=N)``; its
    pretrained weights come from the local Hugging Face / torch hub caches or the weights directory.
``zoobot:<name>``
    a Zoobot galaxy-morphology encoder (Walmsley et al.), ``zoobot:convnext_nano`` ->
    Hugging Face ``mwalmsley/zoobot-encoder-convnext_nano``; a timm model loaded from the local
    Hugging Face cache. ``weights:`` may also be a Zoobot fine-tuned Lightning ``.ckpt``.
``run:<run dir>``
    the backbone exported by an earlier astrotl run (its architecture and weights), e.g.
    ``run:runs/gz1_pretrain``.

A name ``prefix:*`` is a *family*: its class resolves ``prefix:<anything>`` (see
:meth:`astrotl.plugins.Registry.get`); a plugin can add families through
``astrotl_register_backbones`` by returning a class named ``"myprefix:*"`` with a
``resolve_family(suffix, registry)`` classmethod.

``weights`` (every backbone)
----------------------------

``none``
    random initialisation;
``auto``
    the backbone's default pretrained weights if they can be had offline, else random
    initialisation with a loud :class:`~astrotl.errors.RandomInitWarning` also written to the run;
``imagenet`` / ``zoobot`` / a torchvision tag / ``hf-hub:<org/repo>``
    named pretrained weights, found as :mod:`astrotl.weights` describes (absent offline: a clear error);
``run:<run dir>``, a file path, or a name in the weights directory
    a state dict (torchvision/timm layout, a Zoobot or Lightning checkpoint, or an astrotl export).

N-band data: RGB first-convolution weights are adapted by :func:`astrotl.weights.adapt_first_conv`
(``input_adapter: repeat`` or ``map`` with ``rgb_bands``), never silently re-initialised; weights
trained on exactly the data's number of bands load as they are. Fine-tuning strategies
(``freeze_blocks``, ``freeze_layers``, ``n_blocks``, ``lr_decay``) are in :mod:`astrotl.finetune`.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, create_model
from torch import nn

from . import finetune
from .errors import ConfigError, RandomInitWarning, UnknownNameError, WeightsError, did_you_mean
from .interfaces import Backbone, ComponentConfig
from .weights import (
    IMAGENET_NORMALISATION,
    WeightsRequest,
    ZOOBOT_ENCODERS,
    adapt_first_conv,
    hf_flat_name,
    load_into,
    load_request,
    load_spec_file,
    read_metadata,
    resolve_run_dir,
    strip_prefixes,
    timm_request,
    torchvision_request,
    zoobot_config,
    zoobot_repo,
    zoobot_request,
)

log = logging.getLogger(__name__)

__all__ = ["BackboneConfig", "PretrainedBackbone", "TorchvisionBackbone", "TimmBackbone", "ZoobotBackbone",
           "RunBackbone", "BUILTIN_BACKBONES", "IMAGENET_NORMALISATION"]


class BackboneConfig(ComponentConfig):
    weights: str = Field("auto", description="none | auto | imagenet | <weight tag> | run:<run dir> | path | name in the weights dir")
    input_adapter: Literal["repeat", "map"] = Field(
        "repeat", description="how RGB first-conv weights serve N bands: repeat (cycle R,G,B, rescale) or map (rgb_bands)")
    rgb_bands: list[str] | None = Field(None, description="with input_adapter: map, the bands fed to R, G, B")
    freeze_blocks: int = Field(0, ge=0, description="freeze the first K blocks (weights and BatchNorm statistics)")
    freeze_layers: int = Field(0, ge=0, description="freeze the first K conv/linear layers with their norms "
                                                     "(Keras' VGG16 layers[:10] = freeze_layers: 7)")
    n_blocks: int | None = Field(None, ge=0, description="train only the last n blocks (Zoobot's n_blocks); "
                                                         "0 = linear probe (all frozen but the head); null = all")
    lr_decay: float = Field(1.0, gt=0, le=1, description="layer-wise learning-rate decay: the head gets lr, the "
                                                         "top block lr*d, the next lr*d^2, ...")
    stem_downsample: Literal[1, 2, 4] | None = Field(
        None, description="how much the stem shrinks the image before the first block (ResNets): 4 = the "
                          "architecture's own (stride-2 convolution + stride-2 max-pool), 2 = the first convolution at "
                          "stride 1 (small stamps, 4x the compute), 1 = no max-pool either (16x); the same weights "
                          "load at any value; null = what the weights were trained with (astrotl exports), else 4")


#: Kept for code written against the first release.
TorchvisionBackboneConfig = BackboneConfig


def _replace_conv(parent: nn.Module, attr: str, in_chans: int) -> None:
    old = getattr(parent, attr)
    if old.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups if old.groups == 1 else in_chans, bias=old.bias is not None, padding_mode=old.padding_mode)
    setattr(parent, attr, new)


def band_permutation(trained, bands) -> list[int] | None:
    """Indices that reorder weights trained on ``trained`` bands into the order of ``bands``, when both name the
    same bands (case-insensitive, each once) in different orders; ``None`` otherwise.

    >>> band_permutation(["i", "r", "g"], ["g", "r", "i"])
    [2, 1, 0]
    >>> band_permutation(["i", "r", "g"], ["u", "g", "r"]) is None
    True
    """
    src = [str(b).lower() for b in trained]
    dst = [str(b).lower() for b in bands]
    if len(set(src)) != len(src) or sorted(src) != sorted(dst):
        return None
    return [src.index(b) for b in dst]

class PretrainedBackbone(Backbone):
    """Base of astrotl's backbones: weights resolution, first-conv adaptation, fine-tuning.

    Subclasses implement :meth:`build_net` (a randomly initialised network with ``in_chans``
    inputs and no classifier, stored as ``self.net``), :meth:`first_conv_key`,
    :meth:`classifier_prefixes`, :meth:`forward_features` and :meth:`blocks`, and may override
    :meth:`pretrained_request` (what ``imagenet``/``auto`` mean) and :meth:`named_request`.
    """

    Config = BackboneConfig
    #: Shown by ``astrotl list backbones``.
    weight_options: ClassVar[str] = "none | auto | imagenet | <tag> | run:<dir> | <file>"
    #: The registered name of the architecture (differs from ``name`` for ``run:`` backbones).
    arch_name: ClassVar[str] = ""
    _subclasses: ClassVar[dict[tuple[type, str], type]] = {}

    def __init__(self, config: BackboneConfig, *, in_chans: int, bands: tuple[str, ...]):
        super().__init__(config, in_chans=in_chans, bands=bands)
        state, info = self._resolve_weights(config)
        self.net = self.build_net(in_chans)
        self.stem_downsample = self.native_stem_downsample
        stem = config.stem_downsample or info.get("trained_stem_downsample")
        if stem is not None:
            self.set_stem_downsample(int(stem), explicit=config.stem_downsample is not None)
        if state is not None:
            state = self._adapt_state(strip_prefixes(state), info, config)
            info["load"] = load_into(self.net, state, source=info.get("path") or config.weights,
                                     skip_prefixes=self.classifier_prefixes())
        self.weights_info = info
        self.frozen: list[nn.Module] = []
        finetune.apply_strategy(self, config)
        self.weights_info["finetune"] = finetune.describe(self, config)

    # -- to implement ---------------------------------------------------------------------------
    def build_net(self, in_chans: int) -> nn.Module:
        raise NotImplementedError

    def first_conv_key(self) -> str:
        raise NotImplementedError

    def classifier_prefixes(self) -> tuple[str, ...]:
        return ()

    #: The stem's own downsampling factor (``stem_downsample``); ``None``: the backbone cannot change it.
    native_stem_downsample: ClassVar[int | None] = None

    def set_stem_downsample(self, factor: int, *, explicit: bool = True) -> None:
        """Make the stem shrink the input by ``factor`` (refused where the architecture has no such stem);
        ``self.stem_downsample`` is then ``factor`` (the native factor until called, ``None`` without a stem)."""
        if self.native_stem_downsample is None:
            if explicit:
                raise ConfigError(f"backbone '{self.name}' has no adjustable stem, so backbone.stem_downsample does "
                                  f"not apply; remove it, or use a ResNet (resnet18, resnet34, resnet50, resnet101)")
            return
        self._apply_stem_downsample(factor)
        self.stem_downsample = factor

    def _apply_stem_downsample(self, factor: int) -> None:
        raise NotImplementedError

    def pretrained_request(self) -> WeightsRequest:
        """What ``weights: imagenet`` (and ``auto``) load."""
        raise WeightsError(f"backbone '{self.name}' has no default pretrained weights; use weights: none, run:<dir> or a file")

    def named_request(self, choice: str) -> WeightsRequest | None:
        """A request for a backbone-specific keyword (a weight tag, ``hf-hub:...``), or ``None``."""
        if choice.startswith("hf-hub:"):
            repo = choice[len("hf-hub:"):]
            return WeightsRequest(what=f"weights from Hugging Face {repo}", filename=hf_flat_name(repo),
                                  source="hf-hub", hf_repo=repo, meta={"origin": f"https://huggingface.co/{repo}"})
        return None

    # -- family support -------------------------------------------------------------------------
    @classmethod
    def make_subclass(cls, name: str, *, default_weights: str | None = None, doc: str | None = None, **attrs) -> type:
        """A concrete subclass named ``name`` (cached, so resolving a name twice gives the same class)."""
        key = (cls, name)
        if key not in PretrainedBackbone._subclasses:
            ns: dict[str, Any] = {"name": name, "__doc__": doc or cls.__doc__, "__module__": cls.__module__, **attrs}
            ns.setdefault("arch_name", cls.arch_name or name)
            if default_weights is not None:
                ns["Config"] = create_model(f"{cls.Config.__name__}_{re.sub(r'[^A-Za-z0-9]', '_', name)}",
                                            __base__=cls.Config,
                                            weights=(str, Field(default_weights, description=cls.Config.model_fields["weights"].description)))
            PretrainedBackbone._subclasses[key] = type(f"{cls.__name__}[{name}]", (cls,), ns)
        return PretrainedBackbone._subclasses[key]

    # -- weights --------------------------------------------------------------------------------
    def _base_info(self, config: BackboneConfig) -> dict[str, Any]:
        return {"backbone": self.name, "architecture": self.arch_name or self.name, "requested": config.weights,
                "source": None, "bands": list(self.bands), "in_chans": self.in_chans,
                "input_adapter": config.input_adapter, "sha256": None, "path": None, "warning": None,
                "normalisation": None, "licence": None}

    def _resolve_weights(self, config: BackboneConfig) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        info = self._base_info(config)
        choice = config.weights.strip()
        low = choice.lower()
        if low == "none":
            info["source"] = "random"
            return None, info
        if low == "auto":
            what = "pretrained weights"
            try:
                req = self.pretrained_request()
                what = req.what
                state, rec = load_request(req)
            except WeightsError as exc:
                warning = (f"RANDOM INITIALISATION: weights: auto found no {what} offline ({exc}); results are "
                           f"from a network trained from scratch.")
                warnings.warn(warning, RandomInitWarning, stacklevel=3)
                log.warning(warning)
                info.update(source="random", warning=warning)
                return None, info
            info.update(rec)
            return state, info
        if low in ("imagenet", "pretrained"):
            state, rec = load_request(self.pretrained_request())
            info.update(rec)
            return state, info
        req = self.named_request(choice)
        if req is not None:
            state, rec = load_request(req)
            info.update(rec)
            return state, info
        state, rec = load_spec_file(choice)
        info.update(rec)
        trained = rec.get("trained_backbone")
        if trained and rec.get("source") == "run" and trained != (self.arch_name or self.name):
            raise WeightsError(f"weights {choice} hold a '{trained}' backbone but this backbone is "
                               f"'{self.arch_name or self.name}'; use backbone: {{name: {trained}}} "
                               f"(or backbone: {{name: 'run:{rec.get('run', '...')}'}})")
        return state, info

    def _adapt_state(self, state: dict[str, torch.Tensor], info: dict[str, Any], config: BackboneConfig) -> dict[str, torch.Tensor]:
        key = self.first_conv_key()
        w = state.get(key)
        src = info.get("path") or config.weights
        if w is None:
            raise WeightsError(f"weights {src} have no first-convolution tensor '{key}' for {self.name}; they were "
                               f"saved from another architecture: check the backbone name")
        trained = info.get("trained_bands")
        if w.shape[1] == self.in_chans:
            if trained and list(trained) != list(self.bands):
                order = band_permutation(trained, self.bands)
                if order is not None:  # the same bands in another order (GZ1's i, r, g for g, r, i data)
                    state = dict(state)
                    state[key] = w[:, order].clone()
                    info["first_conv"] = f"input channels reordered from bands {list(trained)} to {list(self.bands)}"
                elif self.in_chans != 3:
                    info["warning"] = (f"weights were trained on bands {list(trained)}, the data has "
                                       f"{list(self.bands)}; the first convolution is used as is (same number of bands)")
            return state
        if w.shape[1] in (1, 3):
            state = dict(state)
            state[key] = adapt_first_conv(w, self.in_chans, config.input_adapter, self.bands, config.rgb_bands) \
                if w.shape[1] == 3 else (w.repeat(1, self.in_chans, 1, 1) / self.in_chans)
            how = config.input_adapter if w.shape[1] == 3 else "repeat"
            from_bands = f"{list(trained)}" if trained else ("RGB" if w.shape[1] == 3 else "1 band")
            info["first_conv"] = f"adapted {w.shape[1]} -> {self.in_chans} bands ({how}; from {from_bands} to {list(self.bands)})"
            return state
        raise WeightsError(f"weights {src} were trained on {w.shape[1]} input bands; this data has {self.in_chans} "
                           f"({', '.join(self.bands)}); only 1- or 3-band weights can be adapted: use weights made for these bands")

    def export_metadata(self) -> dict[str, Any]:
        """Metadata written into ``backbone.safetensors`` by the engine (so ``run:`` can rebuild this backbone)."""
        w = self.weights_info
        return {"backbone": self.arch_name or self.name, "pretrained_from": w.get("source"),
                "pretrained_sha256": w.get("sha256"), "pretrained_path": w.get("path"),
                "first_conv": w.get("first_conv"), "licence": w.get("licence"),
                "stem_downsample": self.stem_downsample}

    # -- freezing ---------------------------------------------------------------------------
    def freeze(self, n_blocks: int) -> None:
        """Freeze the first ``n_blocks`` blocks: no gradients and BatchNorm kept in eval mode."""
        blocks = self.blocks()
        if n_blocks > len(blocks):
            raise WeightsError(f"freeze_blocks={n_blocks} but {self.name} has only {len(blocks)} blocks")
        for block in blocks[:n_blocks]:
            finetune.freeze_module(block)
            self.frozen.append(block)

    def freeze_layers(self, k: int) -> None:
        """Freeze the first ``k`` conv/linear layers (with their norms); see :func:`astrotl.finetune.weight_layers`."""
        layers = finetune.weight_layers(self.net)
        for layer in layers[:k]:
            finetune.freeze_module(layer)
            self.frozen.append(layer)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in getattr(self, "frozen", []):
            block.eval()  # frozen means frozen: BatchNorm running statistics do not move
        return self


# -- torchvision ------------------------------------------------------------------------------


class TorchvisionBackbone(PretrainedBackbone):
    """Base of torchvision classification backbones; subclasses set ``arch``."""

    arch: ClassVar[str] = ""
    weight_options = "none | auto | imagenet | <torchvision tag> | run:<dir> | <file>"

    def _torchvision_net(self) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, self.arch)(weights=None)

    def pretrained_request(self) -> WeightsRequest:
        return torchvision_request(self.arch)

    def named_request(self, choice: str) -> WeightsRequest | None:
        if re.fullmatch(r"[A-Z0-9_]+_V\d+|DEFAULT", choice.upper()) and not choice.startswith(("run:", "/", ".")) \
                and "." not in choice:
            return torchvision_request(self.arch, choice)
        return super().named_request(choice)


class ResNetBackbone(TorchvisionBackbone):
    native_stem_downsample = 4

    def _apply_stem_downsample(self, factor: int) -> None:
        n = self.net
        n.conv1.stride = (2, 2) if factor == 4 else (1, 1)
        n.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if factor in (2, 4) else nn.Identity()

    def build_net(self, in_chans: int) -> nn.Module:
        net = self._torchvision_net()
        _replace_conv(net, "conv1", in_chans)
        self.num_features = self.feature_channels = net.fc.in_features
        net.fc = nn.Identity()
        return net

    def first_conv_key(self) -> str:
        return "conv1.weight"

    def classifier_prefixes(self):
        return ("fc.",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32 with the native stem), as torchvision's detection
        backbones."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        maps = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    @property
    def feature_info(self) -> list[dict[str, int]]:
        n = self.net
        info = []
        stem = self.stem_downsample
        for stride, layer in zip((stem, 2 * stem, 4 * stem, 8 * stem), (n.layer1, n.layer2, n.layer3, n.layer4)):
            last = layer[-1]
            norm = getattr(last, "bn3", None) or last.bn2  # Bottleneck ends in bn3, BasicBlock in bn2
            info.append({"channels": int(norm.num_features), "stride": stride})
        return info

    def cam_layer(self) -> nn.Module:
        """``layer4``, the usual Grad-CAM target of a ResNet."""
        return self.net.layer4

    def blocks(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]


class VGGBackbone(TorchvisionBackbone):
    def build_net(self, in_chans: int) -> nn.Module:
        net = self._torchvision_net()
        _replace_conv(net.features, "0", in_chans)
        # Keep the convolutional trunk; a global average pool replaces the 4096-wide FC layers,
        # which assume 224x224 inputs and hold 90% of the parameters.
        self.num_features = self.feature_channels = 512
        net.classifier = nn.Identity()
        net.avgpool = nn.Identity()
        return net

    def first_conv_key(self) -> str:
        return "features.0.weight"

    def classifier_prefixes(self):
        return ("classifier.",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each conv stage, after its max-pool (strides 2, 4, 8, 16, 32)."""
        maps = []
        for layer in self.net.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                maps.append(x)
        return maps

    @property
    def feature_info(self) -> list[dict[str, int]]:
        info, channels, stride = [], 0, 1
        for layer in self.net.features:
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                stride *= 2
                info.append({"channels": int(channels), "stride": stride})
        return info

    def cam_layer(self) -> nn.Module:
        """The last ReLU of the last conv block (before the final max-pool), the usual Grad-CAM target of a VGG."""
        last = None
        for layer in self.net.features:
            if isinstance(layer, (nn.Conv2d, nn.ReLU)):
                last = layer
        return last

    def blocks(self) -> list[nn.Module]:
        """The five conv stages, split after each max-pool."""
        stages, current = [], []
        for layer in self.net.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        if current:
            stages.append(nn.Sequential(*current))
        return stages


class ConvNeXtTVBackbone(TorchvisionBackbone):
    def build_net(self, in_chans: int) -> nn.Module:
        net = self._torchvision_net()
        _replace_conv(net.features[0], "0", in_chans)
        self.num_features = self.feature_channels = net.classifier[2].in_features
        net.classifier[2] = nn.Identity()  # keep the LayerNorm and flatten: net(x) is the pooled, normalised feature
        return net

    def first_conv_key(self) -> str:
        return "features.0.0.weight"

    def classifier_prefixes(self):
        return ("classifier.2.",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each of the four stages (strides 4, 8, 16, 32)."""
        maps = []
        for i, layer in enumerate(self.net.features):
            x = layer(x)
            if i % 2 == 1:  # features = [stem, stage1, down, stage2, down, stage3, down, stage4]
                maps.append(x)
        return maps

    @property
    def feature_info(self) -> list[dict[str, int]]:
        f = self.net.features
        convs = [f[0][0]] + [f[i][1] for i in (2, 4, 6)]  # the stem and the downsampling convolutions
        return [{"channels": int(c.out_channels), "stride": 4 * 2 ** i} for i, c in enumerate(convs)]

    def cam_layer(self) -> nn.Module:
        """The last stage."""
        return self.net.features[7]

    def blocks(self) -> list[nn.Module]:
        """Stem, then each stage with the downsampling layer before it (the final norm joins the last)."""
        f = self.net.features
        return [f[0], f[1], nn.ModuleList([f[2], f[3]]), nn.ModuleList([f[4], f[5]]),
                nn.ModuleList([f[6], f[7], self.net.classifier[0]])]


def _tv(base: type, arch: str, doc: str) -> type:
    return type(f"{arch.title().replace('_', '')}Backbone", (base,), {"name": arch, "arch": arch, "arch_name": arch,
                                                                      "__doc__": doc, "__module__": __name__})


ResNet18Backbone = _tv(ResNetBackbone, "resnet18", "ResNet-18 (He et al. 2016) from torchvision; Wei et al. 2020's first architecture.")
ResNet34Backbone = _tv(ResNetBackbone, "resnet34", "ResNet-34 from torchvision.")
ResNet50Backbone = _tv(ResNetBackbone, "resnet50", "ResNet-50 from torchvision (weights: IMAGENET1K_V1 or IMAGENET1K_V2).")
ResNet101Backbone = _tv(ResNetBackbone, "resnet101", "ResNet-101 from torchvision.")
VGG11BNBackbone = _tv(VGGBackbone, "vgg11_bn", "VGG-11 with batch normalisation from torchvision.")
VGG16Backbone = _tv(VGGBackbone, "vgg16", "VGG-16 from torchvision (Stipp & Montana-Lopez's open/globular cluster classifier).")
VGG16BNBackbone = _tv(VGGBackbone, "vgg16_bn", "VGG-16 with batch normalisation from torchvision.")
VGG19BNBackbone = _tv(VGGBackbone, "vgg19_bn", "VGG-19 with batch normalisation from torchvision; Wei et al. 2020's second architecture.")
ConvNeXtTinyBackbone = _tv(ConvNeXtTVBackbone, "convnext_tiny", "ConvNeXt-Tiny (Liu et al. 2022) from torchvision.")
ConvNeXtSmallBackbone = _tv(ConvNeXtTVBackbone, "convnext_small", "ConvNeXt-Small from torchvision.")
ConvNeXtBaseBackbone = _tv(ConvNeXtTVBackbone, "convnext_base", "ConvNeXt-Base from torchvision.")


# -- timm -------------------------------------------------------------------------------------


class TimmBackbone(PretrainedBackbone):
    """Any timm model as timm:<name> (e.g. timm:convnext_nano, timm:resnet50.a1_in1k), N-band input."""

    name = "timm:*"
    weight_options = "none | auto | imagenet (timm's default tag) | hf-hub:<org/repo> | run:<dir> | <file>"
    model_name: ClassVar[str] = ""
    model_args: ClassVar[dict[str, Any]] = {}

    @classmethod
    def resolve_family(cls, suffix: str, registry=None) -> type:
        import timm

        if not suffix:
            raise UnknownNameError("backbone 'timm:' needs a model name, e.g. timm:resnet18 or timm:convnext_nano; "
                                   "`python -c \"import timm; print(timm.list_models())\"` lists them")
        arch = suffix.split(".")[0]
        if not timm.is_model(arch):
            raise UnknownNameError(f"unknown timm model '{suffix}'{did_you_mean(arch, timm.list_models())}; "
                                   f"`python -c \"import timm; print(timm.list_models('*{arch[:4]}*'))\"` lists similar ones")
        return cls.make_subclass(f"timm:{suffix}", model_name=suffix,
                                 doc=f"timm model {suffix} (num_classes=0, N-band first convolution).")

    def build_net(self, in_chans: int) -> nn.Module:
        import timm

        if not self.model_name:
            raise UnknownNameError("the timm:* family is not a backbone itself; name a model, e.g. timm:resnet18")
        net = timm.create_model(self.model_name, pretrained=False, num_classes=0, in_chans=in_chans, **self.model_args)
        # timm: num_features = channels of forward_features; head_hidden_size = the pooled vector (they differ for
        # e.g. MobileNetV3, whose head convolution comes after the pool)
        self.feature_channels = int(net.num_features)
        self.num_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
        return net

    def first_conv_key(self) -> str:
        first = self.net.pretrained_cfg.get("first_conv") or "conv1"
        if isinstance(first, (list, tuple)):
            first = first[0]
        return f"{first}.weight"

    def classifier_prefixes(self):
        head = self.net.pretrained_cfg.get("classifier") or "fc"
        heads = head if isinstance(head, (list, tuple)) else [head]
        return tuple(f"{h}." for h in heads)

    def pretrained_request(self) -> WeightsRequest:
        return timm_request(self.model_name)

    def _spatial_refusal(self) -> str | None:
        """Why this model cannot serve ``[B, C, h, w]`` maps at increasing strides (``None``: it can)."""
        net = self.net
        info = getattr(net, "feature_info", None)
        token = getattr(net, "num_prefix_tokens", None) is not None or hasattr(net, "cls_token")
        strides = [int(d["reduction"]) for d in info] if info else []
        if token or (len(strides) > 1 and len(set(strides)) == 1):
            return (f"backbone '{self.name}' is a vision transformer: its features are tokens at one stride "
                    f"({strides[0] if strides else '?'} px), not multi-scale maps; use a convolutional backbone "
                    f"(e.g. resnet18, timm:convnext_nano, zoobot:convnext_nano) for detection and explanations")
        if not info:
            return (f"timm model '{self.name}' publishes no feature_info, so its multi-scale maps are unknown; use a "
                    f"convolutional timm model with feature_info (e.g. timm:resnet18, timm:convnext_nano)")
        return None

    def _require_spatial(self) -> None:
        why = self._spatial_refusal()
        if why:
            raise ConfigError(why)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features`` as ``[B, C, h, w]`` (channels-last outputs, e.g. Swin, are permuted)."""
        out = self.net.forward_features(x)
        if out.ndim == 4 and getattr(self.net, "output_fmt", "NCHW") == "NHWC":
            out = out.permute(0, 3, 1, 2)
        if out.ndim != 4:
            self._require_spatial()
            raise ConfigError(f"backbone '{self.name}' returns features of shape {list(out.shape)}, not a "
                              f"[B, C, h, w] map; use a convolutional backbone")
        return out

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One map per entry of timm's ``feature_info`` (e.g. ResNet: stem at stride 2, then ``layer1`` .. ``layer4``).

        Uses timm's ``forward_intermediates`` where the model has it, else forward hooks on the modules
        that ``feature_info`` names; the network (and its weights) is the one :meth:`forward` uses.
        """
        self._require_spatial()
        expected = self.feature_info
        if hasattr(self.net, "forward_intermediates"):
            maps = list(self.net.forward_intermediates(x, intermediates_only=True))
        else:
            maps = self._hooked_maps(x)
        if len(maps) != len(expected) or any(m.ndim != 4 or m.shape[1] != e["channels"] for m, e in zip(maps, expected)):
            raise ConfigError(f"backbone '{self.name}' gave feature maps {[list(m.shape) for m in maps]}, which do not "
                              f"match its feature_info {expected}; use another backbone for detection")
        return maps

    def _hooked_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        mods = dict(self.net.named_modules())
        names = [d["module"] for d in self.net.feature_info]
        out: dict[str, torch.Tensor] = {}
        handles = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)) for n in names]
        try:
            self.net.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        return [out[n] for n in names]

    @property
    def feature_info(self) -> list[dict[str, int]]:
        """From timm's ``feature_info`` (no forward pass): ``num_chs`` and ``reduction`` of each stage."""
        self._require_spatial()
        return [{"channels": int(d["num_chs"]), "stride": int(d["reduction"])} for d in self.net.feature_info]

    def cam_layer(self) -> nn.Module:
        """The module of the last ``feature_info`` entry: the last stage of a CNN."""
        self._require_spatial()
        return dict(self.net.named_modules())[self.net.feature_info[-1]["module"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # timm's own pooling and pre-logits norm (num_classes=0)

    def blocks(self) -> list[nn.Module]:
        """timm's coarse parameter groups (stem, stages): ``model.group_matcher(coarse=True)``."""
        names = getattr(self, "_block_names", None)
        if names is None:
            from timm.models._manipulate import group_modules

            groups = [list(v) for _, v in sorted(group_modules(self.net, self.net.group_matcher(coarse=True)).items())]
            mods = dict(self.net.named_modules())
            conv_like = (nn.Conv2d, nn.Linear)
            # a trailing group holding only norms (e.g. ConvNeXt's head.norm) belongs to the last stage
            while len(groups) > 1 and not any(isinstance(mods[n], conv_like) for n in groups[-1]):
                groups[-2].extend(groups.pop())
            names = self._block_names = groups
        mods = dict(self.net.named_modules())
        return [nn.ModuleList([mods[n] for n in g]) for g in names]


# -- Zoobot -----------------------------------------------------------------------------------


class ZoobotBackbone(TimmBackbone):
    """Zoobot galaxy encoders as zoobot:<name> (Hugging Face mwalmsley/zoobot-encoder-<name>), from the local HF cache."""

    name = "zoobot:*"
    weight_options = "zoobot (default) | auto | none | <Zoobot .ckpt or file> | run:<dir>"
    zoobot_name: ClassVar[str] = ""

    @classmethod
    def resolve_family(cls, suffix: str, registry=None) -> type:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", suffix or ""):
            raise UnknownNameError(f"bad Zoobot encoder name '{suffix}'; use e.g. zoobot:convnext_nano "
                                   f"(known: {', '.join(sorted(ZOOBOT_ENCODERS))})")
        cfg = zoobot_config(suffix)
        if cfg is not None:
            arch = cfg.get("architecture") or cfg.get("pretrained_cfg", {}).get("architecture")
            model_args = dict(cfg.get("model_args") or {})
        else:
            arch, model_args = ZOOBOT_ENCODERS.get(suffix), {}
        if not arch:
            raise UnknownNameError(
                f"unknown Zoobot encoder '{suffix}'{did_you_mean(suffix, ZOOBOT_ENCODERS)}: its architecture is not "
                f"known offline; known: {', '.join(sorted(ZOOBOT_ENCODERS))}; for another published encoder put its "
                f"Hugging Face repo {zoobot_repo(suffix)} (config.json + model.safetensors) in the HF cache")
        model_args.pop("in_chans", None)
        model_args.pop("num_classes", None)
        return cls.make_subclass(f"zoobot:{suffix}", default_weights="zoobot", model_name=arch, model_args=model_args,
                                 zoobot_name=suffix,
                                 doc=f"Zoobot encoder {suffix} (timm {arch}; Hugging Face {zoobot_repo(suffix)}).")

    def pretrained_request(self) -> WeightsRequest:
        return zoobot_request(self.zoobot_name)

    def named_request(self, choice: str) -> WeightsRequest | None:
        if choice.lower() == "zoobot":
            return zoobot_request(self.zoobot_name)
        return super().named_request(choice)

    def _resolve_weights(self, config):
        if config.weights.strip().lower() == "imagenet":
            raise WeightsError(f"{self.name} is a Zoobot encoder (galaxy-pretrained), it has no ImageNet weights; use "
                               f"weights: zoobot, or backbone timm:{self.model_name} for ImageNet weights")
        return super()._resolve_weights(config)


# -- earlier runs -----------------------------------------------------------------------------


class RunBackbone(Backbone):
    """The backbone exported by an earlier astrotl run, as run:<run dir> (its architecture and weights)."""

    name = "run:*"
    Config = BackboneConfig
    weight_options = "run:<dir> (default) | any option of its architecture"

    @classmethod
    def resolve_family(cls, suffix: str, registry=None) -> type:
        path = resolve_run_dir(f"run:{suffix}")
        meta = read_metadata(path)
        arch = meta.get("backbone")
        if not arch:
            raise WeightsError(f"'{path}' has no 'backbone' in its metadata, so its architecture is unknown; use "
                               f"backbone: {{name: <architecture>, weights: run:{suffix}}}")
        if registry is None:
            from .plugins import load_registries

            registry = load_registries().backbones
        base = registry.get(arch)
        if not (isinstance(base, type) and issubclass(base, PretrainedBackbone)):
            raise WeightsError(f"the run's backbone '{arch}' cannot be rebuilt by name; use "
                               f"backbone: {{name: {arch}, weights: run:{suffix}}}")
        return base.make_subclass(f"run:{suffix}", default_weights=f"run:{suffix}", arch_name=base.arch_name or base.name,
                                  doc=f"{arch} backbone exported by the run {suffix}.")

    def forward_features(self, x):  # pragma: no cover -- never instantiated
        raise NotImplementedError

    def blocks(self):  # pragma: no cover
        raise NotImplementedError


BUILTIN_BACKBONES = [ResNet18Backbone, ResNet34Backbone, ResNet50Backbone, ResNet101Backbone, VGG11BNBackbone,
                     VGG16Backbone, VGG16BNBackbone, VGG19BNBackbone, ConvNeXtTinyBackbone, ConvNeXtSmallBackbone,
                     ConvNeXtBaseBackbone, TimmBackbone, ZoobotBackbone, RunBackbone]
