"""SIGINT / SIGTERM: status `interrupted`, one stderr line, exit code 130 / 143 (astrotl.signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from astrotl.signals import RunInterrupted, exit_code, interruptible


@pytest.mark.parametrize("sig, name, code", [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "SIGINT", 130)])
def test_signal_becomes_run_interrupted_and_handlers_are_restored(sig, name, code):
    before = signal.getsignal(sig)
    with pytest.raises(RunInterrupted) as info:
        with interruptible():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises at the next bytecode
    assert info.value.signame == name and info.value.exit_code == code == exit_code(sig)
    assert str(info.value) == f"interrupted by {name}"
    assert signal.getsignal(sig) is before


def test_not_an_exception_nor_a_keyboard_interrupt():
    """`except Exception` (a plugin, the engine's failed branch) must not swallow it, and Lightning must
    not turn it into sys.exit(1) as it does with KeyboardInterrupt."""
    assert not issubclass(RunInterrupted, Exception) and not issubclass(RunInterrupted, KeyboardInterrupt)
    caught = None
    try:
        with interruptible():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Exception:  # noqa: BLE001
                caught = "swallowed"
    except RunInterrupted:
        caught = "propagated"
    assert caught == "propagated"


def test_second_signal_while_stopping_is_ignored():
    stopped_cleanly = False
    with pytest.raises(RunInterrupted):
        with interruptible():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            finally:  # cleanup (writing the status) survives a second Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                stopped_cleanly = True
    assert stopped_cleanly


def test_outside_the_main_thread_it_does_nothing():
    result = []

    def worker():
        with interruptible():
            result.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == [signal.getsignal(signal.SIGTERM)]


def test_cli_interrupted_in_process(cli, monkeypatch):
    """The CLI turns RunInterrupted into one line and the exit code, whatever the command."""
    from astrotl.cli import core

    def boom(args, out):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    commands = {c.COMMAND: c for c in core.COMMANDS}
    monkeypatch.setattr(commands["validate"], "run", boom)
    code, out, err = cli("validate", "x.yaml")
    assert code == 143 and err == "astrotl: interrupted by SIGTERM\n"


# -- end to end: a real run in a subprocess ---------------------------------------------------------


def _start_run(tmp_path):
    import yaml

    from testutils import TINY

    cfg = dict(TINY, name="sig", output_dir=str(tmp_path / "runs"))
    cfg["backbone"] = {"name": "timm:test_resnet", "weights": "none"}
    cfg["trainer"] = dict(TINY["trainer"], max_epochs=500, early_stopping={"enabled": False})
    p = tmp_path / "sig.yaml"
    p.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("astrotl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "astrotl"]
    proc = subprocess.Popen(cmd + ["-q", "run", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "sig"
    deadline = time.time() + 240
    while not (run / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    time.sleep(0.5)  # in the middle of a later epoch
    return proc, run


@pytest.mark.slow
@pytest.mark.parametrize("sig, name, code", [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "SIGINT", 130)])
def test_run_interrupted_by_a_signal(tmp_path, sig, name, code):
    proc, run = _start_run(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert [ln for ln in lines if ln.startswith("astrotl:")] == [
        f"astrotl: interrupted by {name}; continue the run with --resume"], err[-3000:]
    st = json.loads((run / "run.json").read_text())
    assert st["status"] == "interrupted" and st["signal"] == name
    leftovers = [p for p in run.rglob(".*") if p.name != ".astrotl-manifest"]
    assert leftovers == [], leftovers
    from astrotl.rundir import RunDirectory

    RunDirectory(run).check(overwrite=False, resume=True)  # the last checkpoint is whole: --resume may continue
