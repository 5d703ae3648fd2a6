"""The run directory: what a run writes, and the rules for reusing one.

``runs/<name>/`` holds::

    run.json               status (running / finished / failed / interrupted), timings, versions, weights provenance
    config.resolved.yaml   the full configuration with every default, to repeat the run exactly
    metrics.json           all metrics (flat), plus metrics.ecsv (name, value)
    predictions.ecsv       one row per test sample: catalogue columns + true / predicted class + probabilities
    tables/*.ecsv          confusion matrix, per-class scores, binned accuracies, ...
    history.ecsv           per-epoch training and validation metrics
    plots/*.png            confusion matrix, training curves, task plots
    checkpoints/           Lightning checkpoints (best.ckpt, last.ckpt) for --resume
    logs/                  Lightning's logger (metrics.csv or TensorBoard events)
    model.safetensors      trained weights (backbone + head) with metadata
    backbone.safetensors   the fine-tuned backbone alone: `weights: runs/<name>/backbone.safetensors`
    report.md              a short human-readable summary linking the above
    .astrotl-manifest      what astrotl wrote here (see below)

The manifest
------------
``.astrotl-manifest`` lists, one JSON array per line, every path astrotl wrote in the directory:
``["file", "plots/confusion.png"]``, ``["dir", "plots"]`` (a folder astrotl made) and
``["tree", "checkpoints"]`` (a folder astrotl made and whose whole content is astrotl's: Lightning
writes checkpoints and logs there). Files are recorded *before* they are written, by the atomic
writers of :mod:`astrotl.io`, from :meth:`RunDirectory.prepare` until :meth:`RunDirectory.close`.

``--overwrite`` (:meth:`RunDirectory.clean`) removes exactly those paths -- the folders only if
they are then empty -- and the temporary files a killed run left (``.<name>.*.tmp*``), and keeps
anything else (a user's notes, data put next to the outputs). It does so only after
:meth:`RunDirectory.check` has established that the folder is an astrotl run. A run written before
manifests existed is cleaned by the documented layout above.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from .errors import AstrotlError, OutputError, RunDirError
from .io import TEMP_PATTERN, add_recorder, clean_temp_files, make_dirs, output_error, remove_recorder, write_json

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
MANIFEST = ".astrotl-manifest"
STATUSES = ("running", "finished", "failed", "interrupted")
KINDS = ("file", "dir", "tree")

#: What a run wrote before manifests existed (used to clean such a run with --overwrite).
LEGACY_FILES = ("run.json", "config.resolved.yaml", "metrics.json", "metrics.ecsv", "predictions.ecsv", "history.ecsv",
                "report.md", "model.safetensors", "backbone.safetensors")
LEGACY_GLOBS = (("checkpoints", "*.ckpt"), ("plots", "*.png"), ("tables", "*.ecsv"))
LEGACY_TREES = ("logs",)

#: Run directories being written by this process (between prepare() and close()).
_ACTIVE: dict[str, RunDirectory] = {}


class RunDirectory:
    """A run's output directory, its status file and its manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._recorded: set[tuple[str, str]] | None = None

    # paths
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def tables(self) -> Path:
        return self.path / "tables"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def status(self) -> dict[str, Any] | None:
        f = self.path / RUN_FILE
        if not f.is_file():
            return None
        try:
            data = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {"status": "unreadable"}
        return data if isinstance(data, dict) else {"status": "unreadable"}

    # -- what is astrotl's ----------------------------------------------------------------------------
    def is_astrotl_run(self) -> bool:
        """True if this folder was made by an astrotl run: it has a manifest, or (a run older than
        manifests) a ``run.json`` with an astrotl status and version."""
        if self.manifest_path.is_file() and not self.manifest_path.is_symlink():
            return True
        st = self.status()
        if not st or st.get("status") not in STATUSES:
            return False
        versions = st.get("versions")
        return isinstance(versions, dict) and "astrotl" in versions

    def manifest(self) -> list[tuple[str, str]]:
        """The recorded ``(kind, relative path)`` entries, in order, without duplicates; entries that
        would point outside the directory are ignored."""
        out: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        try:
            lines = self.manifest_path.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                kind, rel = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line cut short by a kill: the rest is still good
            if kind in KINDS and isinstance(rel, str) and _is_plain_relative(rel) and (kind, rel) not in seen:
                seen.add((kind, rel))
                out.append((kind, rel))
        return out

    def record(self, path: str | os.PathLike, kind: str = "file") -> None:
        """Add ``path`` (inside this directory) to the manifest: ``kind`` ``"file"``, ``"dir"`` (a folder
        astrotl made; removed by --overwrite when empty) or ``"tree"`` (a folder whose whole content is
        astrotl's, e.g. one Lightning writes into). The atomic writers call this by themselves."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.path))
        if not _is_plain_relative(rel):
            return
        rel = Path(rel).as_posix()
        if self._recorded is None:
            self._recorded = set(self.manifest())
        if (kind, rel) in self._recorded:
            return
        try:
            with open(self.manifest_path, "a") as fh:
                fh.write(json.dumps([kind, rel]) + "\n")
        except OSError as exc:
            raise output_error(self.manifest_path, exc) from None
        self._recorded.add((kind, rel))

    def track(self) -> None:
        """Record, from now on, every file the atomic writers of :mod:`astrotl.io` write in this directory."""
        add_recorder(self.path, self.record)
        _ACTIVE[os.path.abspath(self.path)] = self

    def close(self) -> None:
        """Stop recording (the run is over)."""
        remove_recorder(self.path)
        _ACTIVE.pop(os.path.abspath(self.path), None)

    def _entries(self) -> list[tuple[str, str]]:
        if self.manifest_path.is_file():
            return self.manifest()
        entries: list[tuple[str, str]] = [("file", f) for f in LEGACY_FILES]
        for folder, pattern in LEGACY_GLOBS:
            d = self.path / folder
            if d.is_dir() and not d.is_symlink():
                entries += [("file", f"{folder}/{f.name}") for f in sorted(d.glob(pattern))]
            entries.append(("dir", folder))
        entries += [("tree", t) for t in LEGACY_TREES]
        return entries

    def clean_temp(self) -> list[Path]:
        """Remove the hidden temporary files (``.<name>.*.tmp*``) that a killed run left in this directory
        and the folders astrotl made in it; return what was removed."""
        folders = {self.path}
        for kind, rel in self._entries():
            if kind in ("dir", "tree") and self._safe(rel):
                folders.add(self.path / rel)
        removed: list[Path] = []
        for d in sorted(folders):
            removed += clean_temp_files(d)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), self.path)
        return removed

    def clean(self) -> list[Path]:
        """Remove what astrotl wrote here (see the module docstring) and return what was kept."""
        entries = self._entries()
        self.clean_temp()
        dirs: list[str] = []
        for kind, rel in entries:
            if not self._safe(rel):
                continue
            p = self.path / rel
            try:
                if kind == "file":
                    if p.is_symlink() or p.is_file():
                        p.unlink()
                elif kind == "tree":
                    if p.is_symlink() or p.is_file():
                        p.unlink()
                    elif p.is_dir():
                        shutil.rmtree(p)
                else:
                    dirs.append(rel)
            except OSError as exc:
                raise output_error(p, exc, what="remove") from None
        for rel in sorted(dirs, key=lambda r: r.count("/"), reverse=True):
            p = self.path / rel
            if p.is_dir() and not p.is_symlink() and RunDirectory(p).manifest_path.is_file():
                RunDirectory(p).clean()  # a stage: an ordinary run directory inside this one
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty: a user's files in it stay
        with contextlib.suppress(OSError):
            self.manifest_path.unlink()
        self._recorded = None
        kept = sorted(p for p in self.path.rglob("*") if not p.is_dir() or p.is_symlink()) if self.path.is_dir() else []
        if kept:
            shown = ", ".join(str(p.relative_to(self.path)) for p in kept[:5])
            log.warning("--overwrite kept %d file(s) in %s that astrotl did not write: %s%s", len(kept), self.path,
                        shown, ", ..." if len(kept) > 5 else "")
        return kept

    def _has_content(self) -> bool:
        """Anything here but astrotl's manifest, empty folders it made and its temporary files? (A run that
        failed before writing anything -- e.g. on a full disk -- leaves only those and must not block the
        next run.)"""
        for f in self.path.rglob("*"):
            if f.is_dir() and not f.is_symlink():
                continue
            if f.parent == self.path and f.name == MANIFEST and self.manifest_path.is_file():
                continue
            if TEMP_PATTERN.match(f.name):
                continue
            return True
        return False

    def _safe(self, rel: str) -> bool:
        """``rel`` lies inside this directory without passing through a symbolic link (so removing it
        cannot reach anything outside)."""
        if not _is_plain_relative(rel):
            return False
        p = self.path
        for part in Path(rel).parts[:-1]:
            p = p / part
            if p.is_symlink() or not p.is_dir():
                return False
        return True

    # -- the rules ------------------------------------------------------------------------------------
    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Raise :class:`RunDirError` if this directory may not be used as asked. Changes nothing."""
        if overwrite and resume:
            raise RunDirError("--overwrite and --resume contradict each other; choose one")
        p = self.path
        if p.is_symlink() and not p.exists():
            raise RunDirError(f"output path '{p}' is a broken symbolic link; remove it or choose another name or "
                              f"output_dir")
        for parent in p.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise RunDirError(f"output_dir: '{parent}' is a file (or a broken link), not a folder; choose "
                                      f"another output_dir")
                break
        if p.exists() and not p.is_dir():
            raise RunDirError(f"output path '{p}' exists and is a file; choose another name or output_dir")
        try:
            exists = p.is_dir() and self._has_content()
        except OSError as exc:
            raise RunDirError(f"cannot read the output directory '{p}' ({exc.strerror}); fix its permissions or "
                              f"choose another output_dir") from None
        if resume:
            if not exists:
                raise RunDirError(f"nothing to resume: '{p}' does not exist or is empty; run without --resume")
            if not self.is_astrotl_run():
                raise RunDirError(f"'{p}' is not an astrotl run (no {MANIFEST} or run.json); nothing to resume")
            if not self.last_checkpoint.is_file():
                raise RunDirError(f"nothing to resume in '{p}': no checkpoints/last.ckpt (the run stopped before its "
                                  f"first epoch ended); start again with --overwrite")
            check_checkpoint_file(self.last_checkpoint)
            return
        if not exists:
            return
        if not self.is_astrotl_run():
            raise RunDirError(f"output directory '{p}' is not empty and is not an astrotl run; choose another "
                              f"name (--set name=...) or output_dir, astrotl will not delete it")
        if overwrite:
            return
        state = (self.status() or {}).get("status", "unknown")
        if state == "finished":
            raise RunDirError(f"'{p}' already holds a finished run; use --overwrite to replace it, --resume to "
                              f"re-evaluate it, or --set name=<new name>")
        raise RunDirError(f"'{p}' holds an unfinished run (status: {state}); continue it with --resume or start "
                          f"again with --overwrite")

    def prepare(self, *, overwrite: bool, resume: bool) -> None:
        """Create the directory (after :meth:`check` passed), clearing what astrotl wrote with ``overwrite``
        and the temporary files of a killed run with ``resume``; start recording what is written."""
        self.check(overwrite=overwrite, resume=resume)
        if (overwrite or not resume) and self.path.is_dir() and self.is_astrotl_run():
            self.clean()  # with overwrite: the old run; without: what a run that failed before writing anything left
        elif resume:
            self.clean_temp()
        try:
            make_dirs(self.path)  # an enclosing run (this is a stage) records the folders it makes
            self.track()
            for d, kind in ((self.checkpoints, "tree"), (self.plots, "dir"), (self.tables, "dir")):
                if not d.is_dir():
                    self.record(d, kind)
                    d.mkdir()
            if not self.logs.exists():
                self.record(self.logs, "tree")  # Lightning's logger writes there
        except OSError as exc:
            self.close()
            raise output_error(self.path, exc, what="create the run directory") from None
        except OutputError:
            self.close()
            raise

    def write_status(self, **fields: Any) -> None:
        current = self.status() or {}
        if current.get("status") == "unreadable":
            current = {}
        current.update(fields)
        write_json(self.path / RUN_FILE, current)


