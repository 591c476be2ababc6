"""Optimiser recipes shared by methods."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

LR_SCHEDULES = ("constant", "cosine")


def sgd_with_schedule(module: pl.LightningModule, lr: float, momentum: float, weight_decay: float,
                      schedule: str = "constant"):
    """SGD with momentum and either a constant lr or a per-epoch cosine decay to 0 over ``max_epochs``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"model.lr_schedule={schedule!r}: expected one of {LR_SCHEDULES}")
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if schedule == "constant":
        return opt
    epochs = max(1, module.trainer.max_epochs or 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
