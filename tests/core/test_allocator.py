"""astrotl.allocator: glibc keeps large freed blocks for the next forward pass (see benchmarks/README.md)."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest

from astrotl.allocator import MMAP_THRESHOLD, keep_large_allocations


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_accepted_and_set_once():
    keep_large_allocations.cache_clear()
    assert keep_large_allocations() is True
    assert keep_large_allocations() is True  # cached: set once per process
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, MMAP_THRESHOLD) == 1  # the value is one glibc takes


def test_other_systems_are_left_alone(monkeypatch):
    keep_large_allocations.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert keep_large_allocations() is False
    finally:
        keep_large_allocations.cache_clear()


def test_predict_sets_them(monkeypatch):
    """predict's loop asks for the thresholds before its first forward pass."""
    import astrotl.allocator as allocator
    import astrotl.predict as predict

    calls = []
    monkeypatch.setattr(allocator, "keep_large_allocations", lambda: calls.append(1) or True)
    with pytest.raises(IndexError):  # no members: stops right after the call
        next(predict._block_tables([], [], None, 0, 0, batch_size=1, dev="cpu", chunk=None))
    assert calls == [1]


def test_training_sets_them(monkeypatch, tmp_path, _cache_dir):
    """The engine's fit loop asks for them too (every process of a run, before its first training step)."""
    import yaml

    import astrotl.allocator as allocator
    from astrotl.cli import main
    from testutils import TINY

    calls = []
    monkeypatch.setattr(allocator, "keep_large_allocations", lambda: calls.append(1) or True)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, output_dir=str(tmp_path / "runs"))))
    assert main(["-q", "run", str(p)]) == 0
    assert calls == [1]
