"""AtomicCheckpointIO: checkpoints are whole or absent; damaged ones fail with one line."""

from __future__ import annotations

import errno
import io
import os
import pickle
import signal

import pytest
import torch

from astrotl import checkpointing
from astrotl.checkpointing import AtomicCheckpointIO, load_model_state, save_checkpoint_file
from astrotl.errors import OutputError, RunDirError
from astrotl.signals import RunInterrupted


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _ckpt(n=1000):
    return {"state_dict": {"w": torch.arange(n, dtype=torch.float32)}, "epoch": 1}


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""

    room = 200

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_save_then_load(tmp_path):
    cio = AtomicCheckpointIO()
    cio.save_checkpoint(_ckpt(), tmp_path / "ck" / "last.ckpt")
    assert _tree(tmp_path) == ["ck", "ck/last.ckpt"]
    assert torch.equal(cio.load_checkpoint(tmp_path / "ck" / "last.ckpt")["state_dict"]["w"], _ckpt()["state_dict"]["w"])
    assert set(load_model_state(tmp_path / "ck" / "last.ckpt")) == {"w"}


def test_full_disk_keeps_the_old_checkpoint_and_no_temp(tmp_path, monkeypatch):
    dest = tmp_path / "best.ckpt"
    save_checkpoint_file(_ckpt(10), dest)
    old = dest.read_bytes()
    monkeypatch.setattr(checkpointing, "open", lambda p, mode: _FullDisk(p, "w"), raising=False)
    with pytest.raises(OutputError, match=r"cannot write '.*best\.ckpt': No space left on device; the disk is full") as e:
        AtomicCheckpointIO().save_checkpoint(_ckpt(100000), dest)
    assert "\n" not in str(e.value)
    assert dest.read_bytes() == old and _tree(tmp_path) == ["best.ckpt"]


def test_rename_failure_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    dest = tmp_path / "last.ckpt"
    save_checkpoint_file(_ckpt(10), dest)
    old = dest.read_bytes()

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", enospc)
    with pytest.raises(OutputError, match="disk is full"):
        save_checkpoint_file(_ckpt(), dest)
    assert dest.read_bytes() == old and _tree(tmp_path) == ["last.ckpt"]


def test_interrupt_during_save_leaves_no_temp(tmp_path, monkeypatch):
    def interrupted(obj, f, *a, **k):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_file(_ckpt(), tmp_path / "last.ckpt")
    assert _tree(tmp_path) == []


class _SigtermMidWrite(io.FileIO):
    """A file whose write is interrupted by SIGTERM (astrotl's handler raises RunInterrupted) after 200 bytes."""

    def write(self, data):
        if self.tell() + len(data) > 200:
            raise RunInterrupted(signal.SIGTERM)
        return super().write(data)


def test_sigterm_inside_torch_save_stays_an_interrupt(tmp_path, monkeypatch):
    # torch's zip writer turns an exception raised inside write() into RuntimeError("unexpected pos");
    # the interrupt must come out as itself, so the run (or a compare cell) is "interrupted", not "failed"
    dest = tmp_path / "last.ckpt"
    save_checkpoint_file(_ckpt(10), dest)
    old = dest.read_bytes()
    monkeypatch.setattr(checkpointing, "open", lambda p, mode: _SigtermMidWrite(p, "w"), raising=False)
    with pytest.raises(RunInterrupted):
        AtomicCheckpointIO().save_checkpoint(_ckpt(100000), dest)
    assert dest.read_bytes() == old and _tree(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_damaged_checkpoint_is_one_line(tmp_path, damage):
    f = tmp_path / "last.ckpt"
    save_checkpoint_file(_ckpt(), f)
    data = f.read_bytes()
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes({"truncated": data[: len(data) // 3], "garbage": os.urandom(500), "empty": b""}[damage])
    with pytest.raises(RunDirError, match=r"checkpoint '.*last\.ckpt' .*start again with --overwrite") as e:
        AtomicCheckpointIO().load_checkpoint(f)
    assert "\n" not in str(e.value)
    with pytest.raises(RunDirError):
        load_model_state(f)


def test_zip_with_bad_contents_is_damaged(tmp_path):
    import zipfile

    f = tmp_path / "last.ckpt"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02not really a pickle")
    with pytest.raises(RunDirError, match="is damaged"):
        AtomicCheckpointIO().load_checkpoint(f)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo never",))


def test_checkpoint_that_would_run_code_is_refused_as_such(tmp_path):
    f = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "evil": _RunsCode()}, f, pickle_module=pickle)
    with pytest.raises(RunDirError, match="would execute code") as e:
        AtomicCheckpointIO().load_checkpoint(f)
    assert "weights_only" not in str(e.value) and "truncated" not in str(e.value)


def test_with_a_lightning_trainer(tmp_path):
    """Lightning saves best/last through the plugin (no temp files left) and resumes from it; a damaged
    last.ckpt stops the resume with one line."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    def trainer(epochs):
        ck = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best", monitor=None,
                             save_last=True, enable_version_counter=False)
        return L.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ck],
                         plugins=[AtomicCheckpointIO()], accelerator="cpu", devices=1)

    t = trainer(1)
    t.fit(BoringModel())
    assert _tree(tmp_path) == ["checkpoints", "checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    t = trainer(2)
    t.fit(BoringModel(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert t.current_epoch == 2
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(RunDirError, match="is damaged"):
        trainer(3).fit(BoringModel(), ckpt_path=last)


def test_numpy_random_states_in_a_checkpoint_load(tmp_path):
    """Resume state may hold numpy data (np.random.get_state(), arrays, scalars): data, not code."""
    import numpy as np

    f = tmp_path / "last.ckpt"
    state = np.random.get_state()
    save_checkpoint_file({"state_dict": {}, "np_rng": state, "arr": np.arange(3.0), "x": np.float32(2)}, f)
    got = AtomicCheckpointIO().load_checkpoint(f)
    assert got["np_rng"][0] == "MT19937" and np.array_equal(got["np_rng"][1], state[1])
    assert np.array_equal(got["arr"], np.arange(3.0)) and got["x"] == 2


def test_engine_writes_last_ckpt_every_epoch_even_when_the_metric_got_worse(tmp_path):
    """``--resume`` continues from the latest epoch: the engine's last.ckpt is rewritten at every epoch,
    not only at the epochs that improved the monitored metric (Lightning's save_last does the latter)."""
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    from astrotl.config import load_config
    from astrotl.engine import make_trainer
    from astrotl.plugins import load_registries
    from testutils import TINY

    import yaml

    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({**TINY, "trainer": {**TINY["trainer"], "max_epochs": 3, "monitor": "val_score"}}))
    cfg = load_config(p, load_registries(), [])

    class Worse(BoringModel):  # the monitored score falls every epoch: only epoch 0 is the best
        def validation_step(self, batch, batch_idx):
            self.log("val_score", torch.tensor(1.0 / (1 + self.current_epoch)))
            return super().validation_step(batch, batch_idx)

    task = SimpleNamespace(monitor="val_loss", monitor_mode="min")
    trainer = make_trainer(cfg, None, task, [], tmp_path / "checkpoints")
    trainer.limit_train_batches, trainer.limit_val_batches = 2, 1
    trainer.fit(Worse())
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert best["epoch"] == 0
    assert last["epoch"] == 2
    assert trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")
    assert sorted(x.name for x in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
