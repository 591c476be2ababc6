"""Checkpoints that are never half-written: a crash keeps the previous good ``last.ckpt``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from callbacks.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own folder, fsync, then ``os.replace``.

    Lightning's default writes through fsspec's local transaction, whose temporary file lives in the system
    temp folder; when that is another filesystem (usual on clusters) the final move is a copy, and a kill
    during it leaves a truncated checkpoint. A rename inside one folder is atomic on POSIX filesystems.
    Use it with ``trainer.plugins: [callbacks.checkpoint_io.AtomicCheckpointIO]``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")

        def write(f):
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

        atomic_write(Path(path), write, mode="wb", suffix=".ckpt.tmp")
