"""``python -m experiments {fit,validate,test,predict} --config <yaml>``: LightningCLI in subclass mode.

The model (any ``lightning_modules`` method) and the data (any ``datamodules`` family) are chosen by
``class_path`` in the config, so every method x dataset pairing is configuration only. Configs are parsed
in omegaconf mode (``${...}`` interpolation), and the resolved config is saved as ``config.yaml`` in the
run folder (overwritten when re-running into the same folder).
"""
from __future__ import annotations

import os

from pytorch_lightning.cli import LightningCLI

from datamodules.base import RetrievalDataModule
from lightning_modules.base import RetrievalModule


class RetrievalCLI(LightningCLI):
    """LightningCLI with the project's base classes and defaults."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(RetrievalModule, RetrievalDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, seed_everything_default=0,
                         parser_kwargs={"parser_mode": "omegaconf"},
                         save_config_kwargs={"overwrite": True}, args=args, run=run)


def main(args=None) -> RetrievalCLI:
    # W&B never needs an account or a network here: offline unless the user chose otherwise.
    os.environ.setdefault("WANDB_MODE", "offline")
    return RetrievalCLI(args=args)
