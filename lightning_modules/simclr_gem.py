"""SimCLR with GeM pooling for lesion search, stage 1: self-supervised pre-training (Qi, Cheng & Haehn 2023,
"Lesion search with self-supervised learning", arXiv:2311.11014).

SimCLR (Chen et al. 2020) on DeepLesion lesion crops, with the encoder of :class:`GeMEncoder` (ResNet-18
feature map, two extra conv layers, GeM pooling with learnable p, L2 normalisation). Stage 2 (margin-loss
fine-tuning) is :class:`lightning_modules.simclr_gem_finetune.SimCLRGeMFinetune`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.gem_encoder import GeMEncoder
from lightning_modules.components.optim import check_optimizer, optimizer_with_schedule
from lightning_modules.components.views import ContrastiveViewsd


class SimCLRGeM(RetrievalModule):
    """SimCLR-GeM. The embedding for retrieval is the encoder's unit-norm GeM descriptor h (cosine search).

    Loss (SimCLR eq. 1, NT-Xent): for the 2N views of a batch and the positive pair (i, j),
    l(i, j) = -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t), sim = cosine,
    z = g(h) the projection head output, averaged over all 2N ordered positive pairs (lightly's
    ``NTXentLoss``).

    Args:
        backbone: timm CNN name (paper: ``resnet18``).
        pretrained: local weights file for the backbone, or None (random init).
        extra_channels: widths of the two extra 3x3 conv-BN-ReLU layers after the backbone.
        small_stem: 3x3 stride-1 ResNet stem (authors' code; 4x4 map for GeM at 64 px) instead of timm's 7x7 stride 2.
        gem_p: initial GeM exponent (paper 3); learn_gem_p: learn it (paper: yes).
        proj_hidden_dim / proj_dim: SimCLR projection head g widths (Linear-BN-ReLU-Linear).
        temperature: NT-Xent temperature t (reference code 0.1).
        gather_distributed: gather negatives from every process in DDP (no effect on one process).
        optimizer: ``lars`` (paper; lightly's LARS, no weight decay nor layer-wise scaling on biases, norm
            layers and GeM's p) or ``sgd``.
        lr, momentum, weight_decay: paper lr 0.05, weight decay 1e-5; momentum 0.9 (SimCLR).
        lr_schedule: ``cosine`` (paper, per epoch to 0 over ``trainer.max_epochs``; paper 1000 epochs) or
            ``constant``.
        trust_coefficient, warmup_epochs: LARS eta (SimCLR / lightly 0.001) and linear warm-up epochs (SimCLR
            10; the lesion paper gives none). With eta 0.001 a step moves a conv weight by ~lr * 1e-3 of its
            norm: short runs need ``optimizer: sgd`` (phantom configs) or a SimCLR-size lr.
        hu_windows: None = views from ``image``; else two HU windows [low, high], one per view, computed
            from the crop's ``hu`` (each window scaled to [0, 1]).
        crop_scale, flip_p, jitter, jitter_p, grayscale_p, blur_p, blur_sigma: SimCLR augmentations (random
            resized crop, flip, colour distortion of strength 1, Gaussian blur with sigma in [0.1, 2]).
    """

    search_space = "cosine"

    def __init__(self, backbone: str = "resnet18", pretrained: Optional[str] = None,
                 extra_channels: Sequence[int] = (512, 512), gem_p: float = 3.0, learn_gem_p: bool = True,
                 small_stem: bool = False,
                 proj_hidden_dim: int = 512, proj_dim: int = 128, temperature: float = 0.1,
                 gather_distributed: bool = True, optimizer: str = "lars", lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 1e-5, lr_schedule: str = "cosine",
                 trust_coefficient: float = 0.001, warmup_epochs: int = 0,
                 hu_windows: Optional[List[Tuple[float, float]]] = None,
                 crop_scale: Tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5,
                 jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_p: float = 0.5, blur_sigma: Tuple[float, float] = (0.1, 2.0)):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer(optimizer)
        if hu_windows is not None and len(hu_windows) != 2:
            raise ValueError(f"model.hu_windows={hu_windows!r}: SimCLR needs exactly 2 windows (one per view)")
        self.encoder = GeMEncoder(backbone, pretrained, extra_channels, gem_p, learn_gem_p, small_stem=small_stem)
        self.projector = SimCLRProjectionHead(self.encoder.num_features, proj_hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
        # Fail at construction, not in a dataloader worker, on a bad view configuration.
        self._views = ContrastiveViewsd(windows=hu_windows, crop_scale=crop_scale, flip_p=flip_p,
                                        jitter=tuple(jitter), jitter_p=jitter_p, grayscale_p=grayscale_p,
                                        blur_p=blur_p, blur_sigma=blur_sigma)

    def view_transform(self) -> ContrastiveViewsd:
        return self._views

    def embed(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, images: Tensor) -> Tensor:
        """Projection z = g(h) used by the contrastive loss."""
        return self.projector(self.encoder(images))

    def simclr_loss(self, views: Sequence[Tensor]) -> Tensor:
        """NT-Xent between the projections of the two views of each sample."""
        if len(views) != 2:
            raise ValueError(f"SimCLR needs exactly 2 views per sample, got {len(views)}")
        return self.criterion(self(views[0]), self(views[1]))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.simclr_loss(batch["views"])
        bs = batch["views"][0].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/gem_p", self.encoder.pool.p.detach(), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        """NT-Xent on augmented views of held-out crops (retrieval metrics come from the callback)."""
        if "views" in batch:
            loss = self.simclr_loss(batch["views"])
            self.log(f"{stage}/loss", loss, batch_size=batch["views"][0].shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        h = self.hparams
        return optimizer_with_schedule(self, h.optimizer, h.lr, h.momentum, h.weight_decay, h.lr_schedule,
                                       h.trust_coefficient, h.warmup_epochs)
