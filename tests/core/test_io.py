"""astrotl.io: atomic writers that leave nothing half-written and fail with one line."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from astropy.table import Table

from astrotl.errors import OutputError
from astrotl.io import (TEMP_PATTERN, atomic_path, check_output_file, clean_temp_files, save_figure, write_json,
                        write_table, write_table_blocks, write_text)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["text", "json", "table_ecsv", "table_fits", "figure"])
def test_full_disk_on_rename_leaves_old_file_and_no_temp(tmp_path, monkeypatch, writer):
    dest = tmp_path / {"text": "a.txt", "json": "a.json", "table_ecsv": "a.ecsv", "table_fits": "a.fits",
                       "figure": "a.png"}[writer]
    dest.write_text("old")
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(OutputError, match=r"cannot write '.*a\.\w+': No space left on device; the disk is full"):
        if writer == "text":
            write_text(dest, "new")
        elif writer == "json":
            write_json(dest, {"a": 1})
        elif writer.startswith("table"):
            write_table(dest, Table({"a": [1, 2]}))
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, _ = plt.subplots()
            save_figure(fig, dest)
    assert dest.read_text() == "old"
    assert _tree(tmp_path) == [dest.name]


def test_full_disk_while_writing_the_temp_file(tmp_path):
    dest = tmp_path / "big.npy"

    def body():
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device; the disk is full") as info:
        body()
    assert "\n" not in str(info.value) and ".tmp" not in str(info.value)
    assert _tree(tmp_path) == []


def test_writer_errors_reported_without_errno(tmp_path):
    """safetensors ("os error 28") and astropy.io.fits ("Not enough space on disk") are recognised too."""
    for exc in (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
                OSError("Not enough space on disk: requested 800000, available 0.")):
        with pytest.raises(OutputError, match="the disk is full"):
            with atomic_path(tmp_path / "m.safetensors"):
                raise exc
    assert _tree(tmp_path) == []


def test_a_bug_in_the_writer_keeps_its_traceback(tmp_path):
    with pytest.raises(TypeError):
        with atomic_path(tmp_path / "x.txt"):
            raise TypeError("a bug")
    assert _tree(tmp_path) == []


def test_permission_denied(tmp_path, monkeypatch):
    import tempfile

    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", deny)
    with pytest.raises(OutputError, match="Permission denied.*no permission to write there"):
        write_text(tmp_path / "x.txt", "x")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="no permission"):
            write_text(ro / "x.txt", "x")
    finally:
        ro.chmod(0o755)


def test_destination_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="it is a directory; give a file name"):
        write_table(tmp_path / "d", Table({"a": [1]}))
    assert _tree(tmp_path) == ["d"]


def test_parent_is_a_file_or_a_broken_link(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="a part of the path is a file"):
        write_text(tmp_path / "f" / "g" / "x.txt", "x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="cannot write"):
        write_text(tmp_path / "link" / "x.txt", "x")
    assert _tree(tmp_path) == ["f", "link"]


def test_symlink_destination_is_replaced_not_followed(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text(link, "new")
    assert target.read_text() == "keep" and link.read_text() == "new" and not link.is_symlink()


def test_interrupt_leaves_no_temp(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.ckpt") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert _tree(tmp_path) == []


def test_temp_names_match_the_cleanup_pattern(tmp_path):
    seen = []
    for name in ("a.ecsv", "model.safetensors", "noext", "last.ckpt", "x.tar.gz"):
        with atomic_path(tmp_path / name) as tmp:
            seen.append(tmp.name)
            assert TEMP_PATTERN.match(tmp.name), tmp.name
    stale = [tmp_path / s for s in seen]
    for s in stale:
        s.write_text("stale")
    (tmp_path / ".hidden_user_file").write_text("mine")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = clean_temp_files(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert _tree(tmp_path) == [".hidden_user_file", "a.ecsv", "last.ckpt", "model.safetensors", "noext", "notes.tmp",
                               "x.tar.gz"]


def test_check_output_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "exists.ecsv").write_text("x")
    (tmp_path / "file").write_text("x")
    sfx = (".ecsv", ".fits", ".csv")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path / "d", suffixes=sfx)
    with pytest.raises(OutputError, match="already exists; .* --overwrite"):
        check_output_file(tmp_path / "exists.ecsv", suffixes=sfx)
    assert check_output_file(tmp_path / "exists.ecsv", overwrite=True, suffixes=sfx)
    with pytest.raises(OutputError, match="must end in .ecsv, .fits or .csv"):
        check_output_file(tmp_path / "x.txt", suffixes=sfx)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.ecsv", suffixes=sfx)
    assert check_output_file(tmp_path / "new" / "deeper" / "x.ecsv", suffixes=sfx)


def test_record_output_reports_files_and_new_folders(tmp_path):
    from astrotl.io import add_recorder, remove_recorder

    got = []
    add_recorder(tmp_path / "run", lambda p, kind: got.append((os.path.relpath(p, tmp_path), kind)))
    try:
        write_text(tmp_path / "run" / "plots" / "a" / "x.txt", "x")
        write_text(tmp_path / "elsewhere.txt", "x")
    finally:
        remove_recorder(tmp_path / "run")
    assert got == [("run", "dir"), ("run/plots", "dir"), ("run/plots/a", "dir"), ("run/plots/a/x.txt", "file")]
    write_text(tmp_path / "run" / "y.txt", "y")
    assert len(got) == 4


def test_write_table_roundtrip(tmp_path):
    t = Table({"a": np.arange(3)})
    write_table(tmp_path / "t.ecsv", t)
    assert list(Table.read(tmp_path / "t.ecsv")["a"]) == [0, 1, 2]


def _block(i: int, n: int, width: int, multidim: bool = True) -> Table:
    t = Table({"id": [f"{'x' * width}{j}" for j in range(n)], "ra": np.arange(n) * 1.5 + i,
               "n": np.arange(n) + 10 * i, "ok": np.arange(n) % 2 == 0})
    if multidim:
        t["v"] = np.full((n, 3), float(i))
    t["ra"].unit = "deg"
    t.meta = {"run": "runs/a", "members": ["a", "b"], "block": i}
    return t


@pytest.mark.parametrize("suffix", [".ecsv", ".csv", ".fits"])
def test_blocks_write_the_file_of_the_stacked_table(tmp_path, suffix):
    """Rows appended block by block give the very bytes of the stacked table (the first block's metadata),
    also in FITS where a later block needs wider strings than the first."""
    from astropy.table import vstack

    blocks = [_block(0, 5, 1, suffix != ".csv"), _block(1, 3, 7, suffix != ".csv"), _block(2, 4, 2, suffix != ".csv")]
    assert write_table_blocks(tmp_path / f"b{suffix}", iter(blocks)) == 12
    whole = vstack(blocks, metadata_conflicts="silent")
    whole.meta = dict(blocks[0].meta)
    write_table(tmp_path / f"w{suffix}", whole)
    assert (tmp_path / f"b{suffix}").read_bytes() == (tmp_path / f"w{suffix}").read_bytes()
    assert list(Table.read(tmp_path / f"b{suffix}")["id"]) == list(whole["id"])
    assert _tree(tmp_path) == [f"b{suffix}", f"w{suffix}"]  # no spool or temporary file left
    if suffix == ".fits":
        from astropy.io import fits

        with fits.open(tmp_path / "b.fits") as hl:
            hl.verify("exception")
            assert hl[1].header["TFORM1"] == "8A" and hl[1].header["NAXIS2"] == 12


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_blocks_with_other_columns_are_stacked_in_memory(tmp_path, suffix):
    """A block with other columns (e.g. an image without detections) still gives the outer-joined table."""
    from astropy.table import vstack

    a, b = _block(0, 3, 1), _block(1, 2, 1)
    b.remove_column("n")
    b["extra"] = [1.0, 2.0]
    c = _block(2, 2, 4)
    assert write_table_blocks(tmp_path / f"b{suffix}", [a, b, c]) == 7
    got = Table.read(tmp_path / f"b{suffix}")
    want = vstack([a, b, c], join_type="outer", metadata_conflicts="silent")
    assert got.colnames == want.colnames and list(got["id"]) == list(want["id"])
    assert {k.lower(): v for k, v in got.meta.items()}["members"] == ["a", "b"]  # the first block's metadata
    assert np.ma.getmaskarray(got["extra"]).tolist() == [True] * 3 + [False] * 2 + [True] * 2
    assert got["n"][0] == 0 and got["n"][5] == 20 and np.ma.getmaskarray(got["n"])[3]
    assert _tree(tmp_path) == [f"b{suffix}"]


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_a_failing_block_leaves_nothing(tmp_path, suffix):
    """The blocks come from a computation (predict): if it fails half-way, no file and no temporary remain."""
    (tmp_path / f"out{suffix}").write_text("earlier output")

    def blocks():
        yield _block(0, 3, 1)
        raise RuntimeError("sample 7 cannot be read")

    with pytest.raises(RuntimeError, match="sample 7"):
        write_table_blocks(tmp_path / f"out{suffix}", blocks())
    assert _tree(tmp_path) == [f"out{suffix}"] and (tmp_path / f"out{suffix}").read_text() == "earlier output"
    with pytest.raises(ValueError, match="no blocks"):
        write_table_blocks(tmp_path / f"none{suffix}", [])
    assert _tree(tmp_path) == [f"out{suffix}"]


def test_full_disk_while_writing_blocks(tmp_path, monkeypatch):
    """A full disk while blocks are written is one OutputError line; nothing is left."""
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: Full(real_open(f, mode, *a, **k))
                        if "w" in mode else real_open(f, mode, *a, **k))
    with pytest.raises(OutputError, match=r"^cannot write '.*out\.ecsv': No space left on device; the disk is full"):
        write_table_blocks(tmp_path / "out.ecsv", [_block(0, 3, 1)])
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_masked_values_first_seen_in_a_later_block(tmp_path, suffix):
    """An image without detections masks its row's prediction columns: a later block may be the first with masked
    values (FITS then needs the TNULL that only that block's header has). Still the bytes of the stacked table."""
    from astropy.table import MaskedColumn, vstack

    a = Table({"id": ["a", "b"], "k": np.array([1, 2]), "x": [1.0, 2.0], "s": ["p", "q"]})
    b = Table({"id": ["c", "dd"], "k": MaskedColumn([3, 4], mask=[True, False]),
               "x": MaskedColumn([3.0, 4.0], mask=[False, True]), "s": MaskedColumn(["r", "long"], mask=[True, False])})
    write_table_blocks(tmp_path / f"b{suffix}", [a, b])
    write_table(tmp_path / f"w{suffix}", vstack([a, b]))
    assert (tmp_path / f"b{suffix}").read_bytes() == (tmp_path / f"w{suffix}").read_bytes()
    got = Table.read(tmp_path / f"b{suffix}")
    assert np.ma.getmaskarray(got["k"]).tolist() == [False, False, True, False]


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_files_of_an_unfinished_block_write_are_cleanable_temporaries(tmp_path, suffix):
    """While blocks are written, the folder holds only hidden temporaries that clean_temp_files recognises (the
    FITS spool too), so a killed predict leaves nothing that a later run cannot remove."""
    seen = []

    def blocks():
        yield _block(0, 3, 1)
        seen.extend(p.name for p in tmp_path.iterdir())
        yield _block(1, 2, 5)

    write_table_blocks(tmp_path / f"out{suffix}", blocks())
    assert len(seen) == (2 if suffix == ".fits" else 1) and all(TEMP_PATTERN.match(n) for n in seen), seen
    assert _tree(tmp_path) == [f"out{suffix}"]
