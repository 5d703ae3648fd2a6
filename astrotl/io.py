"""Atomic output writing: a file appears whole or not at all.

Every writer goes to a temporary file in the destination directory and ``os.replace``-s it
into place, so an interrupted run never leaves a half-written file. The temporary file is
hidden and named ``.<name>.<8 random characters>.tmp<suffix>`` (:data:`TEMP_PATTERN`); it is
removed when the write fails, and :func:`clean_temp_files` removes the ones a killed process
left behind.

A failed write (a full disk, no permission, a directory or a file in the way) raises
:class:`~astrotl.errors.OutputError`: one line naming the path and the fix, never a traceback.

Writers report what they write to *recorders* (:func:`add_recorder`): a run directory
(:class:`astrotl.rundir.RunDirectory`) registers one so that its manifest lists every file and
folder astrotl made in it, and ``--overwrite`` later removes those and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from astropy.table import Table

from .errors import AstrotlError, OutputError

#: Name of the temporary files :func:`atomic_path` makes (``tempfile.mkstemp``: 8 characters of
#: ``[a-z0-9_]`` between the prefix ``.<name>.`` and the suffix ``.tmp<suffix>``).
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^./]+)?$")

# -- recorders --------------------------------------------------------------------------------------

#: absolute root folder -> callback(path, kind) with kind "file" or "dir"
_RECORDERS: dict[str, Callable[[Path, str], None]] = {}


def add_recorder(root: str | os.PathLike, callback: Callable[[Path, str], None]) -> None:
    """Call ``callback(path, kind)`` before anything is written under ``root`` (``kind``: ``"file"`` or
    ``"dir"`` for a folder a writer made). The deepest registered root containing a path gets it."""
    _RECORDERS[os.path.abspath(root)] = callback


def remove_recorder(root: str | os.PathLike) -> None:
    _RECORDERS.pop(os.path.abspath(root), None)


def _recorder_for(path: Path) -> Callable[[Path, str], None] | None:
    if not _RECORDERS:
        return None
    p = os.path.abspath(path)
    best, best_len = None, -1
    for root, cb in _RECORDERS.items():
        if (p == root or p.startswith(root.rstrip(os.sep) + os.sep)) and len(root) > best_len:
            best, best_len = cb, len(root)
    return best


def record_output(path: str | os.PathLike, kind: str = "file") -> None:
    """Tell the recorder responsible for ``path`` (if any) that astrotl writes it."""
    cb = _recorder_for(Path(path))
    if cb is not None:
        cb(Path(path), kind)


# -- errors ---------------------------------------------------------------------------------------

_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or choose an output location on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another output location",
    errno.EACCES: "no permission to write there: choose a writable folder or change its permissions",
    errno.EPERM: "no permission to write there: choose a writable folder or change its permissions",
    errno.EROFS: "the file system is read-only: choose an output location on a writable disk",
    errno.EISDIR: "it is a directory: give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a part of the path is a file or a broken link, not a folder: choose another path",
    errno.ELOOP: "a symbolic link in the path loops: fix or remove it",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter one",
    errno.EXDEV: "the temporary file and the destination are on different disks: write elsewhere",
}


def as_oserror(exc: BaseException, folder: str | os.PathLike | None = None) -> OSError | None:
    """The ``OSError`` behind a writer's failure, or ``None`` if it was not an I/O failure.

    Writers report a full disk in their own ways: ``OSError`` (numpy, astropy, matplotlib),
    ``SafetensorError("... (os error 28)")``, torch's ``RuntimeError("... unexpected pos ...")``.
    Without an errno, a ``folder`` with no space left counts as a full disk.
    """
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, AstrotlError) or not isinstance(exc, Exception):
        return None
    m = re.search(r"os error (\d+)", str(exc))
    if m:
        n = int(m.group(1))
        return OSError(n, os.strerror(n))
    if folder is not None and isinstance(exc, RuntimeError):  # torch's writer hides the errno
        try:
            st = os.statvfs(folder)
            if st.f_bavail == 0 or st.f_favail == 0:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except (OSError, AttributeError):
            pass
    return None


def output_error(dest: str | os.PathLike, exc: OSError, *, what: str = "write") -> OutputError:
    """One-line :class:`OutputError` for an ``OSError`` met while writing ``dest``."""
    reason = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
    if exc.errno is None and "space" in reason.lower():  # astropy.io.fits: "Not enough space on disk: ..."
        exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        reason = exc.strerror
    other = exc.filename if exc.filename not in (None, str(dest), os.fspath(dest)) else None
    if other is not None and TEMP_PATTERN.match(Path(str(other)).name):
        other = None  # the temporary file is an implementation detail
    where = f" ('{other}')" if other is not None else ""
    fix = _FIXES.get(exc.errno or -1, "check the path and the disk, then try again")
    return OutputError(f"cannot {what} '{dest}': {reason}{where}; {fix}")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out",
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a directory, not an
    existing file without ``overwrite``, a known suffix, a parent that is (or can be) a folder."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise OutputError(f"{option} '{path}' is not a file name; give a file path such as out.ecsv")
    if p.is_dir():
        raise OutputError(f"{option} '{p}' is a directory; give a file name (e.g. {p / ('out' + (suffixes or ('.ecsv',))[0])})")
    if suffixes is not None and p.suffix not in suffixes:
        raise OutputError(f"{option} '{p}' must end in {', '.join(suffixes[:-1])} or {suffixes[-1]}" if len(suffixes) > 1
                          else f"{option} '{p}' must end in {suffixes[0]}")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise OutputError(f"{option} '{p}' already exists; choose another {option} or pass --overwrite to replace it")
    for parent in [p.parent, *p.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {option} '{p}': '{parent}' is a file, not a folder; choose another path")
            break
        if parent.is_symlink():
            raise OutputError(f"cannot write {option} '{p}': '{parent}' is a broken symbolic link; fix it or choose "
                              f"another path")
    return p


# -- writing --------------------------------------------------------------------------------------


def make_dirs(folder: Path) -> None:
    """``mkdir -p folder``, reporting each folder it creates to the recorders."""
    missing = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if not missing:
        if not folder.is_dir():  # a file (or a link to one) where the folder should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        return
    folder.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        record_output(d, "dir")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any failure (or an interrupt) the temporary file is removed and ``path`` is untouched. An
    ``OSError`` (full disk, no permission, a directory where the file should go, ...) becomes an
    :class:`~astrotl.errors.OutputError` naming ``path`` and the fix.
    """
    dest = Path(path)
    if dest.is_dir() and not dest.is_symlink():
        raise OutputError(f"cannot write '{dest}': it is a directory; give a file name, or remove the directory")
    try:
        make_dirs(dest.parent)
        record_output(dest, "file")
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix, dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(dest, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp files are private (0600); give outputs the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except Exception as exc:  # noqa: BLE001 -- only I/O failures are converted; anything else is re-raised
        oserr = as_oserror(exc, dest.parent)
        if oserr is None:
            raise
        raise output_error(dest, oserr) from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp_path):
                tmp_path.unlink()


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` (not recursive) when a
    process was killed mid-write; return what was removed."""
    d = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir()) if d.is_dir() and not d.is_symlink() else []
    except OSError:
        return removed
    for f in entries:
        if TEMP_PATTERN.match(f.name) and (f.is_file() or f.is_symlink()):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN -> null keeps the file valid JSON
        return None
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".fits": "fits", ".csv": "ascii.csv"}


def write_table(path: str | os.PathLike, table: Table) -> Path:
    """Write an astropy Table (format from the suffix: .ecsv, .fits, .csv)."""
    dest = Path(path)
    fmt = TABLE_FORMATS.get(dest.suffix)
    with atomic_path(dest) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return dest


def write_table_blocks(path: str | os.PathLike, blocks: Iterable[Table]) -> int:
    """Write the tables ``blocks`` one after another as one table ``path`` (format from the suffix), atomically,
    holding one block in memory at a time; return the number of rows written.

    The file equals what :func:`write_table` writes for the blocks stacked (``vstack``): ECSV and CSV
    get the first block's header (with its metadata) and every block's rows appended as text; FITS gets
    one binary table whose string columns are as wide as the widest block needs -- the blocks are spooled
    to a hidden temporary file next to ``path`` in their own FITS layout, then copied into the final
    layout one block at a time. Later blocks' metadata is ignored. Blocks whose columns differ (names,
    types, shapes) are stacked in memory instead (``vstack``, ``join_type="outer"``): correct, not flat.
    If the iteration or a write fails, nothing is left at ``path`` (nor any temporary file).
    """
    dest = Path(path)
    with atomic_path(dest) as tmp:
        if dest.suffix == ".fits":
            return _write_fits_blocks(tmp, iter(blocks))
        return _write_text_blocks(tmp, iter(blocks), TABLE_FORMATS.get(dest.suffix, "ascii.ecsv"))


def _no_meta(block: Table) -> Table:
    t = block.copy(copy_data=False)
    t.meta = {}
    return t


def _text_parts(table: Table, fmt: str) -> tuple[str, str]:
    """``(header, rows)`` of ``table`` written as ``fmt``: the comment lines and the column-name line, then the rest."""
    buf = io.StringIO()
    table.write(buf, format=fmt)
    text = buf.getvalue()
    pos = 0
    while text.startswith("#", pos):
        pos = text.index("\n", pos) + 1
    pos = text.index("\n", pos) + 1  # the column names
    return text[:pos], text[pos:]


def _write_text_blocks(tmp: Path, blocks: Iterator[Table], fmt: str) -> int:
    from astropy.table import vstack

    first = next(blocks, None)
    if first is None:
        raise ValueError("write_table_blocks: no blocks to write")
    signature = _text_parts(_no_meta(first[:0]), fmt)[0]
    n = len(first)
    with open(tmp, "w", newline="") as fh:
        fh.write("".join(_text_parts(first, fmt)))
        del first
        for block in blocks:
            head, rows = _text_parts(_no_meta(block), fmt)
            if head != signature:  # other columns or types: stack what is written so far with the rest, in memory
                fh.close()
                done = Table.read(tmp, format=fmt)
                stacked = vstack([done, block, *blocks], join_type="outer", metadata_conflicts="silent")
                stacked.meta = done.meta  # the first block's, as on the streamed path
                stacked.write(tmp, format=fmt, overwrite=True)
                return len(stacked)
            fh.write(rows)
            n += len(block)
    return n


_FITS_BLOCK = 2880
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")
_TFORM_BYTES = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}


def _fits_columns(header) -> list[tuple[str, int, str]] | None:
    """``[(code, repeat, rest), ...]`` of a binary table header, or None when the layout cannot be re-packed
    (a heap of variable-length arrays, or an unknown format)."""
    if int(header.get("PCOUNT", 0)) != 0:
        return None
    cols = []
    for i in range(1, int(header["TFIELDS"]) + 1):
        m = _TFORM.match(str(header[f"TFORM{i}"]))
        if m is None or m.group(2) in "PQ":
            return None
        cols.append((m.group(2), int(m.group(1) or 1), m.group(3)))
    return cols


def _fits_width(code: str, repeat: int) -> int:
    return (repeat + 7) // 8 if code == "X" else repeat * _TFORM_BYTES[code]


def _column_keys(header, n_fields: int) -> dict[str, Any]:
    """The per-column keywords (TTYPE, TUNIT, TDIM, ...) except TFORM (string widths may differ) and TNULL."""
    keys = {}
    for card in header.cards:
        m = re.match(r"^T([A-Z]+)(\d+)$", card.keyword)
        if m and m.group(1) not in ("FORM", "NULL") and 1 <= int(m.group(2)) <= n_fields:
            keys[card.keyword] = card.value
    return keys


def _merged_fits_header(headers: list) -> Any:
    """The first block's header with the widest string formats, every block's TNULLs and the total row count;
    None when the blocks' columns differ otherwise."""
    first = headers[0]
    cols = _fits_columns(first)
    if cols is None:
        return None
    n_fields = len(cols)
    keys = _column_keys(first, n_fields)
    repeats = [r for _, r, _ in cols]
    nulls: dict[str, Any] = {}
    for h in headers:
        other = _fits_columns(h)
        if other is None or len(other) != n_fields or _column_keys(h, n_fields) != keys:
            return None
        for j, ((code, rep, rest), (c2, r2, rest2)) in enumerate(zip(cols, other)):
            if code != c2 or rest != rest2:
                return None
            if rep != r2:
                if code != "A" or f"TDIM{j + 1}" in keys:  # only plain strings may differ in width
                    return None
                repeats[j] = max(repeats[j], r2)
        for j in range(1, n_fields + 1):
            if f"TNULL{j}" in h:
                if nulls.setdefault(f"TNULL{j}", h[f"TNULL{j}"]) != h[f"TNULL{j}"]:
                    return None
    final = first.copy()
    for j, ((code, rep0, rest), rep) in enumerate(zip(cols, repeats), start=1):
        if rep != rep0:
            final[f"TFORM{j}"] = f"{rep}{code}{rest}"
    for key, value in nulls.items():
        if key not in final:
            j = int(key[5:])
            final.insert(f"TFORM{j}", (key, value), after=True)
    final["NAXIS1"] = sum(_fits_width(c, r) for (c, _, _), r in zip(cols, repeats))
    final["NAXIS2"] = sum(int(h["NAXIS2"]) for h in headers)
    return final


def _read_part(spool: Path, header, offset: int) -> Table:
    """One spooled block back as a table (its own header and layout)."""
    from astropy.io import fits

    size = int(header["NAXIS1"]) * int(header["NAXIS2"])
    with open(spool, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    blob = fits.PrimaryHDU().header.tostring().encode("ascii") + header.tostring().encode("ascii") + data
    blob += b"\0" * (-len(blob) % _FITS_BLOCK)
    with fits.open(io.BytesIO(blob)) as hl:
        return Table.read(hl[1])


def _write_fits_blocks(tmp: Path, blocks: Iterator[Table]) -> int:
    import numpy as np
    from astropy.io import fits

    fd, spool_name = tempfile.mkstemp(prefix=f".{tmp.name}.", suffix=".tmp.spool", dir=tmp.parent)
    spool = Path(spool_name)
    try:
        parts: list[tuple[Any, int, int]] = []  # (block header, offset in the spool, rows)
        primary = fits.PrimaryHDU().header.tostring().encode("ascii")
        with os.fdopen(fd, "wb") as fh:
            for i, block in enumerate(blocks):
                buf = io.BytesIO()
                fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(block if i == 0 else _no_meta(block))]).writeto(buf)
                buf.seek(len(primary))
                header = fits.Header.fromfile(buf)  # the extension's header, as written
                start = buf.tell()
                raw = buf.getbuffer()
                size = int(header["NAXIS1"]) * int(header["NAXIS2"])
                parts.append((header, fh.tell(), len(block)))
                fh.write(raw[start:start + size])
                del raw, buf, block
        if not parts:
            raise ValueError("write_table_blocks: no blocks to write")
        final = _merged_fits_header([h for h, _, _ in parts])
        if final is None:  # the blocks' columns differ: read them back and stack them in memory
            from astropy.table import vstack

            tables = [_read_part(spool, h, off) for h, off, _ in parts]
            stacked = vstack(tables, join_type="outer", metadata_conflicts="silent")
            stacked.meta = tables[0].meta
            stacked.write(tmp, format="fits", overwrite=True)
            return len(stacked)
        cols = _fits_columns(final)
        widths = [_fits_width(c, r) for c, r, _ in cols]
        total = 0
        with open(tmp, "wb") as out:
            out.write(primary)
            out.write(final.tostring().encode("ascii"))
            for header, off, n in parts:
                src = [_fits_width(c, r) for c, r, _ in _fits_columns(header)]
                raw = np.fromfile(spool, dtype=np.uint8, count=sum(src) * n, offset=off).reshape(n, sum(src))
                row = np.zeros((n, sum(widths)), dtype=np.uint8)  # strings padded with NULs, as astropy writes them
                a = b = 0
                for w_src, w in zip(src, widths):
                    row[:, b:b + w_src] = raw[:, a:a + w_src]
                    a, b = a + w_src, b + w
                out.write(row.tobytes())
                total += n
            pad = -(total * sum(widths)) % _FITS_BLOCK
            out.write(b"\0" * pad)
        return total
    finally:
        with contextlib.suppress(OSError):
            spool.unlink()


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["OutputError", "TEMP_PATTERN", "as_oserror", "add_recorder", "atomic_path", "check_output_file",
           "clean_temp_files", "make_dirs", "output_error", "record_output", "remove_recorder", "save_figure", "sha256_file",
           "write_json", "write_table", "write_table_blocks", "write_text"]
