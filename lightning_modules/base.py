"""Base class of every retrieval method: the ``embed()`` contract used by evaluation and prediction."""
from __future__ import annotations

from typing import Callable, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

SEARCH_SPACES = ("cosine", "euclidean", "hamming")


class RetrievalModule(pl.LightningModule):
    """A method = a LightningModule exposing ``embed(images) -> Tensor[B, D]`` and its ``search_space``.

    The retrieval callback, the prediction writer and the explainers only use :meth:`embed`; training
    logic stays in the subclass. ``view_transform()`` returns the method's training views (a dict transform
    the DataModule applies in its workers) or None for methods trained on plain images.
    """

    search_space: str = "cosine"
    needs_checkpoint: bool = True  # False: nothing to learn, so validate / test / predict need no --ckpt_path

    def embed(self, images: Tensor) -> Tensor:
        """Retrieval embedding of a batch of images, shape [B, D]."""
        raise NotImplementedError

    def view_transform(self) -> Optional[Callable[[dict], dict]]:
        return None

    def global_batch_size(self, fallback: int) -> int:
        """Images per optimiser step over all processes (for the linear lr scaling rule)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        per_device = getattr(dm, "batch_size", fallback)
        if self._trainer is None:
            return per_device
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Stamp the project's checkpoint format (read back by ``components.checkpoints.check_format``)."""
        from lightning_modules.components.checkpoints import CHECKPOINT_FORMAT

        checkpoint["medcbir_format"] = CHECKPOINT_FORMAT

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Embeddings with the identifiers needed to re-analyse them (index, label, patient id)."""
        out = {"embedding": self.embed(batch["image"]).float(), "index": batch["index"]}
        for key in ("label", "patient_id"):
            if key in batch:
                out[key] = batch[key]
        return out
