"""The on-disk cache of generated data: one key rule, one storage format, atomic writes.

Simulators and data sets render once and reload in seconds. Every cache entry is named by
:func:`cache_key` (a sha256 of a JSON rendering of everything that changes the data) and stored by
:func:`cached_arrays` as ``<key>.npz`` (numpy arrays) plus ``<key>.<table>.ecsv`` (astropy tables),
each written atomically. An entry that is missing, unreadable or does not match its key or the
expected shapes is regenerated with a logged warning.

The cache directory itself is ``cache_dir`` of the task file, else ``$ASTROTL_CACHE_DIR``, else
``$XDG_CACHE_HOME/astrotl``, else ``~/.cache/astrotl`` (:func:`astrotl.engine.cache_dir_for`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from .io import atomic_path

log = logging.getLogger(__name__)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (dataclasses and pydantic models as dicts, numpy values as Python)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic models
        return jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def cache_key(*parts: Any, length: int | None = 16) -> str:
    """Hex sha256 of a JSON rendering of ``parts`` (dataclasses, pydantic models, numpy values allowed).

    The same parts give the same key in every process and on every machine. ``length`` shortens it
    (``None``: all 64 hex digits).

    Examples
    --------
    >>> cache_key("phangs", 10, {"size": 32}) == cache_key("phangs", 10, {"size": 32})
    True
    >>> len(cache_key("x", length=None))
    64
    """
    text = json.dumps(jsonable(list(parts)), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest[:length] if length else digest


def _write_npz(path: Path, arrays: dict[str, np.ndarray], key: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __key__=np.array(key), **arrays)
            fh.flush()
            os.fsync(fh.fileno())


def cached_arrays(cache_dir: str | os.PathLike, key: str,
                  build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Table]]], *,
                  check: Callable[[dict[str, np.ndarray], dict[str, Table]], None] | None = None,
                  what: str = "cache entry") -> tuple[dict[str, np.ndarray], dict[str, Table]]:
    """Arrays and tables stored under ``key`` in ``cache_dir``, built by ``build()`` when absent.

    Parameters
    ----------
    cache_dir : path
        The cache folder (created if needed).
    key : str
        The entry's name, from :func:`cache_key`.
    build : callable
        Returns ``(arrays, tables)``: dicts of numpy arrays and astropy tables.
    check : callable, optional
        Raises ``ValueError`` when a loaded entry is inconsistent (e.g. a wrong shape); the entry is
        then rebuilt.
    what : str
        What the entry holds, for the log.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    npz_path = cache / f"{key}.npz"
    if npz_path.exists():
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                if str(z["__key__"]) != key:
                    raise ValueError("the entry does not match its key")
                arrays = {name: z[name] for name in z.files if name != "__key__"}
            names = [p.name[len(key) + 1:-len(".ecsv")] for p in cache.glob(f"{key}.*.ecsv")]
            tables = {name: Table.read(cache / f"{key}.{name}.ecsv", format="ascii.ecsv") for name in names}
            if check is not None:
                check(arrays, tables)
            log.debug("loaded %s from %s", what, npz_path)
            return arrays, tables
        except Exception as exc:  # noqa: BLE001 -- any unreadable entry is rebuilt
            log.warning("rebuilding the unreadable %s %s: %s", what, npz_path.name, exc)
    arrays, tables = build()
    for name, table in tables.items():  # tables first: the .npz marks a complete entry
        with atomic_path(cache / f"{key}.{name}.ecsv") as tmp:
            table.write(tmp, format="ascii.ecsv", overwrite=True)
    _write_npz(npz_path, arrays, key)
    return arrays, tables
