"""After ``fit``, ``trainer.validate`` scores the module's weights (the loaded best checkpoint), not the last average.

Lightning's own EMA callback swaps its final average in at every validation epoch, also in a validation after
training, so the engine's post-training validation (``best_val_*``, the report's best-checkpoint score) measured the
last averaged weights while the test predictions used the best checkpoint's (GZ1: report 0.5344, checkpoint 0.5357).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch


class _Lin(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_w", self.lin.weight.sum())  # what the validation saw: the weights themselves

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_validate_after_fit_scores_the_loaded_weights_not_the_average(kind):
    from astrotl.averaging import averaging_callbacks
    from astrotl.config import TrainerConfig

    torch.set_num_threads(1)
    cfg = TrainerConfig(ema=0.9, max_epochs=3) if kind == "ema" else TrainerConfig(swa={"start": 0.5}, max_epochs=3)
    model = _Lin()
    trainer = L.Trainer(max_epochs=3, callbacks=averaging_callbacks(cfg), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, _loader(), _loader())
    # "load the best checkpoint": weights that are neither the last average nor the raw weights
    with torch.no_grad():
        model.lin.weight.fill_(0.25)
    seen = trainer.validate(model, _loader(), verbose=False)[0]["val_w"]
    assert seen == pytest.approx(1.0)  # 4 x 0.25: the loaded weights, not the averaged model swapped in
    assert float(model.lin.weight.sum()) == pytest.approx(1.0)  # and they are still there afterwards
