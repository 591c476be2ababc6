"""SimSiam with Hounsfield-unit views for CT liver slices (Wickstrøm et al. 2022).

Chen & He (2021) SimSiam, with the CT-liver change: the two views of a slice are clipped to different HU
windows (wide [-200, 300], narrow [50, 150]) before the usual augmentations. With both windows wide the
same module is the SimSiam baseline of the paper's comparison (config ``simsiam_phantom.yaml``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.optim import sgd_with_schedule
from lightning_modules.components.views import ContrastiveViewsd


class SimSiam(RetrievalModule):
    """SimSiam-HU. The embedding for retrieval is the backbone's pooled output h (2048-d for ResNet-50).

    Loss (SimSiam eq. 1-2): L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)), D = negative cosine
    similarity, z = projector(f(x)), p = predictor(z).

    Args:
        backbone: timm model name (paper: ``resnet50``).
        pretrained: local weights file for the backbone (ImageNet init of the paper), or None.
        proj_hidden_dim / proj_dim: projector widths (paper 2048 / 2048, three layers).
        pred_hidden_dim: predictor bottleneck (paper 512).
        base_lr: lr = base_lr * global batch / 256 (paper 0.05, batch 32), unless ``lr`` is given.
        lr: explicit learning rate overriding the scaling rule.
        momentum, weight_decay: SGD (paper 0.9, 1e-4).
        lr_schedule: ``constant`` (reference code) or ``cosine`` (SimSiam paper).
        hu_windows: HU window of each view (paper: wide then narrow); ``[[-200, 300], [-200, 300]]`` is the
            SimSiam baseline.
        window_scaling: ``paper`` (each window to [0, 1]) or ``reference`` (wide-window affine for both).
        crop_scale, flip_p, jitter, jitter_p, grayscale_p: view augmentations (paper values).
    """

    search_space = "euclidean"

    def __init__(self, backbone: str = "resnet50", pretrained: Optional[str] = None,
                 proj_hidden_dim: int = 2048, proj_dim: int = 2048, pred_hidden_dim: int = 512,
                 base_lr: float = 0.05, lr: Optional[float] = None, momentum: float = 0.9,
                 weight_decay: float = 1e-4, lr_schedule: str = "constant",
                 hu_windows: Optional[List[Tuple[float, float]]] = ((-200.0, 300.0), (50.0, 150.0)),
                 window_scaling: str = "paper", crop_scale: Tuple[float, float] = (0.2, 1.0),
                 flip_p: float = 0.5, jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, pretrained)
        dim = self.backbone.num_features
        self.projector = SimSiamProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.predictor = SimSiamPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.criterion = NegativeCosineSimilarity()
        # Fail at construction, not in a dataloader worker, on a bad view configuration.
        self._views = ContrastiveViewsd(windows=hu_windows, window_scaling=window_scaling,
                                        crop_scale=crop_scale, flip_p=flip_p, jitter=tuple(jitter),
                                        jitter_p=jitter_p, grayscale_p=grayscale_p)

    def view_transform(self) -> ContrastiveViewsd:
        return self._views

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        z = self.projector(self.backbone(images))
        return z, self.predictor(z)

    def simsiam_loss(self, views: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Symmetric negative-cosine loss with stop-gradient; also returns the normalised z (for std)."""
        if len(views) != 2:
            raise ValueError(f"SimSiam needs exactly 2 views per sample, got {len(views)}")
        z1, p1 = self(views[0])
        z2, p2 = self(views[1])
        loss = 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))
        return loss, torch.nn.functional.normalize(z1.detach(), dim=1)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, z = self.simsiam_loss(batch["views"])
        bs = z.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        # Collapse indicator of the SimSiam paper: std of l2-normalised z, ~1/sqrt(d) when healthy, 0 when collapsed.
        self.log("train/z_std", z.std(dim=0).mean(), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        """SimSiam loss on augmented views of held-out slices (retrieval metrics come from the callback)."""
        if "views" in batch:
            loss, z = self.simsiam_loss(batch["views"])
            self.log(f"{stage}/loss", loss, batch_size=z.shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        lr = self.hparams.lr
        if lr is None:  # lr: 0 is a valid explicit value, not "unset"
            lr = self.hparams.base_lr * self.global_batch_size(32) / 256
        return sgd_with_schedule(self, lr, self.hparams.momentum, self.hparams.weight_decay,
                                 self.hparams.lr_schedule)
