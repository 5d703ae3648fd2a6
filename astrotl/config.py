"""Task files: YAML in, validated configuration out.

A task file has six sections; ``task``, ``data``, ``backbone`` and ``head`` each name a
registered component and carry that component's own options, validated against the
component's pydantic ``Config``::

    name: phangs_clusters          # run name -> runs/phangs_clusters/
    seed: 0
    task:     {name: phangs_clusters, ...}
    data:     {name: phangs_sim, ...}
    backbone: {name: resnet18, weights: auto}
    head:     {name: linear}
    optim:    {lr: 1e-3, ...}
    trainer:  {max_epochs: 10, ...}

Unknown keys and names are errors with a "did you mean"; the error names the YAML line.
"""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, did_you_mean
from .interfaces import ComponentConfig
from .plugins import Registries

SECTIONS = ("task", "data", "backbone", "head")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EarlyStoppingConfig(_Strict):
    """Stop when the monitored validation metric stops improving."""

    enabled: bool = True
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class SWAConfig(_Strict):
    """Stochastic weight averaging: the equal-weight mean of the weights at the end of the last epochs."""

    start: float = Field(0.5, gt=0, le=1, description="first averaged epoch as a fraction of max_epochs")


class EmbeddingsConfig(_Strict):
    """Cached backbone embeddings for training with a frozen backbone (see :mod:`astrotl.embeddings`)."""

    views: Literal[1, 2, 8] = Field(
        1, description="embeddings per training sample: 1 (no augmentation), 2 (identity and flip), "
                       "8 (the D4 rotations and flips of augment: d4)")


class TrainerConfig(_Strict):
    """Lightning Trainer settings (CPU, GPU, DDP) and data loading."""

    max_epochs: int = Field(10, ge=1)
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps (-1: no limit)")
    min_steps: int = Field(0, ge=0, description="train at least this many optimiser steps: max_epochs is raised where "
                           "the training split is small (e.g. a small train_subset); early stopping may end sooner")
    batch_size: int = Field(64, ge=1, description="per device")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    accelerator: str = Field("auto", description="cpu, gpu, mps or auto")
    devices: int | str | list[int] = Field("auto", description="number of devices, a list of ids, or auto")
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="auto, ddp, ddp_spawn, fsdp, ... (Lightning strategies)")
    precision: str = Field("32-true", description="32-true, 16-mixed, bf16-mixed, ...")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    monitor: str | None = Field(None, description="validation metric for checkpoints/early stopping (task default if null)")
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = Field(1, ge=1)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    val_check_interval: int | float | None = None
    log_every_n_steps: int = Field(10, ge=1)
    progress_bar: bool = True
    deterministic: bool | Literal["warn"] = False
    logger: Literal["csv", "tensorboard", "none"] = "csv"
    ema: float | None = Field(None, gt=0, lt=1, description="exponential moving average of the weights with this decay "
                              "per optimiser step (e.g. 0.99); validation, checkpoints and the final model use it")
    swa: SWAConfig | None = Field(None, description="stochastic weight averaging of the last epochs (e.g. {start: 0.5}); "
                                  "validation, checkpoints and the final model use the average")
    num_threads: int | None = Field(None, ge=1, description="CPU threads per process for torch (None: torch's default); "
                                    "1 is fastest on a shared or oversubscribed CPU, e.g. DDP on CPU")
    cache_embeddings: bool | Literal["auto"] = Field(
        "auto", description="with a frozen backbone, compute its embeddings once, cache them on disk and train the head "
                            "on them (auto: when the backbone is frozen and the augmentation allows; true: or an error)")
    embeddings: EmbeddingsConfig = EmbeddingsConfig()


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    scheduler: Literal["cosine", "none", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1, description="step scheduler: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step scheduler: decay factor")


class TrainSubsetConfig(_Strict):
    """Train on a seeded, stratified subset of the training split (label-efficiency curves)."""

    size: int | None = Field(None, ge=1, description="number of training samples (or groups) to keep; null: all")
    unit: Literal["auto", "samples", "groups"] = Field(
        "auto", description="count samples or groups (all stamps of one object); auto: groups when the data set has them")
    seed: int = Field(0, description="seed of the subset draw (independent of the run seed)")
    stratify: bool = Field(True, description="keep the class proportions of the full training split")


