"""Apply finished runs' models to new data and write a catalogue with their predictions.

    astrotl predict runs/phangs_mosaic --set data.catalog=new_candidates.ecsv \\
        --set data.images.F555W=new_f555w.fits ... --out classified.ecsv

The run's ``config.resolved.yaml`` is the starting point: ``--set data.*`` overrides (or
``--data FILE.yaml`` holding a ``data:`` section) point it at the new images and catalogue. The
model is rebuilt by :func:`astrotl.loadrun.load_run` (bands, classes and targets checked against
the new data) and applied to every sample of the data set's ``predict`` split; the output is the
input catalogue left-joined with the task's prediction rows (one row per source for
classification, one per detection for a detector, sources without detections kept).

One-pass ensembles
------------------
Several run directories (``astrotl predict RUN1 RUN2 ... --out``) are applied in one pass: each
batch of stamps is cut and normalised once and goes through every member's model. The catalogue
gets each member's class (``class_<member>``) and the per-candidate mean, median, mode, standard
deviation and quality factor of :func:`astrotl.ensemble.combine_predictions` (Whitmore et al. 2021,
App. 10.1), plus ``p_<class>_mean``. Members trained on other bands, classes, targets or stamp sizes,
or reading another data section, are refused before any work, naming what differs.

Scale-out
---------
``devices=N`` (``--devices N``) splits the samples into N contiguous shards, predicted by N
processes at once (on CPU, or one CUDA device each); each writes its part, and the parts are merged
into one catalogue in input order. ``chunk=(i, n)`` (``--chunk i/n``) predicts only the i-th of n
contiguous chunks, for a SLURM job array; :func:`merge_chunks` (``astrotl predict --merge``) joins the
chunk catalogues. A shard or chunk that fails names the samples it held and leaves no catalogue.

Memory
------
The output is written in blocks of :data:`BLOCK_ROWS` samples as they are predicted
(:func:`astrotl.io.write_table_blocks`; FITS string columns get the widest block's width), and
``--merge`` streams the chunks one at a time, so neither holds the whole output catalogue: what
grows with the catalogue's length is only the input catalogue itself. ``index`` is each sample's
number in the data, also in a chunk, so merged chunks equal the catalogue of one whole run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table

from .engine import cache_dir_for, make_loader, predictions_table, rows_table
from .errors import AstrotlError, ConfigError, DataError
from .io import sha256_file, write_table_blocks
from .loadrun import LoadedRun, load_run

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".ecsv", ".fits", ".csv")

#: Catalogue meta keys that describe one chunk (dropped when chunks are merged).
_CHUNK_META = ("chunk", "chunk_samples", "n_samples")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device without CUDA is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def parse_chunk(chunk: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"3/10"`` -> ``(3, 10)``: the third of ten chunks (1-based, as ``sbatch --array=1-10``).

    Raises
    ------
    ConfigError
        Not of the form ``i/n`` with ``1 <= i <= n``.
    """
    if chunk is None:
        return None
    if isinstance(chunk, tuple):
        i, n = chunk
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(chunk))
        if not m:
            raise ConfigError(f"--chunk {chunk!r}: give i/n, the i-th of n chunks counted from 1, e.g. --chunk 3/10 "
                              f"(with SLURM: --chunk $SLURM_ARRAY_TASK_ID/10 and sbatch --array=1-10)")
        i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"--chunk {i}/{n}: i must be between 1 and n (chunks are counted from 1), e.g. --chunk 1/{max(n, 1)}")
    return int(i), int(n)


