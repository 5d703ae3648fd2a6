"""Generic backbones: torchvision ResNet and VGG-BN families, any number of input bands.

``weights`` is one of

``none``
    random initialisation;
``imagenet``
    torchvision's ImageNet checkpoint from the local torch hub cache or ``$ASTROTL_WEIGHTS_DIR``
    (never downloaded at run time); absent -> a clear error naming the file and how to get it;
``auto``
    ImageNet when it can be had offline, else random initialisation with a loud
    :class:`~astrotl.errors.RandomInitWarning` that is also written into the run's outputs;
a file path
    ``.safetensors`` / ``.pt`` / ``.pth`` / ``.ckpt`` holding a state dict (torchvision layout, or
    a backbone exported by an astrotl run).

RGB weights are adapted to N bands by :func:`astrotl.weights.adapt_first_conv` (``input_adapter``),
never silently re-initialised.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar, Literal

import torch
import torchvision
from pydantic import Field
from torch import nn

from .errors import RandomInitWarning, WeightsError
from .interfaces import Backbone, ComponentConfig
from .weights import (
    adapt_first_conv,
    file_record,
    find_imagenet_file,
    imagenet_missing_message,
    load_into,
    load_state_dict_file,
    strip_prefixes,
)

log = logging.getLogger(__name__)

IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "space": "RGB, 0-1"}


class TorchvisionBackboneConfig(ComponentConfig):
    weights: str = Field("auto", description="none | imagenet | auto | path to a weights file")
    input_adapter: Literal["repeat", "map"] = Field(
        "repeat", description="how RGB first-conv weights serve N bands: repeat (cycle R,G,B, rescale) or map (rgb_bands)")
    rgb_bands: list[str] | None = Field(None, description="with input_adapter: map, the bands fed to R, G, B")
    freeze_blocks: int = Field(0, ge=0, description="freeze the first K blocks (weights and BatchNorm statistics)")


class TorchvisionBackbone(Backbone):
    """Base of torchvision classification backbones; subclasses set ``arch``."""

    arch: ClassVar[str] = ""
    Config = TorchvisionBackboneConfig

    def __init__(self, config: TorchvisionBackboneConfig, *, in_chans: int, bands: tuple[str, ...]):
        super().__init__(config, in_chans=in_chans, bands=bands)
        net = getattr(torchvision.models, self.arch)(weights=None)
        self.weights_info = self._load_weights(net, config)
        self._replace_first_conv(net, config)
        self.net = net
        self._strip_classifier()
        self.frozen: list[nn.Module] = []
        if config.freeze_blocks:
            self.freeze(config.freeze_blocks)

    # -- weights ----------------------------------------------------------------------------
    def _load_weights(self, net: nn.Module, config: TorchvisionBackboneConfig) -> dict[str, Any]:
        info: dict[str, Any] = {"backbone": self.name, "requested": config.weights, "bands": list(self.bands),
                                "in_chans": self.in_chans, "input_adapter": config.input_adapter,
                                "sha256": None, "path": None, "warning": None, "normalisation": None}
        choice = config.weights.strip()
        if choice.lower() == "none":
            info.update(source="random")
            return info
        if choice.lower() in ("imagenet", "auto"):
            path, fname, dirs = find_imagenet_file(self.arch)
            if path is None:
                msg = imagenet_missing_message(self.arch, fname, dirs)
                if choice.lower() == "imagenet":
                    raise WeightsError(msg)
                warning = (f"RANDOM INITIALISATION: weights: auto found no ImageNet weights for {self.arch} offline "
                           f"(expected '{fname}' in {' or '.join(map(str, dirs))}); results are from a network trained "
                           f"from scratch. Put the file there or set ASTROTL_WEIGHTS_DIR to use ImageNet weights.")
                warnings.warn(warning, RandomInitWarning, stacklevel=2)
                log.warning(warning)
                info.update(source="random", warning=warning)
                return info
            state = load_state_dict_file(path)
            rec = file_record(path)
            expected = fname.rsplit("-", 1)[-1].split(".")[0]
            if not rec["sha256"].startswith(expected):
                raise WeightsError(f"ImageNet file '{path}' has sha256 {rec['sha256'][:12]}..., expected it to start with "
                                   f"{expected} (torchvision's published hash); the file is corrupt or not the "
                                   f"official one: delete and re-download it")
            load_into(net, state, source=str(path))
            info.update(source="imagenet", normalisation=IMAGENET_NORMALISATION, **rec)
            return info
        state = strip_prefixes(load_state_dict_file(choice))
        rec = file_record(choice)
        first = self._first_conv_key()
        w = state.get(first)
        if w is not None and w.shape[1] != 3 and w.shape[1] != self.in_chans:
            raise WeightsError(f"weights file '{choice}' was trained on {w.shape[1]} input bands; this data has "
                               f"{self.in_chans} ({', '.join(self.bands)}); use weights made for these bands")
        if w is not None and w.shape[1] == self.in_chans and self.in_chans != 3:
            self._pending_first_conv = w  # already N-band: loaded after the conv is replaced
            state = {k: v for k, v in state.items() if k != first}
        load_into(net, state, source=choice, skip_prefixes=self._classifier_prefixes())
        info.update(source="file", **rec)
        return info

    def _replace_first_conv(self, net: nn.Module, config: TorchvisionBackboneConfig) -> None:
        parent, attr = self._first_conv_parent(net)
        old: nn.Conv2d = getattr(parent, attr)
        if self.in_chans == old.in_channels and getattr(self, "_pending_first_conv", None) is None:
            return
        new = nn.Conv2d(self.in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
        with torch.no_grad():
            pending = getattr(self, "_pending_first_conv", None)
            if pending is not None:
                new.weight.copy_(pending)
            elif self.weights_info["source"] != "random":
                new.weight.copy_(adapt_first_conv(old.weight.detach(), self.in_chans, config.input_adapter,
                                                  self.bands, config.rgb_bands))
                self.weights_info["first_conv"] = f"adapted RGB -> {self.in_chans} bands ({config.input_adapter})"
            if old.bias is not None:
                new.bias.copy_(old.bias)
        setattr(parent, attr, new)

    # -- architecture hooks ---------------------------------------------------------------------
    def _first_conv_key(self) -> str:
        raise NotImplementedError

    def _first_conv_parent(self, net: nn.Module) -> tuple[nn.Module, str]:
        raise NotImplementedError

    def _classifier_prefixes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _strip_classifier(self) -> None:
        raise NotImplementedError

    # -- freezing ---------------------------------------------------------------------------
    def freeze(self, n_blocks: int) -> None:
        """Freeze the first ``n_blocks`` blocks: no gradients and BatchNorm kept in eval mode."""
        blocks = self.blocks()
        if n_blocks > len(blocks):
            raise WeightsError(f"freeze_blocks={n_blocks} but {self.name} has only {len(blocks)} blocks")
        self.frozen = blocks[:n_blocks]
        for block in self.frozen:
            for p in block.parameters():
                p.requires_grad_(False)
            block.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for block in getattr(self, "frozen", []):
            block.eval()  # frozen means frozen: BatchNorm running statistics do not move
        return self


class ResNetBackbone(TorchvisionBackbone):
    def _first_conv_key(self) -> str:
        return "conv1.weight"

    def _first_conv_parent(self, net):
        return net, "conv1"

    def _classifier_prefixes(self):
        return ("fc.",)

    def _strip_classifier(self) -> None:
        self.num_features = self.feature_channels = self.net.fc.in_features
        self.net.fc = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def blocks(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]


class VGGBackbone(TorchvisionBackbone):
    def _first_conv_key(self) -> str:
        return "features.0.weight"

    def _first_conv_parent(self, net):
        return net.features, "0"

    def _classifier_prefixes(self):
        return ("classifier.",)

    def _strip_classifier(self) -> None:
        # Keep the convolutional trunk; a global average pool replaces the 4096-wide FC layers,
        # which assume 224x224 inputs and hold 90% of the parameters.
        self.num_features = self.feature_channels = 512
        self.net.classifier = nn.Identity()
        self.net.avgpool = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

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

    def freeze_layers(self, k: int) -> None:
        """Freeze the first ``k`` layers of ``features`` (as Stipp & Montana-Lopez froze VGG16's first 10)."""
        layers = list(self.net.features)[:k]
        for layer in layers:
            for p in layer.parameters():
                p.requires_grad_(False)
        self.frozen = [m for m in layers if isinstance(m, nn.BatchNorm2d)] + self.frozen


class ResNet18Backbone(ResNetBackbone):
    """ResNet-18 (He et al. 2016) from torchvision; Wei et al. 2020's first architecture."""

    name = "resnet18"
    arch = "resnet18"


class ResNet50Backbone(ResNetBackbone):
    """ResNet-50 from torchvision."""

    name = "resnet50"
    arch = "resnet50"


class VGG19BNBackbone(VGGBackbone):
    """VGG-19 with batch normalisation from torchvision; Wei et al. 2020's second architecture."""

    name = "vgg19_bn"
    arch = "vgg19_bn"


class VGG16Backbone(VGGBackbone):
    """VGG-16 from torchvision (Stipp & Montana-Lopez's open/globular cluster classifier)."""

    name = "vgg16"
    arch = "vgg16"


BUILTIN_BACKBONES = [ResNet18Backbone, ResNet50Backbone, VGG19BNBackbone, VGG16Backbone]
