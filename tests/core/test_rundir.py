"""RunDirectory: --overwrite removes only what astrotl wrote; --resume cleans stale temp files."""

from __future__ import annotations

import json

import pytest
import torch
from astropy.table import Table

from astrotl.errors import OutputError, RunDirError
from astrotl.io import write_json, write_table, write_text
from astrotl.rundir import MANIFEST, RunDirectory, check_checkpoint_file


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _fake_run(path, status="finished"):
    """What the engine does: prepare, write through astrotl.io, Lightning writes checkpoints and logs."""
    rd = RunDirectory(path)
    rd.prepare(overwrite=False, resume=False)
    rd.write_status(status="running", versions={"astrotl": "0"})
    write_text(rd.path / "config.resolved.yaml", "name: x\n")
    write_table(rd.tables / "confusion.ecsv", Table({"a": [1]}))
    write_text(rd.plots / "curves.png", "png")
    torch.save({"state_dict": {}}, rd.last_checkpoint)  # Lightning's own writer, not astrotl.io
    (rd.path / "logs").mkdir()
    (rd.path / "logs" / "metrics.csv").write_text("epoch\n0\n")
    rd.write_status(status=status)
    rd.close()
    return rd


def test_overwrite_removes_only_what_astrotl_wrote(tmp_path):
    rd = _fake_run(tmp_path / "run")
    (rd.path / "notes.txt").write_text("mine")
    (rd.plots / "my_plot.png").write_text("mine")
    (rd.path / "data").mkdir()
    (rd.path / "data" / "input.fits").write_text("mine")
    rd2 = RunDirectory(rd.path)
    rd2.prepare(overwrite=True, resume=False)
    assert _tree(rd.path) == [MANIFEST, "checkpoints", "data", "data/input.fits", "notes.txt", "plots",
                              "plots/my_plot.png", "tables"]
    assert (rd.path / "notes.txt").read_text() == "mine"
    rd2.close()


def test_overwrite_of_a_clean_run_leaves_only_fresh_folders(tmp_path):
    rd = _fake_run(tmp_path / "run", status="failed")
    RunDirectory(rd.path).prepare(overwrite=True, resume=False)
    assert _tree(rd.path) == [MANIFEST, "checkpoints", "plots", "tables"]


def test_a_folder_with_someone_elses_run_json_is_not_a_run(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "finished", "tool": "something else"}))
    (d / "results.csv").write_text("precious")
    with pytest.raises(RunDirError, match="is not empty and is not an astrotl run.*will not delete it"):
        RunDirectory(d).prepare(overwrite=True, resume=False)
    assert _tree(d) == ["results.csv", "run.json"]


def test_legacy_run_without_manifest_is_cleaned_by_its_layout(tmp_path):
    d = tmp_path / "old"
    (d / "plots").mkdir(parents=True)
    (d / "checkpoints").mkdir()
    (d / "run.json").write_text(json.dumps({"status": "finished", "versions": {"astrotl": "0.1"}}))
    for f in ("report.md", "predictions.ecsv", "plots/a.png", "checkpoints/last.ckpt", "plots/user.txt", "mine.txt"):
        (d / f).write_text("x")
    RunDirectory(d).prepare(overwrite=True, resume=False)
    assert "mine.txt" in _tree(d) and "plots/user.txt" in _tree(d)
    assert not (d / "report.md").exists() and not (d / "plots" / "a.png").exists()
    assert not (d / "checkpoints" / "last.ckpt").exists()


def test_manifest_cannot_point_outside(tmp_path):
    rd = _fake_run(tmp_path / "run")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_text("keep")
    # a hand-edited manifest, and a folder of the run replaced by a link to the user's folder
    with open(rd.manifest_path, "a") as fh:
        fh.write(json.dumps(["file", "../precious.txt"]) + "\n")
        fh.write(json.dumps(["file", str(outside)]) + "\n")
        fh.write(json.dumps(["file", "plots/a.png"]) + "\n")
        fh.write('["file", "trunc')  # a line cut short by a kill
    for f in rd.plots.iterdir():
        f.unlink()
    rd.plots.rmdir()
    rd.plots.symlink_to(elsewhere)
    RunDirectory(rd.path).clean()
    assert outside.read_text() == "keep" and (elsewhere / "a.png").read_text() == "keep"


