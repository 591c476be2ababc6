"""The SSIM retrieval baseline of IG-CBIR (Silva et al. 2020): rank the catalogue by SSIM to the query.

SSIM is a score between two raw images, not an embedding: the module's ``embed()`` returns the grey image
in 0..255 (its per-item representation) and ``pairwise_score`` the SSIM matrix, which the shared evaluation
scans block by block (``search_space = "pairwise"``, ``callbacks.pairwise``). Nothing is trained.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.ssim import ssim_matrix


class SSIMBaseline(RetrievalModule):
    """SSIM between raw images (scikit-image ``structural_similarity`` defaults: 7 x 7 uniform window,
    ``data_range`` 255), higher = more similar.

    Args:
        win_size: side of the uniform window (paper: skimage default 7).
        data_range: dynamic range of the images (8-bit: 255).
    """

    search_space = "pairwise"
    needs_checkpoint = False  # nothing is trained: evaluations need no --ckpt_path

    def __init__(self, win_size: int = 7, data_range: float = 255.0):
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("_dummy", torch.zeros(()))  # gives the module a device

    def embed(self, images: Tensor) -> Tensor:
        """Grey images [B, H, W] in 0..255 (the mean of the replicated channels, scaled from [0, 1])."""
        return images.float().mean(1) * 255.0

    def pairwise_score(self, queries: Tensor, gallery: Tensor) -> Tensor:
        return ssim_matrix(queries, gallery, self.hparams.win_size, self.hparams.data_range)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        return None  # nothing to train

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None  # metrics come from the retrieval callback

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def configure_optimizers(self):
        return None
