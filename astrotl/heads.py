"""Generic heads: a linear layer and a small MLP."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from .interfaces import ComponentConfig, Head


class LinearHeadConfig(ComponentConfig):
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the linear layer")


class LinearHead(Head):
    """Dropout + one linear layer: the standard fine-tuning / linear-probe head."""

    name = "linear"
    Config = LinearHeadConfig

    def __init__(self, config: LinearHeadConfig, *, in_features: int, out_features: int):
        super().__init__(config, in_features=in_features, out_features=out_features)
        self.layers = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_features, out_features))

    def forward(self, x):
        return self.layers(x)


class MLPHeadConfig(ComponentConfig):
    hidden: list[int] = Field(default_factory=lambda: [256], description="hidden layer widths")
    dropout: float = Field(0.2, ge=0, lt=1)


class MLPHead(Head):
    """Multi-layer perceptron head (Linear-BN-ReLU-Dropout blocks, then a linear output)."""

    name = "mlp"
    Config = MLPHeadConfig

    def __init__(self, config: MLPHeadConfig, *, in_features: int, out_features: int):
        super().__init__(config, in_features=in_features, out_features=out_features)
        layers: list[nn.Module] = []
        width = in_features
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


BUILTIN_HEADS = [LinearHead, MLPHead]
