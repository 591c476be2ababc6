"""Throughput options that are configuration, not method code."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class ChannelsLast(Callback):
    """Puts the module's 4-D weights in ``torch.channels_last`` memory format at setup (faster convolutions
    with tensor cores under bf16/16-mixed precision). Inputs need no change: convolutions with channels-last
    weights produce channels-last outputs."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