class CVConfig(_Strict):
    """k-fold cross-validation over the training and validation splits, or all three (see :mod:`astrotl.crossval`)."""

    k: int = Field(5, ge=2, le=50, description="number of folds")
    keep: Literal["ensemble", "none"] = Field(
        "none", description="ensemble: the run's predictions average the k fold models' probabilities")
    refit: bool = Field(False, description="also train one model on all training + validation labels for the median "
                                           "best epoch of the folds; it becomes the run's model")
    seed: int = Field(0, description="seed of the fold assignment (stratified by class, whole groups)")
    test: Literal["split", "fold"] = Field(
        "split", description="split: every fold model is tested on the common test split; fold: all three splits are "
                             "pooled and fold i is also fold i's test set (validation: fold i + 1), so that every "
                             "labelled sample is tested once -- for data sets too small to spare a test split")

    @model_validator(mode="after")
    def _check_test_fold(self):
        if self.test == "fold":
            if self.k < 3:
                raise ValueError(f"cv.test: fold needs k >= 3 (test, validation and training folds), got k={self.k}")
            if self.keep == "ensemble" or self.refit:
                raise ValueError("cv.test: fold tests each fold model on its own fold, so there is no common test "
                                 "split to ensemble on and nothing to test a refit on; use keep: none, refit: false "
                                 "(or cv.test: split)")
        return self


class CompareSlurmConfig(_Strict):
    """Resources of each cell's job under ``compare.executor: slurm`` (``time`` also limits ``local`` jobs)."""

    partition: str | None = None
    time: int | str = Field(60, description="wall-clock limit per cell job: minutes, or [D-]HH:MM[:SS]; a cell that "
                            "reaches it is requeued and resumes from its last checkpoint")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(4, ge=1, description="CPU cores per cell job (also its torch threads)")
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int = Field(32, ge=1, description="at most this many cells of the job array run at once")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job (module load, ...)")
    max_requeue: int = Field(3, ge=0, description="requeue a timed-out cell at most this many times")


class CompareEnsembleConfig(_Strict):
    """Combine the predictions of cells that differ only in the ``over`` axes (``astrotl ensemble``)."""

    over: list[str] = Field(default_factory=lambda: ["seed"], description="'seed' and/or grid keys (e.g. backbone.name)")
    tie_break: Literal["smallest", "first"] = "smallest"
    min_members: int = Field(2, ge=2)


class CompareConfig(_Strict):
    """``astrotl compare``: a grid of config values x seeds, each cell an ordinary run (ignored by ``astrotl run``)."""

    grid: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict, description="dotted config key -> list of values, or {label: value}")
    seeds: list[int] | None = Field(None, description="run seeds of every grid point (default: the task's seed)")
    seed_keys: list[str] = Field(default_factory=lambda: ["seed"], description="keys set to each seed, e.g. "
                                 "[seed, train_subset.seed] to draw a new training subset per seed")
    out: str | None = Field(None, description="output folder (default: <output_dir>/<name>_compare)")
    workers: int | None = Field(None, ge=1, description="cells run at once (default: min(cells, CPU cores))")
    executor: Literal["processes", "local", "debug", "slurm"] = "processes"
    metrics: list[str] | None = Field(None, description="test metrics shown next to the headline metric")
    curve_x: str | None = Field(None, description="grid key of the learning curves' x axis (default: train_subset.size "
                                "or data.n_train when in the grid)")
    slurm: CompareSlurmConfig = CompareSlurmConfig()
    ensemble: CompareEnsembleConfig | bool | None = None


