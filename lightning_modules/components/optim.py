"""Optimiser recipes shared by methods."""
from __future__ import annotations

from typing import List

import pytorch_lightning as pl
import torch
from lightly.utils.lars import LARS

LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("sgd", "lars")


def check_optimizer(name: str) -> str:
    """``name`` if it is a known optimiser (config key ``model.optimizer``), else a ValueError."""
    if name not in OPTIMIZERS:
        raise ValueError(f"model.optimizer={name!r}: expected one of {OPTIMIZERS}")
    return name


def decay_groups(module: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Parameter groups with weight decay on weights only: biases, norm layers and scalars (e.g. GeM's p)
    get none, which also excludes them from LARS' layer-wise scaling (the SimCLR / BYOL convention)."""
    params = [p for p in module.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim > 1]
    others = [p for p in params if p.ndim <= 1]
    return [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def optimizer_with_schedule(module: pl.LightningModule, optimizer: str, lr: float, momentum: float,
                            weight_decay: float, schedule: str = "constant"):
    """``sgd`` (weight decay on every parameter) or ``lars`` (lightly's LARS, You et al. 2017, with
    :func:`decay_groups`), with a constant lr or a per-epoch cosine decay to 0 over ``max_epochs``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"model.lr_schedule={schedule!r}: expected one of {LR_SCHEDULES}")
    if check_optimizer(optimizer) == "sgd":
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = LARS(decay_groups(module, weight_decay), lr=lr, momentum=momentum)
    if schedule == "constant":
        return opt
    epochs = max(1, module.trainer.max_epochs or 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def sgd_with_schedule(module: pl.LightningModule, lr: float, momentum: float, weight_decay: float,
                      schedule: str = "constant"):
    """SGD with momentum and either a constant lr or a per-epoch cosine decay to 0 over ``max_epochs``."""
    return optimizer_with_schedule(module, "sgd", lr, momentum, weight_decay, schedule)
