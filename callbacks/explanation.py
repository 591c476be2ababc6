"""Explanations of the representation (RELAX) during training: relevance rank accuracy and figures.

Wickstrøm et al. 2022 explain CT-liver embeddings with RELAX and report, per epoch, how much of the
explanation falls on the liver: relevance rank accuracy (RR, docs/metrics.md) against the organ mask.
"""
from __future__ import annotations

from typing import List, Optional

import pytorch_lightning as pl
import torch

from callbacks.distributed import eval_mode, gather_by_index
from callbacks.explanation_metrics import relevance_rank_accuracy
from callbacks.figures import retrieval_figure, save_and_log, spread
from callbacks.io import merge_metrics, run_dir
from callbacks.provenance import model_epoch
from callbacks.retrieval_evaluation import Neighbours
from callbacks.retrieval_grid import AfterRetrievalEvaluation
from lightning_modules.components.relax import RELAX


class ExplanationEvaluation(AfterRetrievalEvaluation):
    """RELAX on ``embed()``: ``<stage>/RR`` on up to ``n_images`` query-split images that contain the organ,
    and an explained retrieval figure (query + top-``figure_k`` with RELAX heatmaps) for ``figure_queries``
    queries, every ``every_n_epochs`` (and in ``validate`` / ``test``). Works for any method.

    Args:
        num_masks, mask_batch_size, grid_size, keep_prob, fill_value, max_shift, seed: RELAX (paper: 3000
            masks in batches of 100, 7x7 grid, p = 0.5, fill 0; ``max_shift=6`` reproduces the reference code).
        n_images: images scored for RR (evenly spread over those with a non-empty mask); None = all.
        mask_key: sample key of the organ mask (CT liver: ``mask`` = labels 1 and 2).
        figure_queries, figure_k: rows and retrieved images of the explained retrieval figure (0 = none).

    RR images are sharded over DDP ranks and gathered by index, so the value does not depend on the world
    size. Images whose mask is empty are never selected; their count in the split is logged in metrics.json.
    """

    def __init__(self, num_masks: int = 3000, mask_batch_size: int = 100, grid_size: int = 7,
                 keep_prob: float = 0.5, fill_value: float = 0.0, max_shift: int = 0, seed: int = 0,
                 n_images: Optional[int] = 50, mask_key: str = "mask", figure_queries: int = 3,
                 figure_k: int = 5, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.relax = RELAX(num_masks=num_masks, mask_batch_size=mask_batch_size, grid_size=grid_size,
                           keep_prob=keep_prob, fill_value=fill_value, max_shift=max_shift, seed=seed)
        self.n_images, self.mask_key = n_images, mask_key
        self.figure_queries, self.figure_k = figure_queries, figure_k
        self.last_figure: Optional[str] = None

    def explain(self, pl_module: pl.LightningModule, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """RELAX importance [H, W] of each image (one image per call: memory = mask batch x image)."""
        with eval_mode(pl_module):
            return [self.relax.explain(pl_module.embed, img.unsqueeze(0).to(pl_module.device)).importance[0].cpu()
                    for img in images]

    def organ_images(self, dataset) -> tuple[List[int], int]:
        """Positions of images with a non-empty mask (evenly spread, at most n_images), and the empty count."""
        has_organ = []
        for i in range(len(dataset)):
            mask = dataset[i].get(self.mask_key)
            if mask is None:
                raise KeyError(f"ExplanationEvaluation needs the sample key {self.mask_key!r} (organ mask) for RR; "
                               f"this dataset's samples have {sorted(dataset[i])}")
            if mask.sum() > 0:
                has_organ.append(i)
        chosen = has_organ if self.n_images is None else [has_organ[j] for j in spread(len(has_organ),
                                                                                        self.n_images)]
        return chosen, len(dataset) - len(has_organ)

    def relevance_rank(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict:
        dataset = trainer.datamodule.retrieval_dataset(split)
        chosen, n_empty = self.organ_images(dataset)
        mine = chosen[trainer.global_rank::trainer.world_size]
        samples = [dataset[i] for i in mine]
        heat = self.explain(pl_module, [s["image"] for s in samples])
        if samples:
            masks = torch.stack([s[self.mask_key].reshape(s[self.mask_key].shape[-2:]) for s in samples])
            values, _ = relevance_rank_accuracy(torch.stack(heat), masks)
        else:
            values = torch.zeros(0, dtype=torch.float64)
        gathered = gather_by_index(trainer, {"index": torch.tensor(mine, dtype=torch.long), "rr": values})
        assert gathered["index"].tolist() == chosen, "RR images were lost across ranks"
        rr = float(gathered["rr"].mean()) if len(chosen) else float("nan")
        return {"RR": rr, "RR_n_images": len(chosen), "RR_n_without_organ": n_empty}

    def explained_figure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str,
                         nb: Neighbours) -> None:
        fig = None
        if trainer.is_global_zero and self.figure_queries > 0:
            rows = self.rows(trainer, nb, spread(nb.indices.shape[0], self.figure_queries), self.figure_k)
            for row in rows:
                row.heatmaps = self.explain(pl_module, [row.query, *row.retrieved])
            fig = retrieval_figure(rows, nb.distance, f"{stage}: RELAX explanations of the query and its top-"
                                   f"{self.figure_k} ({self.relax.num_masks} masks), epoch {model_epoch(trainer)}")
        path = save_and_log(trainer, fig, f"explained_retrieval_{stage}_epoch{model_epoch(trainer):03d}",
                            f"{stage}/explained_retrieval")
        self.last_figure = str(path) if path else None

    def on_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, nb: Neighbours) -> None:
        scores = self.relevance_rank(trainer, pl_module, nb.query_split)
        if scores["RR_n_images"]:
            pl_module.log(f"{stage}/RR", scores["RR"], on_epoch=True, sync_dist=False, batch_size=1)
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            merge_metrics(folder / "metrics.json", stage, {f"{stage}/{k}": v for k, v in scores.items()})
        self.explained_figure(trainer, pl_module, stage, nb)