class StageConfig(_Strict):
    """One stage of a multi-stage run: a name and a partial config merged over the top level."""

    name: str
    description: str | None = None
    seed: int | None = None
    task: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    backbone: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    optim: dict[str, Any] | None = None
    trainer: dict[str, Any] | None = None
    train_subset: dict[str, Any] | None = None
    head_from: str | None = Field(None, description="start the head from this earlier stage's trained head")

    @field_validator("name")
    @classmethod
    def _safe_stage_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
            raise ValueError("use letters, digits, '_', '-' and '.' only (it becomes a directory name)")
        return v


class RunConfig(_Strict):
    """Top level of a task file."""

    name: str = Field(..., description="run name; outputs go to <output_dir>/<name>")
    seed: int = 0
    output_dir: str = "runs"
    cache_dir: str | None = Field(None, description="where generated/simulated data is cached (default: ~/.cache/astrotl)")
    description: str = ""
    task: dict[str, Any]
    data: dict[str, Any]
    backbone: dict[str, Any]
    head: dict[str, Any] = Field(default_factory=lambda: {"name": "linear"})
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    train_subset: TrainSubsetConfig = TrainSubsetConfig()
    cv: CVConfig | None = Field(None, description="k-fold cross-validation: one run per fold in <run>/folds/<i>/, "
                                                  "mean +- std over folds (e.g. {k: 5})")
    stages: list[StageConfig] | None = Field(
        None, description="ordered stages, each a partial config merged over the top level (pre-train, fine-tune, ...)")
    compare: CompareConfig | None = Field(None, description="grid for `astrotl compare` (ignored by `astrotl run`)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
            raise ValueError("use letters, digits, '_', '-' and '.' only (it becomes a directory name)")
        return v


@dataclass
class ResolvedConfig:
    """A validated run configuration with each component's config model instance."""

    run: RunConfig
    components: dict[str, tuple[type, ComponentConfig]]  # section -> (class, config)
    source: Path | None = None
    #: For a multi-stage run: each stage's own resolved config (its ``run.name`` is the stage name).
    stages: list["ResolvedConfig"] = field(default_factory=list)
    #: For a stage: the stage it starts its head from (``head_from``), else None.
    head_from: str | None = None

    def component(self, section: str) -> tuple[type, ComponentConfig]:
        return self.components[section]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with every default filled in: what ``config.resolved.yaml`` holds."""
        out = self.run.model_dump(mode="json", exclude={"stages"})
        for section, (cls, cfg) in self.components.items():
            out[section] = {"name": cls.name, **cfg.model_dump(mode="json")}
        if self.stages:
            out["stages"] = [{**st.to_dict(), "name": st.run.name} for st in self.stages]
            for st in out["stages"]:
                for key in ("output_dir", "cache_dir", "stages"):
                    st.pop(key, None)
        if self.head_from:
            out["head_from"] = self.head_from
        if out.get("cv") is None:
            out.pop("cv", None)
        order = ["name", "description", "seed", "output_dir", "cache_dir", "task", "data", "backbone", "head", "optim",
                 "trainer", "train_subset", "cv", "head_from", "stages"]
        return {k: out[k] for k in order if k in out}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- YAML with line numbers ------------------------------------------------------------------


def _line_map(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number (best effort)."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    if root is not None:
        walk(root, ())
    return lines


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # an unhashable key: PyYAML reports it itself
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text (safe loader; a key given twice in one mapping is a :class:`ConfigError`)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"'{where}' line {dup.line}: key '{dup.key}' is given twice in the same section (first on "
                          f"line {dup.first}); YAML would silently keep only the last one: remove or rename one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error in '{where}'{at}: {problem}; fix the indentation or quoting there") from None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Read a task file; return the mapping and its key-path -> line map."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"task file '{p}' does not exist; give the path to a .yaml file (e.g. tasks/phangs_clusters.yaml)")
    if p.is_dir():
        raise ConfigError(f"task file '{p}' is a directory; give the path to a .yaml file inside it")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read task file '{p}': {' '.join(str(exc).split())}") from None
    data = parse_yaml(text, str(p))
    if data is None:
        raise ConfigError(f"task file '{p}' is empty; see tasks/phangs_clusters.yaml for a complete example")
    if not isinstance(data, dict):
        raise ConfigError(f"task file '{p}' must be a mapping of sections (name, task, data, ...), not a {type(data).__name__}")
    return data, _line_map(text)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, _where: tuple[str, ...] = ()) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree.

    Task files use it for data locations, e.g. ``root: ${ASTROTL_SHARED_DATA:-../shared/data}/gz1_dev``.
    As in the shell, ``${VAR:-default}`` takes the default when ``VAR`` is unset *or empty*. An unset
    or empty variable without a default is an error naming it: an empty value would silently turn
    ``output_dir: ${SCRATCH}/runs`` into ``/runs``. An explicitly empty default (``${VAR:-}``) may not
    produce a path that starts at ``/`` or has an empty folder name (``a//b``) either.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, (*_where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*_where, str(i))) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        import os

        at = f"{'.'.join(_where)}: " if _where else ""
        empty_at: list[tuple[int, int, str]] = []

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            current = os.environ.get(var)
            if current:
                return current
            if default is not None:
                if default == "":
                    empty_at.append((m.start(), m.end(), var))
                return default
            if current == "":
                raise ConfigError(f"{at}environment variable {var} is set but empty (used as ${{{var}}} in "
                                  f"'{value}'); set it to a value or write ${{{var}:-default}}")
            raise ConfigError(f"{at}environment variable {var} is not set (used as ${{{var}}}); set it or write "
                              f"${{{var}:-default}}")

        out = _ENV.sub(sub, value)
        for start, end, var in empty_at:
            before, after = value[:start], value[end:]
            if (before == "" and after.startswith("/")) or (before.endswith("/") and after.startswith("/")):
                raise ConfigError(f"{at}${{{var}:-}} expands to nothing, which turns '{value}' into '{out}' (a path "
                                  f"{'starting at the root /' if before == '' else 'with an empty folder name'}); "
                                  f"set {var} or give a non-empty default")
        return out
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a copy of ``data``."""
    out = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' is not of the form key.path=value (e.g. --set trainer.max_epochs=3)")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set '{item}': empty key in '{key}'; use dots between keys, e.g. data.n_train=500")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a number was meant
            try:
                value = float(value) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value) else value
            except ValueError:
                pass
        node = out
        for k in parts[:-1]:
            if k not in node or node[k] is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"--set '{item}': '{k}' is a value, not a section; it cannot hold '{parts[-1]}'")
            node = node[k]
        node[parts[-1]] = value
    return out


