"""Progress bar that also shows what the run optimises: each monitored metric and its best value so far."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar


class RetrievalProgressBar(TQDMProgressBar):
    """Lightning's bar plus, for every ``ModelCheckpoint(monitor=...)``, the latest value of the monitored key
    and the best so far (``val/mP@5=0.712 best=0.740``). The CLI uses it in place of the default bar."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.monitor:
                continue
            current = trainer.callback_metrics.get(cb.monitor)
            if current is not None:
                items[cb.monitor] = f"{float(current):.3f}"
            if cb.best_model_score is not None:
                items[f"best {cb.monitor}"] = f"{float(cb.best_model_score):.3f}"
        return items
