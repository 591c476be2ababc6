"""Optimiser recipes shared by methods."""
from __future__ import annotations

import math
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
                            weight_decay: float, schedule: str = "constant", trust_coefficient: float = 0.001,
                            warmup_epochs: int = 0):
    """``sgd`` (weight decay on every parameter) or ``lars`` (lightly's LARS, You et al. 2017, with
    :func:`decay_groups`), with a constant lr or a per-epoch cosine decay to 0 over ``max_epochs``, after
    ``warmup_epochs`` of linear warm-up (SimCLR: 10).

    LARS scales each weight tensor's step to ``lr * trust_coefficient * |w| / |g|`` (SimCLR and lightly: eta =
    0.001), so one step moves a weight tensor by about ``lr * eta`` of its norm: 5e-5 at lr 0.05. That is why
    SimCLR uses lr = 0.3 x batch / 256 (4.8 at batch 4096) and thousands of steps; short CPU runs at lr 0.05
    would mostly adapt the non-LARS parameters (BatchNorm, biases)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"model.lr_schedule={schedule!r}: expected one of {LR_SCHEDULES}")
    if warmup_epochs < 0:
        raise ValueError(f"model.warmup_epochs={warmup_epochs}: expected >= 0")
    if check_optimizer(optimizer) == "sgd":
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = LARS(decay_groups(module, weight_decay), lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if schedule == "constant" and not warmup_epochs:
        return opt
    epochs = max(1, module.trainer.max_epochs or 1)
    if not warmup_epochs:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / warmup_epochs
            if schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def sgd_with_schedule(module: pl.LightningModule, lr: float, momentum: float, weight_decay: float,
                      schedule: str = "constant"):
    """SGD with momentum and either a constant lr or a per-epoch cosine decay to 0 over ``max_epochs``."""
    return optimizer_with_schedule(module, "sgd", lr, momentum, weight_decay, schedule)
