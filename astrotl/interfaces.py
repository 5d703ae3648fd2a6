"""The four component interfaces a plugin implements: :class:`ImageDataset`, :class:`Backbone`,
:class:`Head` and :class:`Task`.

Every component class has

* ``name`` -- its key in YAML (``data: {name: phangs_sim}``) and in ``astrotl list``;
* ``Config`` -- a pydantic model (``extra="forbid"``) of its options; the YAML section minus
  ``name`` is validated against it and the validated instance is handed to ``__init__``;
* a docstring whose first line ``astrotl list`` shows.

A run assembles them as ``task.build_model(backbone, head)`` and trains the result with
Lightning. The sample dictionary that flows from a dataset through the task is shared by all
four science cases::

    {"image": float32 tensor [C, H, W],   # always
     "index": int,                         # position in the dataset (set by the dataset)
     "label": int,                         # classification
     "target": float32 tensor [K],         # probability regression (soft labels)
     "boxes": float32 tensor [N, 4], "labels": int64 tensor [N],   # detection (x0, y0, x1, y1; 0-based)
     }

Per-sample metadata (``id``, ``x``, ``y``, ``ra``, ``dec``, magnitudes, sub-classes ...) lives in
:meth:`ImageDataset.catalog`, an astropy Table row-aligned with the dataset, which the engine joins
to the predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from astropy.table import Table
from pydantic import BaseModel, ConfigDict
from torch import nn


class ComponentConfig(BaseModel):
    """Base of every component's ``Config``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component:
    """Mixin giving a component its registry ``name`` and its ``Config`` model."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


SPLITS = ("train", "val", "test", "predict")


@dataclass(frozen=True)
class DatasetInfo:
    """What a task and a backbone need to know about a dataset before building a model.

    Attributes
    ----------
    bands : tuple of str
        Filter / channel names in image-channel order, e.g. ``("F275W", ..., "F814W")``.
    classes : tuple of str or None
        Class codes for classification and detection (index ``i`` is label ``i``).
    class_descriptions : tuple of str or None
        Human-readable class names, same order as ``classes``.
    targets : tuple of str or None
        Names of the regression outputs (e.g. vote-fraction columns).
    image_size : int or None
        Side of the (square) images in pixels, when fixed.
    """

    bands: tuple[str, ...]
    classes: tuple[str, ...] | None = None
    class_descriptions: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    image_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ImageDataset(torch.utils.data.Dataset, Component, ABC):
    """A split of an image data set that yields sample dictionaries.

    Subclasses set ``name`` and ``Config``, and implement ``__len__``, ``__getitem__``,
    :meth:`info` and :meth:`catalog`. The engine constructs one instance per split::

        DatasetCls(config, split="train", seed=run_seed, cache_dir=Path(...))

    ``split`` is one of ``"train"``, ``"val"``, ``"test"`` or ``"predict"``; a data set that
    has no labels for a split should still return images. Any expensive generation or
    download belongs in ``__init__`` and should be cached under ``cache_dir``, keyed by
    everything that changes the data.

    Raise :class:`astrotl.errors.DataError` with a one-line message (what is wrong, how to fix
    it) for missing or bad input.
    """

    #: Collation of a list of samples into a batch. ``None``: torch's default (stacks tensors);
    #: detection data sets return lists of boxes and set :func:`astrotl.data.list_collate`.
    collate_fn: ClassVar[Any] = None

    def __init__(self, config: ComponentConfig, *, split: str, seed: int, cache_dir: Path):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.config = config
        self.split = split
        self.seed = seed
        self.cache_dir = Path(cache_dir)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Bands, classes and/or targets of this data set."""

    def catalog(self) -> Table:
        """Per-sample metadata, one row per sample in dataset order.

        Must have an ``id`` column; should have ``x``, ``y`` (0-based pixels) and/or ``ra``,
        ``dec`` where they make sense. The default gives only ``id = index``.
        """
        return Table({"id": list(range(len(self)))})


