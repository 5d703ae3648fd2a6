"""Weight averaging for stable model selection on small label sets: ``trainer.ema`` and ``trainer.swa``.

With a few hundred labels the validation score of the raw weights jumps from epoch to epoch, so the
"best" checkpoint is partly luck. Averaged weights move slowly: validation, checkpoints, the final model
and its predictions all use the average. Both are Lightning's own :class:`WeightAveraging` callback
(``torch.optim.swa_utils.AveragedModel`` underneath, BatchNorm statistics averaged too):

``trainer.ema: 0.99``
    exponential moving average after every optimiser step (decay per step; about ``1 / (1 - decay)``
    steps of memory: 0.99 suits runs of a few hundred steps, 0.999 long runs);
``trainer.swa: {start: 0.5}``
    equal-weight average of the weights at the end of every epoch from ``start x max_epochs`` on; until
    then validation sees the current weights.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging as _LightningEMA
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["averaging_callbacks", "SWAEpochAveraging", "EMAWeightAveraging"]


def _fitting(trainer) -> bool:
    """True inside ``trainer.fit`` (its validation epochs included); False in a later ``trainer.validate``."""
    return trainer.state.fn == TrainerFn.FITTING


class EMAWeightAveraging(_LightningEMA):
    """Lightning's EMA callback, validating with the average only during ``fit``.

    Lightning's keeps swapping its final average in at every validation epoch, also in a ``trainer.validate``
    after ``fit``: the engine's post-training validation (``best_val_*`` in metrics.json and the report) then
    scored the *last* average instead of the loaded best checkpoint. Same class name, so checkpoints resume.
    """

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if _fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if _fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)


class SWAEpochAveraging(WeightAveraging):
    """Equal-weight average of the weights at the end of each epoch from ``start_epoch`` on.

    Before the first update the averaged model is only a copy of the initial weights, so validation
    and checkpoints use the current weights until averaging has started.
    """

    def __init__(self, start_epoch: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.start_epoch = int(start_epoch)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return epoch_idx is not None and epoch_idx >= self.start_epoch

    def _started(self) -> bool:
        m = self._average_model
        return m is not None and int(m.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self._started() and _fitting(trainer)
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if getattr(self, "_swapped", False):
            self._swap_models(pl_module)
        self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self._started():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._started():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)


def averaging_callbacks(trainer_cfg) -> list[Callback]:
    """The weight-averaging callbacks ``trainer.ema`` / ``trainer.swa`` ask for (none by default)."""
    out: list[Callback] = []
    if getattr(trainer_cfg, "ema", None) and getattr(trainer_cfg, "swa", None) is not None:
        from .errors import ConfigError

        raise ConfigError("trainer.ema and trainer.swa are both set; choose one way of averaging the weights")
    if getattr(trainer_cfg, "ema", None):
        out.append(EMAWeightAveraging(decay=float(trainer_cfg.ema)))
    swa = getattr(trainer_cfg, "swa", None)
    if swa is not None:
        start = max(0, int(round(swa.start * trainer_cfg.max_epochs)) - 1)
        out.append(SWAEpochAveraging(start_epoch=start))
    return out
