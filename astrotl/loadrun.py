"""Rebuild a finished run's model: the one place that turns a run directory back into a model.

    >>> loaded = load_run("runs/phangs_clusters", registries)        # doctest: +SKIP
    >>> model, task = loaded.model_for(dataset.info())                # bands / classes checked

``astrotl predict`` uses it, and so do explanations, comparisons and ensembles. A multi-stage run
resolves to its last stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .config import ResolvedConfig, apply_overrides, expand_env, load_yaml, resolve
from .errors import DataError, RunDirError
from .interfaces import DatasetInfo, Task
from .rundir import RunDirectory


def final_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` itself, or the last stage's directory of a multi-stage run."""
    from .stages import stage_dirs

    stages = stage_dirs(run_dir)
    return stages[-1] if stages else Path(run_dir)


def read_model_metadata(model_file: Path) -> dict[str, Any]:
    """The metadata astrotl stored in a ``model.safetensors`` (JSON values decoded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(model_file), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"'{model_file}' is not a readable safetensors file ({' '.join(str(exc).split())[:80]}); "
                          f"it is truncated or was not written by astrotl -- rerun the run with --overwrite") from None
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


@dataclass
class LoadedRun:
    """A finished run: its directory, resolved config (with any overrides) and model metadata."""

    path: Path
    config: ResolvedConfig
    meta: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    def check_info(self, info: DatasetInfo) -> DatasetInfo:
        """``info`` checked against what the model was trained on (bands, classes, targets); returned
        completed with the model's classes/targets when the data set has none (unlabelled data)."""
        meta = self.meta
        run_bands = tuple(meta.get("bands") or ())
        if run_bands and tuple(info.bands) != run_bands:
            raise DataError(f"band mismatch: the model of '{self.path}' was trained on {list(run_bands)}, the data has "
                            f"{list(info.bands)}; give the images in the same bands and order")
        for key, what in (("classes", "predicts classes"), ("targets", "predicts targets")):
            run_vals = tuple(str(c) for c in meta.get(key) or ())
            have = getattr(info, key)
            if run_vals and have and tuple(str(c) for c in have) != run_vals:
                raise DataError(f"{key[:-2] if key == 'classes' else 'target'} mismatch: the model {what} "
                                f"{list(run_vals)}, the data set declares {list(have)}; use data with the same {key}")
            if run_vals and not have:
                info = replace(info, **{key: run_vals})
        return info

    def model_for(self, info: DatasetInfo) -> tuple[nn.Module, Task]:
        """The trained model (eval mode, CPU) and its task, for data described by ``info``."""
        from safetensors.torch import load_file

        info = self.check_info(info)
        cfg = self.config
        task_cls, task_cfg = cfg.component("task")
        task = task_cls(task_cfg, info)
        bb_cls, bb_cfg = cfg.component("backbone")
        if "weights" in type(bb_cfg).model_fields:
            update: dict = {"weights": "none"}  # the trained weights come from model.safetensors
            if "stem_downsample" in type(bb_cfg).model_fields and self.meta.get("stem_downsample") is not None:
                update["stem_downsample"] = int(self.meta["stem_downsample"])  # incl. one inherited from run: weights
            bb_cfg = bb_cfg.model_copy(update=update)
        backbone = bb_cls(bb_cfg, in_chans=len(info.bands), bands=info.bands)
        head_cls, head_cfg = cfg.component("head")
        head = head_cls(head_cfg, in_features=backbone.num_features, out_features=task.output_dim())
        model = task.build_model(backbone, head)
        try:
            state = load_file(str(self.model_file))
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise RunDirError(f"cannot read '{self.model_file}' ({type(exc).__name__}); it is truncated or corrupt -- "
                              f"rerun the run with --overwrite") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RunDirError(f"model.safetensors of '{self.path}' does not fit the rebuilt model (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}); was the run made with another astrotl "
                              f"version?")
        return model.eval(), task


def load_run(run_dir: str | Path, registries, *, overrides: list[str] | None = None,
             data_file: str | Path | None = None) -> LoadedRun:
    """Open a finished run (the last stage of a multi-stage run) for applying its model to new data.

    ``overrides`` (``data.catalog=...``) and ``data_file`` (a YAML file with a ``data:`` section)
    change the run's data section, e.g. to point it at new images.
    """
    root = RunDirectory(run_dir)
    st = root.status()
    if st is None:
        raise RunDirError(f"'{root.path}' is not an astrotl run directory (no run.json); give the directory of a "
                          f"finished run")
    if st.get("status") != "finished":
        raise RunDirError(f"run '{root.path}' is not finished (status: {st.get('status')}); finish it with "
                          f"`astrotl run ... --resume`")
    rd = RunDirectory(final_run_dir(root.path))
    model_file = rd.path / "model.safetensors"
    cfg_file = rd.path / "config.resolved.yaml"
    for f in (model_file, cfg_file):
        if not f.is_file():
            raise RunDirError(f"run '{rd.path}' has no {f.name}; it was written by an incomplete run, rerun it")
    try:
        raw = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"'{cfg_file}' is not valid YAML; the run directory is damaged, rerun the run") from None
    raw.pop("head_from", None)
    if data_file is not None:
        data_doc, _ = load_yaml(data_file)
        raw["data"] = data_doc["data"] if "data" in data_doc else data_doc
    raw = expand_env(apply_overrides(raw, overrides or []))
    cfg = resolve(raw, registries, source=cfg_file)
    return LoadedRun(rd.path, cfg, read_model_metadata(model_file))
