"""Multi-stage runs: pre-train on one data set, fine-tune the same backbone on another, and so on.

A task file's ``stages:`` is an ordered list of named stages, each a partial config merged over the
top level (:func:`astrotl.config.deep_merge`). Stage ``k`` runs as an ordinary run directory
``<run>/stages/<name>/``; ``backbone: {weights: stage:<earlier>}`` starts its backbone from an earlier
stage's trained backbone and ``head_from: <earlier>`` its head from that stage's head -- both resolved
inside the run, never against the working directory. ``--resume`` skips finished stages and continues
the one that stopped. The run's own ``report.md`` and ``metrics.json`` put the stages side by side; its
model (for ``astrotl predict``) is the last stage's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from .config import STAGE_WEIGHTS, ResolvedConfig
from .errors import ConfigError, RunDirError
from .io import write_json, write_table, write_text
from .rundir import RunDirectory
from .signals import RunInterrupted

log = logging.getLogger(__name__)

STAGES_DIR = "stages"


def stage_dirs(run_dir: str | Path) -> list[Path]:
    """The stage directories of a multi-stage run, in the order its config lists them ([] otherwise)."""
    import yaml

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.resolved.yaml"
    if not cfg_file.is_file():
        return []
    cfg = yaml.safe_load(cfg_file.read_text()) or {}
    return [run_dir / STAGES_DIR / st["name"] for st in cfg.get("stages") or []]


def _with_stage_weights(cfg: ResolvedConfig, root: Path) -> ResolvedConfig:
    """``weights: stage:<name>`` -> ``run:<root>/stages/<name>`` (an absolute path inside the run)."""
    cls, bb = cfg.component("backbone")
    weights = str(getattr(bb, "weights", "") or "")
    if not weights.startswith(STAGE_WEIGHTS):
        return cfg
    target = (root / STAGES_DIR / weights[len(STAGE_WEIGHTS):]).resolve()
    components = dict(cfg.components)
    components["backbone"] = (cls, bb.model_copy(update={"weights": f"run:{target}"}))
    return dataclasses.replace(cfg, components=components)


def _head_loader(root: Path, stage: str):
    """A ``prepare`` hook that copies an earlier stage's trained head into the new model."""

    def prepare(asm) -> None:
        from safetensors.torch import load_file

        src = root / STAGES_DIR / stage / "model.safetensors"
        if not src.is_file():
            raise RunDirError(f"head_from: stage '{stage}' has no model.safetensors ({src}); it did not finish")
        prefix = next(name for name, mod in asm.model.named_modules() if mod is asm.head)
        prefix = f"{prefix}." if prefix else ""
        state = load_file(str(src))
        head_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = asm.head.state_dict()
        bad = [k for k in own if k not in head_state or head_state[k].shape != own[k].shape]
        if bad:
            raise ConfigError(f"head_from: stage '{stage}''s head does not fit this stage's head ({bad[0]}: "
                              f"{tuple(head_state[bad[0]].shape) if bad[0] in head_state else 'missing'} vs "
                              f"{tuple(own[bad[0]].shape)}); the outputs differ -- drop head_from")
        asm.head.load_state_dict(head_state)

    return prepare