def mark_interrupted(signame: str) -> list[Path]:
    """Set ``status: interrupted`` (with the signal's name) in every run directory this process is
    writing whose status is still ``running``; return them. Never raises: it runs while stopping."""
    import time

    done: list[Path] = []
    for rd in list(_ACTIVE.values()):
        try:
            if (rd.status() or {}).get("status") == "running":
                rd.write_status(status="interrupted", signal=signame, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                done.append(rd.path)
        except (AstrotlError, OSError) as exc:  # e.g. the disk is full: the line on stderr still says what happened
            log.debug("could not mark %s interrupted: %s", rd.path, exc)
    return done


def _is_plain_relative(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and rel != "." and not p.is_absolute() and ".." not in p.parts


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise a one-line :class:`RunDirError` if ``path`` is not a whole checkpoint (torch's zip format:
    a truncated or overwritten file fails the archive's directory or CRC check)."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise RunDirError(f"checkpoint '{p}' is damaged ({_reason(exc)}): it is truncated or not a checkpoint; the run "
                          f"cannot continue from it: start again with --overwrite") from None
    if bad is not None:
        raise RunDirError(f"checkpoint '{p}' is damaged (member {bad} fails its CRC check); the run cannot continue "
                          f"from it: start again with --overwrite")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:120] if text else type(exc).__name__
