"""``astrotl weights``: what pretrained weights are available locally, where they came from, and
moving them between machines.

    astrotl weights list [--runs DIR]          weights dir, torch hub and Hugging Face caches, run exports
    astrotl weights info NAME                  path, sha256, metadata of NAME (a file, run:<dir>,
                                               resnet18, resnet50:IMAGENET1K_V2, timm:<model>, zoobot:<name>)
    astrotl weights import FILE [--for NAME]   copy a file carried over from another machine into the
                                               weights dir (checked to load safely), with a metadata sidecar
    astrotl weights export RUN [--name NAME]   put a run's backbone into the weights dir under a name

Offline and absent, ``info`` fails with the same one-line message a run would give (exit code 2).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..weights import (
    RUN_BACKBONE_FILE,
    WEIGHT_SUFFIXES,
    WeightsRequest,
    describe,
    file_record,
    hf_cache_dir,
    load_state_dict_file,
    locate,
    read_metadata,
    resolve_named_file,
    resolve_run_dir,
    sidecar_path,
    strip_prefixes,
    timm_request,
    torch_hub_dir,
    torchvision_request,
    verify_sha256,
    weights_dir,
    zoobot_request,
)

COMMAND = "weights"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(COMMAND, help="list, inspect, import and export pretrained weights (offline-first)")
    sub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="weights available locally (weights dir, torch hub and HF caches, runs)")
    ls.add_argument("--runs", default="runs", help="also list backbones exported by runs under this directory (default: runs)")
    info = sub.add_parser("info", help="where NAME is, its sha256 and metadata")
    info.add_argument("name", help="a file, run:<dir>, a name in the weights dir, resnet18[:TAG], timm:<model>, zoobot:<name>")
    imp = sub.add_parser("import", help="copy a weights file into the weights dir with a metadata sidecar")
    imp.add_argument("file", help=".safetensors / .pt / .pth / .bin / .ckpt file")
    imp.add_argument("--for", dest="target", default=None, metavar="NAME",
                     help="store it as the weights of NAME (resnet18[:TAG], timm:<model>, zoobot:<name>) so that "
                          "weights: imagenet / zoobot find it")
    imp.add_argument("--name", default=None, help="file name in the weights dir (default: the file's name)")
    imp.add_argument("--source", default=None, help="where the file came from (URL, DOI, paper); recorded in the sidecar")
    imp.add_argument("--licence", default=None, help="licence of the weights; recorded in the sidecar")
    imp.add_argument("--bands", default=None, help="comma-separated bands the weights were trained on (e.g. g,r,i)")
    imp.add_argument("--config", default=None, help="a Hugging Face config.json that goes with the file (architecture)")
    imp.add_argument("--force", action="store_true", help="replace an existing file of the same name")
    exp = sub.add_parser("export", help="put a finished run's backbone into the weights dir")
    exp.add_argument("run", help="run directory (runs/<name>) or run:<dir>")
    exp.add_argument("--name", default=None, help="name in the weights dir (default: <run name>-<backbone>)")
    exp.add_argument("--force", action="store_true", help="replace an existing file of the same name")


def request_for(name: str) -> WeightsRequest | None:
    """A known named source: ``resnet18[:TAG]``, ``timm:<model>``, ``zoobot:<name>``, ``hf-hub:<repo>``."""
    if name.startswith("zoobot:"):
        return zoobot_request(name.split(":", 1)[1])
    if name.startswith("timm:"):
        return timm_request(name.split(":", 1)[1])
    if name.startswith("hf-hub:"):
        from ..weights import hf_flat_name

        repo = name.split(":", 1)[1]
        return WeightsRequest(what=f"weights from Hugging Face {repo}", filename=hf_flat_name(repo), source="hf-hub", hf_repo=repo)
    arch, _, tag = name.partition(":")
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models):
        return torchvision_request(arch, tag or "DEFAULT")
    return None


def _entries(runs: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    wd = weights_dir()
    for d, kind in ((wd, "weights-dir"), (torch_hub_dir(), "torch-hub")):
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix in WEIGHT_SUFFIXES:
                    meta = read_metadata(f) if sidecar_path(f).is_file() else {}
                    rows.append({"name": f.name, "where": kind, "path": f, "sha256": meta.get("sha256"),
                                 "source": meta.get("source") or meta.get("origin"), "bytes": f.stat().st_size})
    hf = hf_cache_dir()
    if hf.is_dir():
        for repo in sorted(hf.glob("models--*")):
            files = [p for p in repo.glob("snapshots/*/*") if p.suffix in WEIGHT_SUFFIXES]
            if files:
                f = files[0]
                org_name = repo.name[len("models--"):].replace("--", "/", 1)
                label = f"zoobot:{org_name.split('zoobot-encoder-', 1)[1]}" if "/zoobot-encoder-" in org_name else f"hf-hub:{org_name}"
                rows.append({"name": label, "where": "hf-cache", "path": f, "sha256": None,
                             "source": f"https://huggingface.co/{org_name}", "bytes": f.stat().st_size})
    rd = Path(runs)
    if rd.is_dir():
        for f in sorted(rd.glob(f"*/{RUN_BACKBONE_FILE}")):
            meta = read_metadata(f)
            rows.append({"name": f"run:{f.parent}", "where": "run", "path": f, "sha256": None,
                         "source": f"{meta.get('backbone', '?')} trained by task {meta.get('task', '?')}",
                         "bytes": f.stat().st_size})
    return rows


def cmd_list(args, out) -> int:
    rows = _entries(args.runs)
    out.write(f"weights dir: {weights_dir()}  (ASTROTL_WEIGHTS_DIR)\n")
    out.write(f"torch hub:   {torch_hub_dir()}\nHF cache:    {hf_cache_dir()}\n")
    if not rows:
        out.write("no weights found locally; `astrotl weights import FILE` adds a file carried over from another machine\n")
        return 0
    for r in rows:
        sha = (r["sha256"] or "")[:12] or "-"
        out.write(f"{r['name']:44s} {r['where']:11s} {r['bytes'] / 1e6:8.1f} MB  sha256 {sha:12s}  {r['source'] or ''}\n")
    return 0


def _resolve_for_info(name: str) -> tuple[Path, str, WeightsRequest | None]:
    if name.startswith("run:"):
        return resolve_run_dir(name), "run", None
    p = resolve_named_file(name)
    if p is not None:
        return p, "file", None
    req = request_for(name)
    if req is None:
        raise WeightsError(f"'{name}' is not a file, run:<dir>, a name in the weights dir ({weights_dir()}), nor a known "
                           f"source (resnet18[:TAG], timm:<model>, zoobot:<name>, hf-hub:<repo>); `astrotl weights list` "
                           f"shows what is available")
    path = locate(req)
    if path is None:
        raise WeightsError(req.missing_message())
    return path, req.source, req


def cmd_info(args, out) -> int:
    path, source, req = _resolve_for_info(args.name)
    info = describe(path, source=source)
    if req is not None:
        verify_sha256(path, info, req)
    state = strip_prefixes(load_state_dict_file(path))
    convs = [(k, tuple(v.shape)) for k, v in state.items() if v.ndim == 4]
    out.write(f"name:     {args.name}\npath:     {info['path']}\nsource:   {source}\n")
    out.write(f"sha256:   {info['sha256']}\nbytes:    {info['bytes']}\ntensors:  {len(state)} "
              f"({sum(v.numel() for v in state.values()) / 1e6:.2f} M values)\n")
    if convs:
        out.write(f"first conv: {convs[0][0]} {convs[0][1]} -> {convs[0][1][1]} input band(s)\n")
    meta = {k: v for k, v in (info.get("metadata") or {}).items()}
    if req is not None:
        meta = {**req.meta, **meta}
    for key in ("backbone", "bands", "normalisation", "licence", "origin", "source", "task", "run", "imported_from"):
        if meta.get(key) is not None:
            out.write(f"{key + ':':9s} {json.dumps(meta[key]) if not isinstance(meta[key], str) else meta[key]}\n")
    use = args.name if args.name.startswith("run:") else info["path"]
    out.write(f"use as:   weights: {use}\n")
    return 0


def check_file_name(name: str, option: str = "--name") -> str:
    """``name`` must be a plain file name inside the weights dir: no folders, no ``..``, not hidden, not absolute."""
    import os

    seps = {"/", "\\", os.sep, os.altsep or "/"}
    bad = (not name or name.strip() != name or any(s in name for s in seps) or name.startswith(".")
           or "\0" in name or Path(name).is_absolute())
    if bad:
        raise WeightsError(f"{option} '{name}' is not a plain file name: it must not be empty, hold '/' or '\\', start "
                           f"with '.' or be absolute, because the file goes into the weights dir {weights_dir()} and "
                           f"nowhere else; give a name such as gz1-resnet18")
    return name


def _write_sidecar(dest: Path, meta: dict[str, Any]) -> None:
    from ..io import write_json

    write_json(sidecar_path(dest), meta)


def _place(src: Path, dest: Path, meta: dict[str, Any]) -> None:
    """Copy ``src`` to ``dest`` and write its sidecar, atomically each; if the sidecar cannot be written
    the new file is removed again (a weights file without its sidecar would lose its provenance)."""
    from ..io import atomic_path

    existed = dest.exists()
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    try:
        _write_sidecar(dest, meta)
    except BaseException:
        if not existed:
            dest.unlink(missing_ok=True)
        raise


def cmd_import(args, out) -> int:
    src = Path(args.file).expanduser()
    if args.name is not None:
        check_file_name(args.name)
    state = load_state_dict_file(src)  # refuses unsafe pickles and non-weights before anything is copied
    req = request_for(args.target) if args.target else None
    if args.target and req is None:
        raise WeightsError(f"--for '{args.target}' is not a known source; use resnet18[:TAG], timm:<model>, zoobot:<name> "
                           f"or hf-hub:<org/repo>, or leave --for out and use the file by name")
    name = args.name or (req.filename if req else src.name)
    check_file_name(name, "--name" if args.name else "the file name")
    if Path(name).suffix not in WEIGHT_SUFFIXES:
        name += src.suffix if src.suffix in WEIGHT_SUFFIXES else ".safetensors"
    dest = weights_dir() / name
    rec = file_record(src)
    if req is not None:
        if Path(req.filename).suffix != src.suffix and not args.name:
            dest = dest.with_suffix(src.suffix)
        verify_sha256(src, rec, req)
    if dest.exists() and not args.force:
        raise WeightsError(f"'{dest}' already exists; pass --force to replace it or --name to import under another name")
    meta: dict[str, Any] = {"sha256": rec["sha256"], "bytes": rec["bytes"], "imported_from": str(src.resolve()),
                            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tensors": len(state)}
    if req is not None:
        meta.update({k: v for k, v in req.meta.items()})
        meta["for"] = args.target
    meta.update(read_metadata(src))  # a sidecar / safetensors metadata travelling with the file wins
    meta["sha256"], meta["bytes"] = rec["sha256"], rec["bytes"]
    if args.source:
        meta["source"] = args.source
    if args.licence:
        meta["licence"] = args.licence
    if args.bands:
        meta["bands"] = [b.strip() for b in args.bands.split(",") if b.strip()]
    if args.config:
        try:
            meta["hf_config"] = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"--config '{args.config}' is not a readable JSON file ({exc})") from None
    _place(src, dest, meta)
    hint = {"imagenet": "weights: imagenet", "zoobot": "weights: zoobot", "hf-hub": f"weights: {args.target}"}.get(
        req.source if req else "", f"weights: {dest.name}")
    out.write(f"imported: {dest} (sha256 {rec['sha256']})\nuse as:   {hint}\n")
    return 0


def cmd_export(args, out) -> int:
    if args.name is not None:
        check_file_name(args.name)
    f = resolve_run_dir(args.run if args.run.startswith("run:") else f"run:{args.run}")
    meta = read_metadata(f)
    run_name = f.parent.name
    name = args.name or f"{run_name}-{str(meta.get('backbone', 'backbone')).replace(':', '-')}"
    check_file_name(name, "--name" if args.name else "the run name")
    if Path(name).suffix != ".safetensors":
        name += ".safetensors"
    dest = weights_dir() / name
    if dest.exists() and not args.force:
        raise WeightsError(f"'{dest}' already exists; pass --force to replace it or --name to export under another name")
    rec = file_record(f)
    run_info: dict[str, Any] = {}
    run_json = f.parent / "run.json"
    if run_json.is_file():
        try:
            run_info = json.loads(run_json.read_text()).get("weights") or {}
        except ValueError:
            run_info = {}
    side = {"sha256": rec["sha256"], "bytes": rec["bytes"], "source": f"astrotl run {f.parent.resolve()}",
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_weights": run_info}
    _place(f, dest, side)
    out.write(f"exported: {dest} (sha256 {rec['sha256']}; backbone {meta.get('backbone', '?')}, "
              f"bands {','.join(meta.get('bands') or [])})\nuse as:   backbone: {{name: {meta.get('backbone', '?')}, "
              f"weights: {dest.stem}}}\n")
    return 0


def run(args, out) -> int:
    cmds = {"list": cmd_list, "info": cmd_info, "import": cmd_import, "export": cmd_export}
    if not getattr(args, "weights_command", None):
        raise WeightsError("astrotl weights needs a subcommand: list, info NAME, import FILE or export RUN")
    return cmds[args.weights_command](args, out)
