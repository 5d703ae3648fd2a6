"""astrotl's own sub-commands ``run``, ``predict``, ``validate``, ``list`` and ``schema``.

Each is a small object with ``COMMAND``, ``add_parser`` and ``run`` -- the same contract as a
plugin's command module -- registered by astrotl's built-in plugin.
"""

from __future__ import annotations

import json
from types import SimpleNamespace


def _config_args(sp) -> None:
    sp.add_argument("file", help="task file (YAML), e.g. tasks/phangs_clusters.yaml")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a config value, e.g. --set trainer.max_epochs=3 (repeatable)")


# -- run ------------------------------------------------------------------------------------------


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="train, validate and evaluate as a task file says")
    _config_args(r)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run of the same name")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def _run(args, out) -> int:
    from ..config import load_config
    from ..engine import is_main_process, run

    cfg = load_config(args.file, args.registries, args.overrides)
    result = run(cfg, args.registries, overwrite=args.overwrite, resume=args.resume)
    if is_main_process():
        out.write(f"finished: {result.path}{'; ' + result.headline if result.headline else ''}; "
                  f"see {result.path / 'report.md'}\n")
    return 0


# -- predict --------------------------------------------------------------------------------------


def _predict_parser(sub) -> None:
    pr = sub.add_parser("predict", help="apply finished runs' models to new data; write catalogue + predictions",
                        description="Apply a finished run's model to new data, or several runs' models in one pass "
                                    "(an ensemble: each member's class and the mean, median, mode, std and quality "
                                    "factor per candidate). --devices N shards the data over N processes; --chunk i/n "
                                    "predicts one of n chunks (a SLURM array task) and --merge joins the chunks.")
    pr.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                    help="finished run directories, e.g. runs/phangs_clusters (several: a one-pass ensemble); "
                         "with --merge: the chunk catalogues to merge")
    pr.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .csv)")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override the runs' config, e.g. --set data.catalog=new.ecsv (repeatable)")
    pr.add_argument("--data", dest="data_file", help="YAML file with a data: section replacing the runs'")
    pr.add_argument("--batch-size", type=int, default=None)
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    pr.add_argument("--devices", type=int, default=None, metavar="N",
                    help="shard the data over N processes (CPU processes, or one CUDA device each) and merge their "
                         "parts (default: 1, or the run's trainer.devices under a ddp strategy)")
    pr.add_argument("--chunk", default=None, metavar="I/N",
                    help="predict only the I-th of N contiguous chunks (counted from 1), e.g. one SLURM array task: "
                         "--chunk $SLURM_ARRAY_TASK_ID/10; join the outputs with --merge")
    pr.add_argument("--merge", action="store_true",
                    help="merge the chunk catalogues given as positional arguments into --out (input order)")
    pr.add_argument("--split", default="predict", choices=["predict", "test", "val", "train"],
                    help="which split of the data section to apply the model to (default: predict = all of new data)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _predict(args, out) -> int:
    from ..predict import merge_chunks, predict

    if args.merge:
        path = merge_chunks(args.run_dir, args.out, overwrite=args.overwrite)
        out.write(f"wrote {path}: {len(args.run_dir)} chunks merged\n")
        return 0
    path = predict(args.run_dir, args.registries, out=args.out, overrides=args.overrides, data_file=args.data_file,
                   overwrite=args.overwrite, batch_size=args.batch_size, device=args.device, split=args.split,
                   devices=args.devices, chunk=args.chunk)
    out.write(f"wrote {path}\n")
    return 0


# -- validate -------------------------------------------------------------------------------------


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a task file (names, keys, values) without running it")
    _config_args(v)
    v.add_argument("--print", action="store_true", dest="show", help="print the resolved configuration")


def _validate(args, out) -> int:
    from ..config import load_config

    cfg = load_config(args.file, args.registries, args.overrides)
    if args.show:
        out.write(cfg.to_yaml())
    else:
        comp = {s: cfg.component(s)[0].name for s in ("task", "data", "backbone", "head")}
        stages = f", stages {', '.join(s.run.name for s in cfg.stages)}" if cfg.stages else ""
        out.write(f"OK: {args.file}: run '{cfg.run.name}', task {comp['task']}, data {comp['data']}, "
                  f"backbone {comp['backbone']}, head {comp['head']}{stages}\n")
    return 0


# -- list -----------------------------------------------------------------------------------------


def _list_parser(sub) -> None:
    ls = sub.add_parser("list", help="list registered tasks, datasets, backbones, heads or plugins")
    ls.add_argument("kind", nargs="?", default="all", help="tasks, datasets, backbones, heads, plugins or all")


def _list(args, out) -> int:
    from ..plugins import KINDS

    regs = args.registries
    kind = args.kind
    if kind == "plugins":
        for name, mod, version in regs.plugins():
            out.write(f"{name:20s} {mod}  {version}\n")
        return 0
    kinds = list(KINDS) if kind == "all" else [regs.of(kind).kind]
    for k in kinds:
        reg = regs.of(k)
        out.write(f"{k}:\n")
        for name in reg:
            cls = reg.get(name)
            extra = ""
            if k == "backbones" and "weights" in cls.Config.model_fields:
                extra = f"  [weights: {getattr(cls, 'weight_options', 'none | imagenet | auto | <file>')}]"
            out.write(f"  {name:22s} {cls.summary()}  (plugin: {reg.plugin_of(name)}){extra}\n")
    return 0


# -- schema ---------------------------------------------------------------------------------------


def _schema_parser(sub) -> None:
    s = sub.add_parser("schema", help="print the JSON schema of a component's options (or of run/trainer/optim)")
    s.add_argument("name", help="a component name (see astrotl list), or run, trainer, optim")


def _schema(args, out) -> int:
    from ..config import OptimConfig, RunConfig, TrainerConfig

    top = {"run": RunConfig, "trainer": TrainerConfig, "optim": OptimConfig}
    if args.name in top:
        schema = top[args.name].model_json_schema()
    else:
        kind, cls = args.registries.find(args.name)
        schema = cls.Config.model_json_schema()
        schema["title"] = f"{kind[:-1]} '{cls.name}'"
        schema["description"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    out.write(json.dumps(schema, indent=2) + "\n")
    return 0


def _command(name: str, add_parser, run) -> SimpleNamespace:
    return SimpleNamespace(COMMAND=name, add_parser=add_parser, run=run, __name__=f"astrotl.cli.core.{name}")


COMMANDS = [
    _command("run", _run_parser, _run),
    _command("predict", _predict_parser, _predict),
    _command("validate", _validate_parser, _validate),
    _command("list", _list_parser, _list),
    _command("schema", _schema_parser, _schema),
]
