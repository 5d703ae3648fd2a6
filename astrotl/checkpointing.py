"""Lightning checkpoints written like every other output: whole or not at all.

:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin::

    trainer = L.Trainer(..., plugins=[AtomicCheckpointIO()])

* **save** -- ``torch.save`` into a hidden temporary file in the checkpoint's own folder
  (:func:`astrotl.io.atomic_path`), flushed and ``fsync``-ed, then ``os.replace``-d onto
  ``best.ckpt`` / ``last.ckpt``. On a full disk, a permission problem or an interrupt the old
  checkpoint stays as it was, the temporary file is removed, and the error is a one-line
  :class:`~astrotl.errors.OutputError` (Lightning's own writer stages the file in ``/tmp`` and
  *copies* it over the destination, which leaves a truncated checkpoint when the disk fills).
* **load** -- a truncated, overwritten or garbage checkpoint raises a one-line
  :class:`~astrotl.errors.RunDirError` telling the user to start again with ``--overwrite``; a
  pickle that would execute code is refused as such (see :mod:`astrotl.weights`).

:func:`load_model_state` reads the ``state_dict`` of a checkpoint with the same checks (for the
engine's "reload the best epoch" step).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import AstrotlError, RunDirError
from .io import atomic_path

__all__ = ["AtomicCheckpointIO", "load_model_state", "checkpoint_error"]


class _ErrorKeepingWriter:
    """A file wrapper that remembers what stopped a write -- an ``OSError`` (e.g. ENOSPC) or an interrupt
    (:class:`~astrotl.signals.RunInterrupted` raised by the SIGTERM handler in the middle of a write):
    torch's zip writer turns either into ``RuntimeError("... unexpected pos ...")``, which would make an
    interrupted run look like a failed one."""

    def __init__(self, fh):
        self._fh = fh
        self.error: BaseException | None = None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self._fh, name)


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save(checkpoint, path)``, atomically and durably (see the module docstring)."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as raw:
            fh = _ErrorKeepingWriter(raw)
            try:
                torch.save(checkpoint, fh)
                fh.flush()
            except RuntimeError:
                if fh.error is not None:
                    raise fh.error from None
                raise
            os.fsync(raw.fileno())


def checkpoint_error(path: str | os.PathLike, exc: BaseException) -> AstrotlError:
    """The one-line error for a checkpoint that cannot be loaded."""
    from .weights import classify_load_error, code_refusal_message

    p = Path(path)
    kind, detail = classify_load_error(exc, p)
    if kind == "code":
        return RunDirError(code_refusal_message(p, detail))
    if "cuda" in str(exc).lower() and "device" in str(exc).lower():
        return RunDirError(f"checkpoint '{p}' holds GPU tensors that cannot be placed on this machine ({detail}); "
                           f"resume on a machine with a GPU, or start again with --overwrite")
    return RunDirError(f"checkpoint '{p}' is damaged ({detail}): it is truncated or not a checkpoint; the run cannot "
                       f"continue from it: start again with --overwrite")


def _check_archive(p: Path) -> None:
    if not p.is_file():
        raise RunDirError(f"checkpoint '{p}' does not exist (the run stopped before writing it); start again with "
                          f"--overwrite")
    try:
        with zipfile.ZipFile(p) as z:  # torch.save's format: a truncated file has no central directory
            z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise checkpoint_error(p, exc) from None


def _numpy_data_globals() -> list[Any]:
    """numpy arrays, scalars and dtypes (e.g. a saved ``np.random.get_state()``): data, not code."""
    import numpy as np

    out: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["_reconstruct", "scalar"])
            out += [m._reconstruct, m.scalar]
            break
        except (ImportError, AttributeError):
            continue
    out += [type(np.dtype(t)) for t in ("b", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8",
                                        "c16", "U", "S")]
    return out


def _load(p: Path, map_location: Any, weights_only: bool | None) -> Any:
    from .weights import _safe_globals

    _check_archive(p)
    try:
        # Lightning's hyper-parameter dict and numpy data (random states) are allowed; any other global is refused
        with torch.serialization.safe_globals(_safe_globals() + _numpy_data_globals()):
            return torch.load(str(p), map_location=map_location, weights_only=True if weights_only is None else weights_only)
    except (AstrotlError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for a bad file; the message matters
        raise checkpoint_error(p, exc) from None


def load_model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (on the CPU), or a one-line :class:`RunDirError`."""
    p = Path(path)
    ckpt = _load(p, "cpu", True)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise RunDirError(f"checkpoint '{p}' has no state_dict: it is not a Lightning checkpoint of this run; start "
                          f"again with --overwrite")
    return state


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic saves (temp file + fsync + rename in the same folder) and
    one-line errors for damaged checkpoints. See the module docstring."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location: Callable | Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return _load(Path(path), map_location, weights_only)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