def chunk_bounds(i: int, n: int, total: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of chunk ``i`` of ``n`` (1-based) of ``total`` samples: contiguous, sizes differ by <= 1."""
    return total * (i - 1) // n, total * i // n


def _rows_text(start: int, stop: int, total: int) -> str:
    return f"samples {start}-{stop - 1} of {total}" if stop > start else f"no samples (of {total})"


# -- members --------------------------------------------------------------------------------------


def check_members(members: Sequence[LoadedRun]) -> None:
    """Refuse ensemble members that cannot share one pass over the data, naming what differs.

    Compared with the first member: the task kind (detectors cannot be combined), the bands, classes,
    targets and stamp size the models were trained on, and the data section each would read.

    Raises
    ------
    DataError
        One line naming the two runs and what differs.
    """
    if len(members) < 2:
        return
    first = members[0]
    for m in members:
        if m.meta.get("task_kind") == "detection":
            raise DataError(f"'{m.path}' is a detector: one-pass ensembles combine one class per candidate; predict "
                            f"detector runs one at a time")
    checks = (("task_kind", "task kind"), ("bands", "bands"), ("classes", "classes"), ("targets", "targets"),
              ("image_size", "stamp size"))
    for m in members[1:]:
        for key, what in checks:
            a, b = first.meta.get(key), m.meta.get(key)
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                raise DataError(f"ensemble members differ in {what}: '{first.path}' has {a}, '{m.path}' has {b}; "
                                f"combine only runs trained on the same bands, classes and stamp size")
        da, db = first.config.to_dict()["data"], m.config.to_dict()["data"]
        diff = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
        if diff:
            raise DataError(f"ensemble members read different data: data.{', data.'.join(diff)} differ between "
                            f"'{first.path}' and '{m.path}'; give every member the same data with one --data FILE "
                            f"(or the same --set data.*)")


def _member_names(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    from .ensemble import _unique_names

    return _unique_names([Path(d) for d in run_dirs])


# -- the pass over the data -----------------------------------------------------------------------


class _Chunk(torch.utils.data.Dataset):
    """Samples ``[start, stop)`` of a data set, re-indexed from 0; whole batches stay whole (``__getitems__``)."""

    def __init__(self, dataset, start: int, stop: int):
        self.dataset, self.start, self.stop = dataset, int(start), int(stop)
        self.collate_fn = getattr(type(dataset), "collate_fn", None) or vars(dataset).get("collate_fn")

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[self.start + int(i)])
        sample["index"] = int(i)
        return sample

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self[i] for i in indices]
        samples = getitems([self.start + int(i) for i in indices])
        for s, i in zip(samples, indices):
            s["index"] = int(i)
        return samples


class _Rows:
    """Prediction rows of one model, kept as per-batch numpy columns (compact) when every row has the same keys."""

    def __init__(self):
        self.columns: list[dict[str, np.ndarray]] = []
        self.loose: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        keys = list(rows[0])
        if not self.loose and all(len(r) == len(keys) and all(k in r for k in keys) for r in rows):
            cols = {k: np.asarray([r[k] for r in rows]) for k in keys}
            if all(v.dtype != object for v in cols.values()) and \
                    (not self.columns or list(self.columns[0]) == keys):
                self.columns.append(cols)
                return
        self.loose.extend(rows)

    def table(self) -> Table:
        if self.loose:  # rows with different keys (e.g. detections and empty images): astrotl's general table
            rows = [{k: v[j].item() if hasattr(v[j], "item") else v[j] for k, v in part.items()}
                    for part in self.columns for j in range(len(next(iter(part.values()))))] + self.loose
            return rows_table(rows)
        if not self.columns:
            return rows_table([])
        return Table({k: np.concatenate([part[k] for part in self.columns]) for k in self.columns[0]})


def _build_dataset(cfg, split: str):
    ds_cls, ds_cfg = cfg.component("data")
    dataset = ds_cls(ds_cfg, split=split, seed=cfg.run.seed, cache_dir=cache_dir_for(cfg))
    if len(dataset) == 0:
        raise DataError("the data to predict on has no samples; check the catalogue and the data section")
    return dataset


def _catalog(dataset, start: int, stop: int) -> Table:
    """Catalogue rows of samples ``[start, stop)`` (only those rows, when the data set can give them)."""
    import inspect

    if hasattr(dataset, "input_catalog"):
        return dataset.input_catalog()[start:stop]
    try:
        takes_samples = "samples" in inspect.signature(dataset.catalog).parameters
    except (TypeError, ValueError):
        takes_samples = False
    if takes_samples and (start, stop) != (0, len(dataset)):
        return dataset.catalog(samples=np.arange(start, stop))
    cat = dataset.catalog()
    return cat if (start, stop) == (0, len(cat)) else cat[start:stop]


#: Samples per block of the output catalogue: predict writes each block when it is done, so its memory does not
#: grow with the catalogue's length (:func:`astrotl.io.write_table_blocks`).
BLOCK_ROWS = 16384


def _predict_blocks(members: list[LoadedRun], names: list[str], *, split: str, batch_size: int | None,
                    dev: torch.device, chunk: tuple[int, int] | None, label: str = "chunk") -> Iterator[Table]:
    """Predict samples (all, or one chunk) with every member in one pass; yield the output catalogue in blocks
    of about :data:`BLOCK_ROWS` samples, in input order.

    In a chunk, any failure after the chunk's samples are known becomes one :class:`DataError` line
    ``"<label> i/n (samples a-b of N) failed: ..."``.
    """
    cfg = members[0].config
    if cfg.run.trainer.num_threads:
        torch.set_num_threads(cfg.run.trainer.num_threads)
    dataset = _build_dataset(cfg, split)
    total = len(dataset)
    start, stop = chunk_bounds(*chunk, total) if chunk else (0, total)
    if stop <= start:
        raise DataError(f"--chunk {chunk[0]}/{chunk[1]} holds no samples: the data have only {total}; use at most "
                        f"{total} chunks")
    blocks = _block_tables(members, names, dataset, start, stop, batch_size=batch_size, dev=dev, chunk=chunk)
    if not chunk:
        yield from blocks
        return
    where = f"{label} {chunk[0]}/{chunk[1]} ({_rows_text(start, stop, total)})"
    try:
        yield from blocks
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one line naming the samples of the chunk, whatever failed
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{where} failed: {text if isinstance(exc, AstrotlError) else f'{type(exc).__name__}: {text}'}; "
                        f"no catalogue written for it") from None


def _block_tables(members: list[LoadedRun], names: list[str], dataset, start: int, stop: int, *,
                  batch_size: int | None, dev: torch.device, chunk: tuple[int, int] | None) -> Iterator[Table]:
    """Samples ``[start, stop)`` through every member, one DataLoader pass; a catalogue table per block."""
    from .allocator import keep_large_allocations

    keep_large_allocations()  # forward passes reuse freed activation memory instead of faulting in fresh pages
    cfg = members[0].config
    info = dataset.info()
    models = []
    for m in members:
        model, task = m.model_for(info)
        models.append((model.to(dev), task))
    if len(members) > 1 and any(t.eval_transform() is not None for _, t in models):
        raise DataError("ensemble members' tasks transform each sample before the model; predict them one at a time")
    infos = [m.check_info(info) for m in members]
    meta = {"astrotl_run": str(members[0].path), "model_sha256": sha256_file(members[0].model_file),
            "bands": list(infos[0].bands), "classes": list(infos[0].classes or []),
            "targets": list(infos[0].targets or [])}
    if len(members) > 1:
        meta["astrotl_run"] = [str(m.path) for m in members]
        meta["model_sha256"] = [sha256_file(m.model_file) for m in members]
    if chunk:
        meta.update({"chunk": f"{chunk[0]}/{chunk[1]}", "chunk_samples": [start, stop], "n_samples": len(dataset)})
    first_task = models[0][1]
    part = _Chunk(dataset, start, stop)
    loader = make_loader(part, first_task.eval_transform(), cfg.run.trainer, task=first_task, batch_size=batch_size)
    collected = [_Rows() for _ in members]
    a = b = start  # the samples [a, b) are collected and not yet written
    for batch in loader:
        batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.inference_mode():
            for (model, task), rows in zip(models, collected):
                rows.add(task.predict_batch(model, batch))
        b += len(batch["index"])
        if b - a >= BLOCK_ROWS:
            yield _block_table(members, names, infos, meta, dataset, start, a, b, collected)
            collected = [_Rows() for _ in members]
            a = b
    if b > a or a == start:
        yield _block_table(members, names, infos, meta, dataset, start, a, b, collected)
    log.info("applied %d model(s) to %d samples%s", len(members), stop - start,
             f" (chunk {chunk[0]}/{chunk[1]})" if chunk else "")


def _block_table(members, names, infos, meta, dataset, start: int, a: int, b: int, collected: list[_Rows]) -> Table:
    """The output catalogue of samples ``[a, b)``: their catalogue rows with the members' predictions; ``index``
    is the sample's number in the data (``start`` is where the predicted samples begin)."""
    from .ensemble import class_codes, combine_predictions

    catalog = _catalog(dataset, a, b)
    tables = []
    for rows in collected:
        t = rows.table()
        if "index" in t.colnames:
            t["index"] = np.asarray(t["index"]) - (a - start)  # 0 .. b - a - 1: rows of this block's catalogue
        tables.append(t)
    if len(members) == 1:
        table = predictions_table(tables[0], catalog)
        table["index"] = np.asarray(table["index"]) + a
    else:
        per_member = []
        id_col = "id" if "id" in catalog.colnames else None
        ids = np.asarray(catalog[id_col]) if id_col else np.arange(a, b)
        for name, t in zip(names, tables):
            if len(t) != len(catalog) or not np.array_equal(np.asarray(t["index"]), np.arange(len(catalog))) \
                    or "pred_class" not in t.colnames:
                raise DataError(f"member '{name}' did not predict exactly one class (pred_class) per sample; only "
                                f"classifiers can be combined in one pass")
            keep = ["pred_class", *[c for c in t.colnames if c.startswith("p_")]]
            per_member.append(Table({"id": ids, **{c: t[c] for c in keep}}))
        numeric = class_codes(np.asarray(infos[0].classes or [], dtype=str))[1] is not None
        if not numeric and a == start:
            log.info("classes %s are not numbers: the ensemble gives the mode and quality factor, not mean/median/std",
                     list(infos[0].classes or []))
        combined = combine_predictions(per_member, names, numeric_stats=numeric)
        pos = np.searchsorted(np.asarray(combined["id"]), ids)  # combined is sorted by id; back to input order
        table = catalog.copy(copy_data=True)
        for col in combined.colnames:
            if col == "id":
                continue
            name = col if col not in table.colnames else f"ens_{col}"
            table[name] = combined[col][pos]
            if getattr(combined[col], "description", None):
                table[name].description = combined[col].description
        table.meta = dict(catalog.meta)
        table.meta["ensemble"] = {**combined.meta["ensemble"], "paths": [str(m.path) for m in members]}
        table.meta["references"] = combined.meta.get("references", [])
    table.meta.update(meta)
    return table


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise DataError(f"--out '{out}' is a directory; give a file name ending in .ecsv, .fits or .csv")
    if out.exists() and not overwrite:
        raise DataError(f"output '{out}' already exists; choose another --out or pass --overwrite")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"--out '{out}' must end in .ecsv, .fits or .csv")