def test_resume_removes_stale_temp_files_and_keeps_the_rest(tmp_path):
    rd = _fake_run(tmp_path / "run", status="interrupted")
    stale = [rd.path / ".model.safetensors.ab12cd34.tmp.safetensors", rd.checkpoints / ".last.ckpt.x1y2z3w4.tmp.ckpt",
             rd.tables / ".confusion.ecsv.abcdefgh.tmp.ecsv"]
    for f in stale:
        f.write_bytes(b"\0" * 1000)
    (rd.path / ".my_hidden_notes").write_text("mine")
    before = set(_tree(rd.path))
    RunDirectory(rd.path).prepare(overwrite=False, resume=True)
    after = set(_tree(rd.path))
    assert before - after == {str(f.relative_to(rd.path)) for f in stale}
    assert ".my_hidden_notes" in after


def test_writes_during_a_run_are_recorded(tmp_path):
    rd = RunDirectory(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    write_json(rd.path / "stages" / "pretrain" / "metrics.json", {"a": 1})
    rd.record(rd.path / "extra.bin")
    rd.close()
    write_text(rd.path / "after_close.txt", "not recorded")
    entries = rd.manifest()
    assert ("dir", "stages") in entries and ("dir", "stages/pretrain") in entries
    assert ("file", "stages/pretrain/metrics.json") in entries and ("file", "extra.bin") in entries
    assert ("tree", "checkpoints") in entries and ("tree", "logs") in entries
    assert not any(rel == "after_close.txt" for _, rel in entries)


def test_nested_stage_run_is_cleaned_with_its_parent(tmp_path):
    parent = RunDirectory(tmp_path / "run")
    parent.prepare(overwrite=False, resume=False)
    parent.write_status(status="finished", versions={"astrotl": "0"})
    stage = RunDirectory(parent.path / "stages" / "pretrain")
    stage.prepare(overwrite=False, resume=False)
    write_text(stage.path / "report.md", "x")
    stage.close()
    parent.close()
    (stage.path / "user.txt").write_text("mine")
    RunDirectory(parent.path).clean()
    assert _tree(parent.path) == ["stages", "stages/pretrain", "stages/pretrain/user.txt"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_refuses_a_damaged_last_checkpoint(tmp_path, damage):
    rd = _fake_run(tmp_path / "run", status="interrupted")
    data = rd.last_checkpoint.read_bytes()
    rd.last_checkpoint.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                                    "empty": b""}[damage])
    before = _tree(rd.path)
    with pytest.raises(RunDirError, match=r"checkpoint '.*last\.ckpt' is damaged .*start again with --overwrite") as e:
        RunDirectory(rd.path).check(overwrite=False, resume=True)
    assert "\n" not in str(e.value) and _tree(rd.path) == before


def test_check_checkpoint_file_accepts_a_whole_one(tmp_path):
    torch.save({"a": torch.zeros(3)}, tmp_path / "x.ckpt")
    check_checkpoint_file(tmp_path / "x.ckpt")


def test_output_dir_that_is_a_file_or_a_broken_link(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(RunDirError, match="output_dir: '.*runs' is a file"):
        RunDirectory(tmp_path / "runs" / "x").check(overwrite=False, resume=False)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="broken symbolic link"):
        RunDirectory(tmp_path / "dangling").check(overwrite=False, resume=False)
    assert _tree(tmp_path) == ["dangling", "runs"]


def test_prepare_failure_is_one_line(tmp_path, monkeypatch):
    import errno
    import os
    from pathlib import Path

    real = Path.mkdir

    def full(self, *a, **k):
        if self.name == "plots":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(OutputError, match="cannot create the run directory '.*': No space left on device"):
        RunDirectory(tmp_path / "run").prepare(overwrite=False, resume=False)


def test_a_run_that_wrote_nothing_does_not_block_the_next(tmp_path):
    """A start that failed before writing a file (a full disk, a bad trainer setting) leaves only the
    manifest and empty folders: the next run may use the directory without --overwrite."""
    rd = RunDirectory(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    rd.close()
    (rd.plots / ".x.png.abcd1234.tmp.png").write_text("stale")
    rd2 = RunDirectory(rd.path)
    rd2.check(overwrite=False, resume=False)
    rd2.prepare(overwrite=False, resume=False)
    rd2.close()
    assert _tree(rd.path) == [MANIFEST, "checkpoints", "plots", "tables"]
    (rd.path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds an unfinished run"):
        RunDirectory(rd.path).check(overwrite=False, resume=False)
