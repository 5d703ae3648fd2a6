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
to the predictions (a left join: every sample keeps a row, whether the task predicted zero, one or
many rows for it).

Optional data-set methods the engine uses when present: ``labels()`` (int class per sample, -1 for
unlabelled; stratifies training subsets), ``groups()`` (a group id per sample, e.g. one galaxy's
stamps in 16 bands; training subsets by group), ``targets()`` (``[N, K]`` soft labels).
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
    #: detection data sets return lists of boxes and set :func:`astrotl.data.list_collate`
    #: (a task may also set its own ``collate_fn``, which then wins).
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

    The contract every backbone family keeps (classification, regression, detection and
    explanations all rely on it):

    :meth:`forward`
        pooled features ``[B, num_features]``;
    :meth:`forward_features`
        the last spatial map ``[B, feature_channels, h, w]``;
    :meth:`feature_maps` and :attr:`feature_info`
        multi-scale maps (one per stage, increasing stride) with their ``channels`` and
        ``stride``: what a detector's FPN needs;
    :meth:`cam_layer`
        the module whose activations an explanation (Grad-CAM) should hook;
    :meth:`blocks`
        the stages in input-to-output order, for freezing and learning-rate decay.

    A model that cannot serve spatial maps (a vision transformer's tokens) must raise
    :class:`astrotl.errors.ConfigError` from :meth:`feature_maps` / :meth:`cam_layer` with a
    clear message rather than return something mis-shaped.

    Attributes to set in ``__init__``:

    ``num_features``
        Size of the pooled feature vector returned by :meth:`forward`.
    ``feature_channels``
        Channels of the map returned by :meth:`forward_features`.
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

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage, shallow to deep (default: the last map only)."""
        return [self.forward_features(x)]

    @property
    def feature_info(self) -> list[dict[str, int]]:
        """``[{"channels": C, "stride": S}, ...]`` matching :meth:`feature_maps`."""
        return [{"channels": int(self.feature_channels), "stride": 32}]

    def cam_layer(self) -> nn.Module:
        """The layer whose output an explanation hooks (default: the last block)."""
        return self.blocks()[-1]

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
    """What to learn and how to judge it: model, loss, validation, metrics, predictions and outputs.

    Constructed as ``TaskCls(config, info)`` with the training set's :class:`DatasetInfo`.
    The engine only orchestrates; it calls, in order:

    1. :meth:`check_data` on each split, then :meth:`output_dim` and :meth:`build_model`;
    2. :meth:`train_transform` / :meth:`eval_transform` to wrap the samples;
    3. :meth:`batch_augment` on every training batch (on the device, with a generator seeded
       per epoch and batch, so that a resumed run repeats the uninterrupted one);
    4. :meth:`training_loss` in training and :meth:`validation_step` + :meth:`update_metrics` in
       validation; :meth:`make_metrics` gives one metric collection whose ``compute()`` (dict
       values flattened as ``<key>_<sub>``) is logged as ``val_<key>``;
    5. :meth:`predict_batch` (zero or more rows per sample, each with ``index``) and
       :meth:`truth_rows` (the ground truth :meth:`evaluate` needs, e.g. one row per true box) on
       the test (or predict) split;
    6. :meth:`evaluate` on the predictions (the catalogue left-joined with the rows) and the
       truth, then :meth:`plots`, :meth:`report`, :meth:`headline` and :meth:`output_files` to
       write the run directory and the line ``astrotl run`` prints.
    """

    #: Dataset names this task is meant for (informational; ``astrotl list`` shows it).
    default_dataset: ClassVar[str | None] = None
    default_head: ClassVar[str] = "linear"
    #: What kind of problem this is: "classification", "soft_labels" or "detection" (a plugin may add
    #: kinds); :func:`astrotl.loadrun.load_run` checks new data against it.
    kind: ClassVar[str] = "classification"
    #: Collation of samples into a batch (``None``: the data set's, else torch's default).
    collate_fn: ClassVar[Any] = None
    #: Metric logged during validation that checkpointing and early stopping watch by default.
    monitor: ClassVar[str] = "val_loss"
    monitor_mode: ClassVar[str] = "min"
    #: The test metric that summarises a run (``astrotl run`` prints it, ``astrotl compare`` tabulates
    #: it) and whether higher is better.
    headline_metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, info: DatasetInfo):
        self.config = config
        self.info = info

    def output_dim(self) -> int:
        """Number of outputs the head must produce (default: classes, else targets)."""
        names = self.info.classes or self.info.targets or ()
        return len(names)

    def check_data(self, dataset: ImageDataset, split: str) -> None:
        """Refuse data this task cannot learn from with a one-line :class:`~astrotl.errors.DataError`."""

    def build_model(self, backbone: Backbone, head: Head) -> nn.Module:
        """Assemble the trainable model. Default: ``head(backbone(x))``."""
        return nn.Sequential(backbone, head)

    def train_transform(self):
        """Callable applied to each training sample dict (``None``: identity)."""
        return None

    def eval_transform(self):
        """Callable applied to each validation/test/predict sample dict (``None``: identity)."""
        return None

    def batch_augment(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment a collated training batch on the device (default: unchanged).

        Draw random numbers from ``generator`` (a CPU generator the engine seeds per epoch and
        batch) so that a resumed run makes the same draws as the uninterrupted one.
        """
        return batch

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        """Called by the engine at the start of every training epoch (``epoch`` counted from 0, also after a
        resume), for losses that change during training (default: nothing)."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Return ``(loss, outputs)`` for a training batch."""

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor | None, Any]:
        """``(loss or None, outputs)`` for a validation batch; ``outputs`` goes to :meth:`update_metrics`.

        The default is :meth:`training_loss` (the model is in eval mode). A detector in eval mode
        returns detections, not losses: its task returns ``(None, detections)``.
        """
        return self.training_loss(model, batch)

    def make_metrics(self):
        """One metric collection (``torchmetrics.MetricCollection``) serving validation."""
        import torchmetrics

        return torchmetrics.MetricCollection({})

    def update_metrics(self, metrics, outputs: Any, batch: dict[str, Any]) -> None:
        """Update ``metrics`` with one validation batch."""

    @abstractmethod
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of plain Python/numpy values, each with the sample's ``index``: zero, one or many per sample."""

    def truth_rows(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Ground-truth rows (each with ``index``) that :meth:`evaluate` needs beyond the prediction rows.

        Default: none (classification carries the true class in its prediction rows). A detection
        task returns one row per true box, so that images without detections still count.
        """
        return []

    @abstractmethod
    def evaluate(self, predictions: Table, truth: Table) -> tuple[dict[str, Any], dict[str, Table]]:
        """Metrics (flat JSON-able dict) and named tables (e.g. ``confusion``) from predictions and truth."""

    def plots(self, predictions: Table, truth: Table, metrics: dict[str, Any], history: Table,
              plot_dir: Path) -> list[Path]:
        """Write PNG plots to ``plot_dir`` atomically; return their paths."""
        return []

    def report(self, predictions: Table, metrics: dict[str, Any], tables: dict[str, Table]) -> str:
        """Markdown section(s) for ``report.md`` describing the results."""
        return ""

    def headline(self, metrics: dict[str, Any]) -> str:
        """The one-line summary ``astrotl run`` prints, from the (un-prefixed) test metrics."""
        value = metrics.get(self.headline_metric)
        if value is None:
            return ""
        return f"test {self.headline_metric.replace('_', ' ')} {float(value):.4g}"

    def output_files(self) -> dict[str, str]:
        """Descriptions of this task's files, for the report's file list (``{relative path: text}``)."""
        return {"predictions.ecsv": "one row per test sample: catalogue columns and the predictions"}