def predict(run_dir: str | Path | Sequence[str | Path], registries, *, out: str | Path,
            overrides: list[str] | None = None, data_file: str | Path | None = None, overwrite: bool = False,
            batch_size: int | None = None, device: str = "auto", split: str = "predict", devices: int | None = None,
            chunk: str | tuple[int, int] | None = None) -> Path:
    """Apply one finished run's model, or several in one pass (an ensemble), to the ``split`` of (new) data.

    Parameters
    ----------
    run_dir : path or sequence of paths
        One finished run directory, or several (their models are combined per candidate).
    registries : astrotl.plugins.Registries
    out : path
        Output catalogue (``.ecsv``, ``.fits`` or ``.csv``), written atomically.
    overrides, data_file
        ``--set data.*=...`` and ``--data FILE`` applied to every run's config.
    overwrite : bool
        Replace an existing ``out``.
    batch_size : int, optional
        Samples per batch (default: the run's ``trainer.batch_size``).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    split : str
        Which split of the data section to predict (``predict``: all of the new data).
    devices : int, optional
        Shard the samples over this many processes (default: 1, or the run's ``trainer.devices`` when its
        ``trainer.strategy`` is a DDP strategy).
    chunk : str or (int, int), optional
        ``"i/n"``: predict only the i-th of n contiguous chunks (1-based), e.g. one SLURM array task.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    out = Path(out)
    run_dirs = [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir)
    if not run_dirs:
        raise ConfigError("give at least one finished run directory")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give a positive number of samples per batch (e.g. 256)")
    _check_out(out, overwrite)
    chunk = parse_chunk(chunk)
    dev = resolve_device(device)
    members = [load_run(d, registries, overrides=overrides, data_file=data_file) for d in run_dirs]
    check_members(members)
    names = _member_names(run_dirs) if len(members) > 1 else ["model"]
    n_proc = _n_processes(members[0], devices, dev)
    if chunk is not None and n_proc > 1:
        raise ConfigError("--chunk and --devices > 1 cannot be combined; run one chunk per job (each may use its own "
                          "--devices) or shard the whole catalogue with --devices")
    if n_proc > 1:
        return _predict_sharded(run_dirs, members, out, n_proc, registries=registries, overrides=overrides,
                                data_file=data_file, batch_size=batch_size, dev=dev, split=split)
    rows = write_table_blocks(out, _predict_blocks(members, names, split=split, batch_size=batch_size, dev=dev,
                                                   chunk=chunk))
    log.info("wrote %s (%d rows)", out, rows)
    return out


# -- shards (several processes) -------------------------------------------------------------------


def _n_processes(first: LoadedRun, devices: int | None, dev: torch.device) -> int:
    t = first.config.run.trainer
    what = f"--devices {devices}"
    if devices is None:
        devices = t.devices if isinstance(t.devices, int) and str(t.strategy).startswith("ddp") else 1
        what = f"the run's trainer.devices {devices} (strategy {t.strategy}; override with --devices)"
    if devices < 1:
        raise ConfigError(f"{what}: give a positive number of processes")
    if devices > 1 and dev.type == "cuda" and devices > torch.cuda.device_count():
        raise ConfigError(f"{what}: only {torch.cuda.device_count()} CUDA device(s) here; use at most "
                          f"{torch.cuda.device_count()}")
    if devices > 1 and dev.type == "cpu" and devices > (os.cpu_count() or 1):
        raise ConfigError(f"{what} CPU processes, but this machine has {os.cpu_count()} cores; use at "
                          f"most {os.cpu_count()}")
    return int(devices)


def _shard_main(job: dict[str, Any]) -> dict[str, Any]:
    """One shard in its own process: predict chunk ``job['chunk']`` and write it to ``job['part']``.

    Returns ``{"ok": True, "rows": N}`` or ``{"ok": False, "error": one line}`` (exceptions do not always
    survive pickling back to the parent).
    """
    try:
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        registries = _registries(job["plugins"])
        members = [load_run(d, registries, overrides=job["overrides"], data_file=job["data_file"])
                   for d in job["run_dirs"]]
        rows = write_table_blocks(job["part"], _predict_blocks(
            members, job["names"], split=job["split"], batch_size=job["batch_size"], dev=torch.device(job["device"]),
            chunk=job["chunk"], label="shard"))
        return {"ok": True, "rows": rows}
    except Exception as exc:  # reported by the parent as one line naming the shard's samples
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"ok": False, "error": text if isinstance(exc, AstrotlError) else f"{type(exc).__name__}: {text}"}


def _plugin_setup(registries) -> dict[str, list]:
    """How a shard process rebuilds ``registries``: the entry-point plugins left out (``--disable-plugin``) and
    the plugins registered in this process by module (e.g. by a program embedding astrotl), by module name."""
    import types

    from .plugins import entrypoint_names

    installed = set(entrypoint_names())
    pairs = list(registries.pm.list_name_plugin())
    active = {name for name, _ in pairs}
    extra = [(name, plugin.__name__) for name, plugin in pairs
             if name not in installed and name != "builtin" and isinstance(plugin, types.ModuleType)]
    return {"disable": [n for n in installed if n not in active], "extra": extra}


def _registries(setup: dict[str, list]):
    import importlib

    from .plugins import load_registries

    return load_registries(disable=setup["disable"],
                           extra_plugins=[(name, importlib.import_module(mod)) for name, mod in setup["extra"]])


def _predict_sharded(run_dirs, members: list[LoadedRun], out: Path, n: int, *, registries, overrides, data_file,
                     batch_size, dev: torch.device, split: str) -> Path:
    """Predict ``n`` contiguous shards in ``n`` processes, each writing its part; merge them into ``out``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    total = len(_build_dataset(members[0].config, split))  # the data are checked once, before any process starts
    if total < n:
        raise DataError(f"--devices {n}: the data have only {total} samples; use at most {total} processes")
    t = members[0].config.run.trainer
    threads = t.num_threads or max(1, (os.cpu_count() or 1) // n)
    names = _member_names(run_dirs) if len(members) > 1 else ["model"]
    out.parent.mkdir(parents=True, exist_ok=True)
    parts_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.shards.", dir=out.parent))
    jobs = []
    for i in range(1, n + 1):
        jobs.append({"run_dirs": [str(d) for d in run_dirs], "overrides": list(overrides or []),
                     "data_file": str(data_file) if data_file else None, "split": split, "batch_size": batch_size,
                     "device": f"cuda:{i - 1}" if dev.type == "cuda" else str(dev), "chunk": (i, n), "names": names,
                     "threads": threads, "plugins": _plugin_setup(registries),
                     "part": str(parts_dir / f"part_{i:04d}_of_{n:04d}.ecsv")})
    log.info("predicting %d samples in %d processes (%d torch threads each)", total, n, threads)
    failures: list[str] = []
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_shard_main, job) for job in jobs]
            for job, fut in zip(jobs, futures):
                i = job["chunk"][0]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    res = {"ok": False, "error": "its process died (killed, or out of memory)"}
                if not res["ok"]:
                    err = res["error"]
                    prefix = f"shard {i}/{n} "
                    failures.append(err if err.startswith(prefix) else
                                    f"{prefix}({_rows_text(*chunk_bounds(i, n, total), total)}) failed: {err}")
        if failures:
            more = f" (and {len(failures) - 1} more failed shard(s))" if len(failures) > 1 else ""
            first = failures[0].removesuffix("; no catalogue written for it")
            raise DataError(f"{first}{more}; no catalogue written")
        merge_chunks(sorted(parts_dir.glob("part_*.ecsv")), out, overwrite=True)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return out