# -- validation -----------------------------------------------------------------------------


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (the parent of an offending key) inside ``model``."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        # an optional section (``compare: CompareConfig | None``) is its model
        models = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = models[0] if models else None
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _format_errors(exc: ValidationError, model: type[BaseModel], prefix: tuple[str, ...],
                   lines: dict[tuple[str, ...], int], where: str) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    full = (*prefix, *loc)
    dotted = ".".join(full)
    line = lines.get(full) or (lines.get(full[:-1]) if len(full) > 1 else None)
    at = f"{where} line {line}" if line else where
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, tuple(err["loc"][:-1]))
        hint = did_you_mean(loc[-1], valid)
        choices = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return ConfigError(f"{at}: unknown key '{dotted}'{hint}{choices}{more}")
    if err["type"] == "missing":
        return ConfigError(f"{at}: missing required key '{dotted}'; add it to the task file{more}")
    value = err.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(f"{at}: bad value {shown} for '{dotted}': {err['msg']}{more}")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, recursively for mappings.

    A component section (``task``, ``data``, ``backbone``, ``head``) whose ``name`` differs from the
    base's is replaced, not merged: another component's options would not validate.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            continue
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if key in SECTIONS and "name" in value and value["name"] != old.get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


STAGE_WEIGHTS = "stage:"