class Backbone(nn.Module, Component, ABC):
    """A feature extractor, usually pretrained, adapted to ``in_chans`` input bands.

    The engine constructs it as ``BackboneCls(config, in_chans=..., bands=...)``.

    Attributes to set in ``__init__``:

    ``num_features``
        Size of the pooled feature vector returned by :meth:`forward`.
    ``feature_channels``
        Channels of the map returned by :meth:`forward_features` (detection necks use it).
    ``weights_info``
        A dict describing the weights actually loaded: at least ``source`` (``"random"``,
        ``"imagenet"``, a file path, ...), ``sha256`` (or ``None``), ``bands``,
        ``normalisation`` and ``warning`` (``None`` unless something is worth a reader's
        attention, e.g. "random initialisation: ImageNet weights not found").
    """

    num_features: int
    feature_channels: int
    weights_info: dict[str, Any]

    def __init__(self, config: ComponentConfig, *, in_chans: int, bands: tuple[str, ...]):
        nn.Module.__init__(self)
        self.config = config
        self.in_chans = in_chans
        self.bands = tuple(bands)

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last spatial feature map, ``[B, feature_channels, h, w]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, num_features]`` (global average pool by default)."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The backbone's stages in input-to-output order, for freezing and learning-rate decay."""


class Head(nn.Module, Component, ABC):
    """Maps backbone features to task outputs.

    Constructed as ``HeadCls(config, in_features=backbone.num_features, out_features=task_dim)``.
    Classification heads return logits, regression heads return unnormalised outputs the task
    turns into probabilities, detection tasks may ignore the head (the detector has its own).
    """

    def __init__(self, config: ComponentConfig, *, in_features: int, out_features: int):
        nn.Module.__init__(self)
        self.config = config
        self.in_features = in_features
        self.out_features = out_features


class Task(Component, ABC):
    """What to learn and how to judge it: model assembly, loss, metrics and outputs.

    Constructed as ``TaskCls(config, info)`` with the training set's :class:`DatasetInfo`.
    The engine calls, in order:

    1. :meth:`output_dim` and :meth:`build_model` to assemble backbone + head;
    2. :meth:`train_transform` / :meth:`eval_transform` to wrap the samples;
    3. :meth:`batch_augment` on every training batch (on the device);
    4. :meth:`training_loss` and :meth:`update_metrics` in the Lightning loop;
    5. :meth:`predict_batch` on the test (or predict) split, giving one dict per sample;
    6. :meth:`evaluate` on the joined predictions table, then :meth:`plots` and
       :meth:`report` to write the run directory.
    """

    #: Dataset names this task is meant for (informational; ``astrotl list`` shows it).
    default_dataset: ClassVar[str | None] = None
    default_head: ClassVar[str] = "linear"
    #: Metric logged during validation that checkpointing and early stopping watch by default.
    monitor: ClassVar[str] = "val_loss"
    monitor_mode: ClassVar[str] = "min"

    def __init__(self, config: ComponentConfig, info: DatasetInfo):
        self.config = config
        self.info = info

    @abstractmethod
    def output_dim(self) -> int:
        """Number of outputs the head must produce."""

    def build_model(self, backbone: Backbone, head: Head) -> nn.Module:
        """Assemble the trainable model. Default: ``head(backbone(x))``."""
        return nn.Sequential(backbone, head)

    def train_transform(self):
        """Callable applied to each training sample dict (``None``: identity)."""
        return None

    def eval_transform(self):
        """Callable applied to each validation/test/predict sample dict (``None``: identity)."""
        return None

    def batch_augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Augment a collated training batch on the device (default: unchanged)."""
        return batch

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Return ``(loss, outputs)`` for a batch; ``outputs`` is passed to :meth:`update_metrics`."""

    def make_metrics(self) -> nn.ModuleDict:
        """torchmetrics objects updated during validation (keys become ``val_<key>``)."""
        return nn.ModuleDict()

    def update_metrics(self, metrics: nn.ModuleDict, outputs: Any, batch: dict[str, Any]) -> None:
        """Update ``metrics`` with one batch."""

    @abstractmethod
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One dict of plain Python/numpy values per sample; must include ``index``."""

    @abstractmethod
    def evaluate(self, predictions: Table) -> tuple[dict[str, Any], dict[str, Table]]:
        """Metrics (flat JSON-able dict) and named tables (e.g. ``confusion``) from predictions."""

    def plots(self, predictions: Table, metrics: dict[str, Any], history: Table, plot_dir: Path) -> list[Path]:
        """Write PNG plots to ``plot_dir`` atomically; return their paths."""
        return []

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        """Markdown section(s) for ``report.md`` describing the results."""
        return ""
