"""Keep large freed blocks in the process instead of handing them back to the kernel (glibc only).

glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB at start, adapting upwards) with a fresh
``mmap`` and returns them with ``munmap`` when freed. A forward pass allocates activations of several MB
(a ResNet-18 at batch 256 and 32 px: 17 MB for the first feature map); when other work between forward
passes (cutting stamps, building the output rows) keeps the threshold from adapting, every forward pass
maps fresh pages and takes a page fault per 4 KiB of them. Measured with ``benchmarks/predict_throughput.py
--members 10`` on an idle machine: predict delivered 0.869 of the raw forward rate (its forward passes ran
9 % slower than the same models on a batch held in memory), and 0.959 with large blocks kept
(benchmarks/README.md). Training has the same pattern (forward, backward, optimiser step, then the next
batch): ``benchmarks/train_throughput.py --data-from fits`` on an idle machine gave 206 images per CPU-second
through the engine against 224 for the raw step, and 228.5 against 235 with large blocks kept. ``predict``
and the engine's fit loop (:meth:`astrotl.engine.TaskModule.on_fit_start`) call it.

:func:`keep_large_allocations` fixes the mmap threshold at 32 MiB (the ceiling glibc's own adaptive threshold
reaches on 64-bit systems) and raises the trim threshold, so freed activation memory is reused by the next batch. It does nothing (and returns False) on
other C libraries or systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX (its adaptive ceiling) on 64-bit systems
TRIM_THRESHOLD = 256 * 1024 * 1024


@functools.cache
def keep_large_allocations() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when both were accepted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD,
              "set" if ok else "refused")
    return ok


__all__ = ["keep_large_allocations"]