def _resolve_stages(data: dict[str, Any], run: RunConfig, registries: Registries, where: str,
                    lines: dict[tuple[str, ...], int], source) -> list[ResolvedConfig]:
    """Each stage merged over the top level and validated, before anything runs."""
    top = {k: v for k, v in data.items() if k != "stages"}
    seen: list[str] = []
    out: list[ResolvedConfig] = []
    if not run.stages:
        raise ConfigError(f"{where}: 'stages' is empty; list at least one stage or remove the key")
    for i, stage in enumerate(run.stages):
        at = f"{where} line {lines.get(('stages', str(i), 'name'))}" if lines.get(("stages", str(i), "name")) else where
        if stage.name in seen:
            raise ConfigError(f"{at}: stage name '{stage.name}' is used twice; give every stage its own name")
        partial = {k: v for k, v in stage.model_dump(exclude={"name", "head_from"}).items() if v is not None}
        merged = deep_merge(top, partial)
        merged["name"] = stage.name
        weights = str((merged.get("backbone") or {}).get("weights", ""))
        for ref, what in ((weights[len(STAGE_WEIGHTS):] if weights.startswith(STAGE_WEIGHTS) else None, "backbone.weights"),
                          (stage.head_from, "head_from")):
            if ref is not None and ref not in seen:
                hint = did_you_mean(ref, seen)
                earlier = f"earlier stages: {', '.join(seen)}" if seen else "it is the first stage"
                raise ConfigError(f"{at}: stage '{stage.name}' {what} names stage '{ref}'{hint}, which does not run "
                                  f"before it ({earlier}); name an earlier stage")
        prefix = ("stages", str(i))
        sub_lines = {k[len(prefix):]: v for k, v in lines.items() if k[:len(prefix)] == prefix}
        sub_lines = {**{k: v for k, v in lines.items() if k[:1] != ("stages",)}, **sub_lines}
        try:
            resolved = resolve(merged, registries, source=source, lines=sub_lines, _where=f"{where} (stage '{stage.name}')")
        except ConfigError:
            raise
        resolved.head_from = stage.head_from
        out.append(resolved)
        seen.append(stage.name)
    return out


def resolve(data: dict[str, Any], registries: Registries, *, source: str | Path | None = None,
            lines: dict[tuple[str, ...], int] | None = None, _where: str | None = None) -> ResolvedConfig:
    """Validate a raw config mapping against the top-level model and each component's ``Config``.

    With ``stages`` every stage is merged over the top level and validated too; ``stages`` of
    the result holds them in order.
    """
    lines = lines or {}
    where = _where or (str(source) if source else "config")
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, RunConfig, (), lines, where) from None
    if run.cv is not None and run.stages is not None:
        raise ConfigError(f"{where}: 'cv' and 'stages' cannot be combined; cross-validate a single-stage task file")
    components: dict[str, tuple[type, ComponentConfig]] = {}
    kinds = {"task": "tasks", "data": "datasets", "backbone": "backbones", "head": "heads"}
    for section in SECTIONS:
        raw = dict(getattr(run, section))
        name = raw.pop("name", None)
        if name is None and section == "task":
            raise ConfigError(f"{where}: section 'task' needs a 'name'; `astrotl list tasks` shows the choices")
        if name is None:
            raise ConfigError(f"{where}: section '{section}' needs a 'name'; `astrotl list {kinds[section]}` shows the choices")
        try:
            cls = registries.of(kinds[section]).get(str(name))
        except ConfigError as exc:
            line = lines.get((section, "name"))
            at = f"{where} line {line}" if line else where
            raise type(exc)(f"{at}: {exc}") from None
        try:
            cfg = cls.Config.model_validate(raw)
        except ValidationError as exc:
            raise _format_errors(exc, cls.Config, (section,), lines, where) from None
        components[section] = (cls, cfg)
    resolved = ResolvedConfig(run=run, components=components, source=Path(source) if source else None)
    if run.stages is not None:
        resolved.stages = _resolve_stages(data, run, registries, where, lines, source)
    return resolved


def load_config(path: str | Path, registries: Registries, overrides: list[str] | None = None) -> ResolvedConfig:
    """Read, override and validate a task file."""
    data, lines = load_yaml(path)
    data = expand_env(apply_overrides(data, overrides or []))
    return resolve(data, registries, source=path, lines=lines)
