"""Explained retrieval figures (Silva et al. 2020, Fig. 3): the query, its top-k, and each one's saliency map."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from callbacks.figures import retrieval_figure, save_and_log
from callbacks.retrieval_evaluation import Neighbours
from callbacks.retrieval_grid import RetrievalGrid


class ExplainedRetrievalGrid(RetrievalGrid):
    """A :class:`RetrievalGrid` whose second line per query shows the method's explanation of every image
    (``pl_module.saliency_map(images) -> [B, 1, H, W]``, e.g. IG-CBIR's Deep Taylor maps) over the image.
    PNG ``<run>/figures/explained_<stage>_epoch<N>.png``, logger key ``<stage>/explained_retrieval``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not callable(getattr(pl_module, "saliency_map", None)):
            raise TypeError(f"ExplainedRetrievalGrid needs a method with saliency_map(images); "
                            f"{type(pl_module).__name__} has none")

    def on_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, nb: Neighbours) -> None:
        fig = None
        if trainer.is_global_zero:
            rows = self.rows(trainer, nb, self.choose_queries(nb), self.k)
            for row in rows:
                images = torch.stack([row.query, *row.retrieved]).to(pl_module.device)
                row.heatmaps = list(pl_module.saliency_map(images)[:, 0].cpu())
            fig = retrieval_figure(rows, nb.distance, f"{stage}: explained retrieval, {nb.query_split} queries vs "
                                   f"{nb.gallery_split}, epoch {trainer.current_epoch}")
        path = save_and_log(trainer, fig, f"explained_{stage}_epoch{trainer.current_epoch:03d}",
                            f"{stage}/explained_retrieval")
        self.last_path = str(path) if path else None
