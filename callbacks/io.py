"""Run-folder outputs written so that a crash never leaves a half-written file in place of a good one.

The file helpers live in the neutral :mod:`medcbir_io` (also used by the data caches) and are re-exported
here; :func:`run_dir` is the evaluation side's own (it needs a Trainer).
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from medcbir_io import atomic_write, merge_metrics, rewrite_json, update_json

__all__ = ["atomic_write", "merge_metrics", "rewrite_json", "run_dir", "update_json"]


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder: the logger's versioned folder when there is one, else ``default_root_dir``.

    Under DDP ``trainer.log_dir`` broadcasts from rank 0, so every rank must call this (not rank 0 only).
    """
    path = Path(trainer.log_dir or trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
