"""Run a task file and kill this process (SIGKILL) at a chosen point -- for the resume tests.

    python tests/core/killrun.py TASK.yaml POINT

POINT: ``mid_epoch`` (second batch of the second epoch), ``after_checkpoint`` (start of the third
epoch, after the second epoch's checkpoint), ``final_write`` (while the outputs are being written,
with a half-written temporary file on disk).
"""

from __future__ import annotations

import os
import signal
import sys

from lightning.pytorch.callbacks import Callback


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Killer(Callback):
    def __init__(self, point: str):
        self.point = point

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.point == "mid_epoch" and trainer.current_epoch == 1 and batch_idx == 1:
            _die()

    def on_train_epoch_start(self, trainer, pl_module):
        if self.point == "after_checkpoint" and trainer.current_epoch == 2:
            _die()


def main(task: str, point: str) -> None:
    import astrotl.engine as engine
    from astrotl.config import load_config
    from astrotl.plugins import load_registries

    if point == "final_write":
        real = engine.export_weights

        def half_written(asm, rundir):
            from astrotl.io import atomic_path

            with atomic_path(rundir.path / "model.safetensors") as tmp:
                tmp.write_bytes(b"\0" * 4096)  # a half-written file, then the process dies
                _die()
            real(asm, rundir)

        engine.export_weights = half_written
    regs = load_registries()
    engine.run(load_config(task, regs), regs, callbacks=[Killer(point)])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
