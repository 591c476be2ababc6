"""``predict`` output: the embeddings of a split, with their identifiers, in the run folder."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from callbacks.distributed import gather_by_index
from callbacks.io import atomic_write, run_dir
from callbacks.provenance import checkpoint_provenance


class EmbeddingWriter(BasePredictionWriter):
    """Writes ``predictions_<split>.npz`` with arrays ``embedding`` [N, D] float32, ``index`` [N] (position
    in the split's dataset), ``label`` and ``patient_id`` (when the dataset has them), sorted by index and
    de-duplicated across DDP ranks, plus 0-d arrays ``split``, ``search_space`` and the evaluated checkpoint's
    ``checkpoint_path``, ``checkpoint_sha256``, ``checkpoint_epoch``, ``checkpoint_global_step`` (empty strings
    for untrained weights). Load with
    ``np.load(path)`` and evaluate with ``callbacks.evaluate_retrieval``.
    """

    def __init__(self, filename: str = "predictions_{split}.npz"):
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        if predictions and isinstance(predictions[0], list):  # several predict dataloaders
            predictions = [p for group in predictions for p in group]
        local = {k: torch.cat([torch.as_tensor(p[k]) for p in predictions]) for k in predictions[0]}
        split = getattr(trainer.datamodule, "predict_split", "predict")
        expected = len(trainer.datamodule.retrieval_dataset(split)) if hasattr(trainer.datamodule,
                                                                               "retrieval_dataset") else None
        merged = gather_by_index(trainer, local, expected=expected)
        path = run_dir(trainer) / self.filename.format(split=split)  # collective: call on every rank
        if trainer.is_global_zero:
            arrays = {k: v.numpy() for k, v in merged.items()}
            arrays.update(split=np.array(split), search_space=np.array(getattr(pl_module, "search_space", "")))
            prov = checkpoint_provenance(trainer)
            arrays.update({f"checkpoint_{k}": np.array("" if prov.get(k) is None else prov[k])
                           for k in ("path", "sha256", "epoch", "global_step")})
            atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb", suffix=".npz")
            self.last_path = path
