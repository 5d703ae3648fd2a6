"""SIGINT and SIGTERM end a run cleanly: a status, one line, a conventional exit code.

Documented behaviour (``astrotl run`` and every other command)::

    $ astrotl run tasks/x.yaml        # Ctrl-C, or `kill <pid>`, or a batch system's SIGTERM
    astrotl: interrupted by SIGTERM; continue the run with --resume
    $ echo $?
    143                               # 130 for SIGINT (128 + the signal number, as shells report it)

and ``run.json`` says ``"status": "interrupted"`` with the signal's name. No traceback, no
half-written file (the atomic writers remove their temporary file), and the last whole checkpoint
stays for ``--resume``.

How it works: :func:`interruptible` installs handlers that raise :class:`RunInterrupted` in the main
thread. ``RunInterrupted`` derives from :class:`BaseException`, not from ``Exception`` and not from
``KeyboardInterrupt``, because

* Lightning turns a ``KeyboardInterrupt`` inside ``trainer.fit`` into ``sys.exit(1)`` (the silent
  "exit 1" of issue 8) but re-raises any other ``BaseException`` after its own teardown;
* a broad ``except Exception`` (in a plugin, a data loader, the engine's "failed" branch) must not
  swallow it or record the run as failed.

Lightning's own SIGTERM handling (``trainer.received_sigterm`` and a ``SIGTERMException`` that
exits with code 0) keeps running first: it chains the handler that was installed before it, so the
handler here still raises.

A second signal while astrotl is stopping (writing the status) is ignored, as Lightning does;
``kill -9`` stops it at once. In a forked child (a DataLoader worker) the handler does what the
default would: ``KeyboardInterrupt`` for SIGINT (the worker loop exits quietly), the default action
for SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = ["RunInterrupted", "interruptible", "exit_code"]

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The exit code of a process stopped by ``signum``, as shells report it: 128 + the signal number."""
    return 128 + int(signum)


class RunInterrupted(BaseException):  # noqa: N818 -- reads as what happened, like KeyboardInterrupt
    """A run was stopped by a signal. ``signum``, ``signame`` (``"SIGTERM"``), ``exit_code`` (143)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


@contextlib.contextmanager
def interruptible(signals: tuple[int, ...] = DEFAULT_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`RunInterrupted` in the main thread; the previous
    handlers are restored on exit. Outside the main thread (where Python cannot set handlers) it
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()
    fired: list[int] = []

    def handler(signum, frame):
        if os.getpid() != pid:  # a forked child (DataLoader worker) inherited this handler
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if fired:  # already stopping: let the status be written
            log.debug("ignoring %s: already stopping after %s", signal.Signals(signum).name,
                      signal.Signals(fired[0]).name)
            return
        fired.append(signum)
        raise RunInterrupted(signum)

    previous = {s: signal.getsignal(s) for s in signals}
    try:
        for s in signals:
            signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
