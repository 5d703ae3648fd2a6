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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class TrainerConfig(_Strict):
    """Lightning Trainer settings (CPU, GPU, DDP) and data loading."""

    max_epochs: int = Field(10, ge=1)
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps (-1: no limit)")
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
    num_threads: int | None = Field(None, ge=1, description="CPU threads per process for torch (None: torch's default); "
                                    "1 is fastest on a shared or oversubscribed CPU, e.g. DDP on CPU")


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

    def component(self, section: str) -> tuple[type, ComponentConfig]:
        return self.components[section]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with every default filled in: what ``config.resolved.yaml`` holds."""
        out = self.run.model_dump(mode="json")
        for section, (cls, cfg) in self.components.items():
            out[section] = {"name": cls.name, **cfg.model_dump(mode="json")}
        order = ["name", "description", "seed", "output_dir", "cache_dir", "task", "data", "backbone", "head", "optim", "trainer"]
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
        raise ConfigError(f"cannot read task file '{p}': {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error in '{p}'{where}: {problem}; fix the indentation or quoting there") from None
    if data is None:
        raise ConfigError(f"task file '{p}' is empty; see tasks/phangs_clusters.yaml for a complete example")
    if not isinstance(data, dict):
        raise ConfigError(f"task file '{p}' must be a mapping of sections (name, task, data, ...), not a {type(data).__name__}")
    return data, _line_map(text)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree.

    Task files use it for data locations, e.g. ``root: ${ASTROTL_SHARED_DATA:-../shared/data}/gz1_dev``.
    An unset variable without a default is an error naming it.
    """
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            import os

            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {var} is not set (used as ${{{var}}}); set it or write ${{{var}:-default}}")
        return _ENV.sub(sub, value)
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
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
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


def resolve(data: dict[str, Any], registries: Registries, *, source: str | Path | None = None,
            lines: dict[tuple[str, ...], int] | None = None) -> ResolvedConfig:
    """Validate a raw config mapping against the top-level model and each component's ``Config``."""
    lines = lines or {}
    where = str(source) if source else "config"
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, RunConfig, (), lines, where) from None
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
    return ResolvedConfig(run=run, components=components, source=Path(source) if source else None)


def load_config(path: str | Path, registries: Registries, overrides: list[str] | None = None) -> ResolvedConfig:
    """Read, override and validate a task file."""
    data, lines = load_yaml(path)
    data = expand_env(apply_overrides(data, overrides or []))
    return resolve(data, registries, source=path, lines=lines)