def run_stages(config: ResolvedConfig, registries, *, overwrite: bool = False, resume: bool = False,
               callbacks=None):
    """Run every stage of ``config`` in order inside one run directory; return the run's RunResult."""
    from .engine import RunResult, _check_resume_config, _now, is_main_process, run_single

    t0 = time.time()
    r = config.run
    root = RunDirectory(Path(r.output_dir) / r.name)
    main = is_main_process()
    if main:
        if resume:
            st = root.status()
            if st is None:
                raise RunDirError(f"nothing to resume: '{root.path}' holds no astrotl run; run without --resume")
            _check_resume_config(root, config)
        else:
            root.check(overwrite=overwrite, resume=False)
            root.prepare(overwrite=overwrite, resume=False)
        write_text(root.path / "config.resolved.yaml", config.to_yaml())
        root.write_status(status="running", started=_now(), kind="stages",
                          stages=[s.run.name for s in config.stages], resumed=resume)
    results: dict[str, Any] = {}
    try:
        for stage in config.stages:
            name = stage.run.name
            sd = RunDirectory(root.path / STAGES_DIR / name)
            status = (sd.status() or {}).get("status")
            if resume and status == "finished":
                log.info("stage %s: finished before, skipped", name)
                results[name] = _stage_result(sd)
                continue
            st_resume = resume and sd.last_checkpoint.is_file()
            st_overwrite = not st_resume and sd.path.exists() and status is not None
            log.info("stage %s: %s", name, "resuming" if st_resume else "starting")
            cfg = _with_stage_weights(stage, root.path)
            prepare = _head_loader(root.path, stage.head_from) if stage.head_from else None
            res = run_single(cfg, registries, overwrite=st_overwrite, resume=st_resume, callbacks=callbacks,
                             rundir=sd, prepare=prepare)
            results[name] = res
            if main:
                root.write_status(current_stage=name)
    except RunInterrupted as exc:
        if main:
            root.write_status(status="interrupted", signal=exc.signame, ended=_now())
        raise
    except KeyboardInterrupt:
        if main:
            root.write_status(status="interrupted", ended=_now())
        raise
    except Exception as exc:
        if main:
            root.write_status(status="failed", ended=_now(), error=" ".join(str(exc).split()))
        raise
    if not main:
        return RunResult(root.path, {}, "")
    last = list(results.values())[-1]
    _write_stage_outputs(config, root, results)
    headline = f"final stage '{config.stages[-1].run.name}': {last.headline}" if last.headline else ""
    root.write_status(status="finished", ended=_now(), wall_time_s=round(time.time() - t0, 1), headline=headline)
    return RunResult(root.path, last.metrics, headline)


def _stage_result(sd: RunDirectory):
    import json

    from .engine import RunResult

    data = json.loads((sd.path / "metrics.json").read_text())
    return RunResult(sd.path, data.get("metrics", {}), data.get("headline", ""))


def _write_stage_outputs(config: ResolvedConfig, root: RunDirectory, results: dict[str, Any]) -> None:
    from astropy.table import Table

    names = list(results)
    keys = sorted({k for res in results.values() for k, v in res.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    table = Table({"metric": keys, **{n: [results[n].metrics.get(k, float("nan")) for k in keys] for n in names}},
                  meta={"description": "each stage's metrics side by side"})
    write_table(root.path / "stages.ecsv", table)
    write_json(root.path / "metrics.json", {"metrics": results[names[-1]].metrics,
                                            "headline": results[names[-1]].headline,
                                            "stages": {n: results[n].metrics for n in names}})
    lines = [f"# Run `{config.run.name}` ({len(names)} stages)", ""]
    if config.run.description:
        lines += [config.run.description.strip(), ""]
    lines += ["| stage | task | data | backbone weights | result |", "|---|---|---|---|---|"]
    for stage in config.stages:
        n = stage.run.name
        res = results[n]
        bb = stage.component("backbone")[1]
        lines.append(f"| [{n}](stages/{n}/report.md) | `{stage.component('task')[0].name}` | "
                     f"`{stage.component('data')[0].name}` | `{getattr(bb, 'weights', '')}` | {res.headline} |")
    common = [k for k in keys if k.startswith("test_") or k.startswith("best_")]
    if common:
        lines += ["", "## Metrics side by side", "", "| metric | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for k in common:
            vals = [results[n].metrics.get(k) for n in names]
            lines.append(f"| {k} | " + " | ".join(f"{v:.4g}" if isinstance(v, (int, float)) else "" for v in vals) + " |")
    lines += ["", "Each stage is an ordinary run directory under `stages/`; `astrotl predict` on this run uses the "
              "last stage's model.", ""]
    write_text(root.path / "report.md", "\n".join(lines))
