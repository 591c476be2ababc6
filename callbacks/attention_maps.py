"""Attention maps beside retrieval results: the query, its top-k, and each image's attention map S overlaid."""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch

from callbacks.distributed import eval_mode
from callbacks.figures import retrieval_figure, save_and_log, spread
from callbacks.retrieval_evaluation import Neighbours
from callbacks.retrieval_grid import AfterRetrievalEvaluation


class AttentionMapFigure(AfterRetrievalEvaluation):
    """Every ``every_n_epochs``: ``n_queries`` fixed queries (evenly spread) with their top-``k``, framed by
    relevance, and below them the module's ``attention_maps(images) -> [B, H, W]`` overlaid (attention hashing:
    the last block's S). PNG ``<run>/figures/attention_<stage>_epochNNN.png`` and key ``<stage>/attention_maps``
    in W&B / TensorBoard. Does nothing for modules without attention (``attention_maps`` missing or None)."""

    def __init__(self, n_queries: int = 3, k: int = 5, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.n_queries, self.k = n_queries, k
        self.last_path: Optional[str] = None

    def on_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, nb: Neighbours) -> None:
        maps_of = getattr(pl_module, "attention_maps", None)
        fig = None
        if trainer.is_global_zero and callable(maps_of):
            rows = self.rows(trainer, nb, spread(nb.indices.shape[0], self.n_queries), self.k)
            with eval_mode(pl_module), torch.no_grad():
                for row in rows:
                    maps = maps_of(torch.stack([row.query, *row.retrieved]).to(pl_module.device))
                    row.heatmaps = None if maps is None else list(maps.float().cpu())
            if all(r.heatmaps is not None for r in rows):
                fig = retrieval_figure(rows, nb.distance, f"{stage}: attention maps S of the query and its top-"
                                       f"{self.k}, epoch {trainer.current_epoch}")
        path = save_and_log(trainer, fig, f"attention_{stage}_epoch{trainer.current_epoch:03d}",
                            f"{stage}/attention_maps")
        self.last_path = str(path) if path else None