# -- chunks ---------------------------------------------------------------------------------------


def merge_chunks(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Join the catalogues that ``astrotl predict --chunk i/n`` wrote into one, in input order.

    Every chunk ``1..n`` of one job must be there exactly once (same ``n``, same models); the
    merged catalogue equals what one ``astrotl predict`` without ``--chunk`` writes.

    Parameters
    ----------
    paths : sequence of path-like
        The chunk catalogues, in any order.
    out : path-like
        The merged catalogue (written atomically).
    overwrite : bool
        Replace an existing ``out``.

    Raises
    ------
    DataError
        A file is not a chunk catalogue, chunks are missing or repeated (naming the samples they
        hold), or the chunks come from different jobs.
    """
    out = Path(out)
    _check_out(out, overwrite)
    if not paths:
        raise DataError("no chunk catalogues given; pass the files that astrotl predict --chunk i/n wrote")
    files: dict[int, Path] = {}
    n = total = None
    first_meta: dict[str, Any] = {}
    ref: tuple[Any, Any] | None = None
    for p in paths:  # every chunk is read and checked before anything is written; one in memory at a time
        p = Path(p)
        t = _read_chunk(p)
        i, ni = parse_chunk(str(t.meta["chunk"]))
        key = (t.meta.get("model_sha256"), t.meta.get("n_samples"))
        if n is None:
            n, total, ref = ni, t.meta.get("n_samples"), key
        elif ni != n or key != ref:
            raise DataError(f"'{p}' is chunk {i}/{ni} of another job (other n, models or data) than the first file's "
                            f"chunks of {n}; merge the chunks of one job only")
        if i in files:
            raise DataError(f"chunk {i}/{n} is given twice (again in '{p}'); pass each chunk once")
        files[i] = p
        if i == 1:
            first_meta = dict(t.meta)
        del t
    missing = [i for i in range(1, n + 1) if i not in files]
    if missing:
        i = missing[0]
        rows = _rows_text(*chunk_bounds(i, n, int(total)), int(total)) if total is not None else "its samples"
        raise DataError(f"chunk {i}/{n} ({rows}) is missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                        f"rerun it (astrotl predict ... --chunk {i}/{n}) and merge again; no catalogue written")
    meta = {k: v for k, v in first_meta.items() if k not in _CHUNK_META}
    meta["merged_chunks"] = n

    def chunks() -> Iterator[Table]:
        for i in range(1, n + 1):
            t = _read_chunk(files[i])
            t.meta = meta
            yield t

    write_table_blocks(out, chunks())
    return out


def _read_chunk(p: Path) -> Table:
    """A chunk catalogue, its metadata keys lower-case (FITS headers upper-case short keys)."""
    if not p.is_file():
        raise DataError(f"chunk catalogue '{p}' does not exist; pass the files that astrotl predict --chunk wrote")
    try:
        t = Table.read(p, format="ascii.ecsv" if p.suffix == ".ecsv" else None)
    except Exception as exc:  # astropy raises many kinds for a damaged file
        raise DataError(f"cannot read chunk catalogue '{p}' ({type(exc).__name__}); rerun that chunk") from None
    t.meta = {k.lower(): v for k, v in t.meta.items()}
    if "chunk" not in t.meta:
        raise DataError(f"'{p}' is not a chunk catalogue (no 'chunk' in its metadata); pass only files written "
                        f"by astrotl predict --chunk i/n")
    return t
