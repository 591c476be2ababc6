"""``checkpoints/last.ckpt``: ONE file holding the newest full training state, for exact resume."""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Overwrites ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (mid-epoch) and at every epoch end
    (after validation when it runs), with weights, optimizer, loops and sampler position. Resume with
    ``--ckpt_path last``. One writer of one file: no ``last-v1.ckpt`` next to a best-model callback, which
    should use ``save_last: false`` (its file is ``best.ckpt``)."""

    def __init__(self, every_n_train_steps: int = 100, dirpath: Optional[str] = None):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps={every_n_train_steps}: expected >= 1")
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def _save_epoch_end(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # also skips a step saved already
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_epoch_end(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_epoch_end(trainer)
