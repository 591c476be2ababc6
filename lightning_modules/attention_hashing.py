"""Attention hashing for chest X-ray retrieval (Öztürk et al. 2021, "Attention-based end-to-end CNN
framework for content-based X-ray image retrieval").

An attention network (``components.attention``, PF0 / PF1 / PF2 = 0 / 1 / 2 blocks) produces the attended
image; the hashing network (ResNet-18, input = original and attended image stacked, 6 channels; one fully
connected layer before the hash layer) gives K-bit codes: relaxed h = tanh(z) in training, b = sign(z)
(z >= 0 -> +1) at retrieval, searched by Hamming distance. Loss (eq. 7): 0.5 squared contrastive + 0.5
HashNet weighted pairwise likelihood (``components.hashing_losses``). Adam, lr 1e-4 x 0.6 every 4000 steps.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.attention import AttentionNetwork
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.hashing_losses import AttentionHashingLoss


class HashingNetwork(nn.Module):
    """timm backbone (pooled features) -> [Linear(fc_dim) + ReLU] -> Linear(hash_bits): pre-activation z.

    ``fc_dim`` None drops the fully connected layer (the hash layer sits on the pooled features)."""

    def __init__(self, backbone: str = "resnet18", pretrained: str | None = None, in_chans: int = 6,
                 fc_dim: int | None = 512, hash_bits: int = 64):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, in_chans=in_chans)
        width = self.backbone.num_features
        self.fc = nn.Sequential(nn.Linear(width, fc_dim), nn.ReLU(inplace=True)) if fc_dim else nn.Identity()
        self.hash = nn.Linear(fc_dim or width, hash_bits)

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (the 512-d vectors the codes replace for ResNet-18)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.hash(self.fc(self.backbone(x)))


class AttentionHashing(RetrievalModule):
    """Attention hashing (see the module docstring). ``embed`` gives the binary codes (+-1) for Hamming
    search; ``embed_variants`` adds the relaxed float codes (key ``float``, searched by Euclidean distance),
    so the retrieval callback reports ``val/P@10`` (binary) and ``val/float/P@10`` (relaxed) every epoch.

    Args:
        hash_bits: code length K (project choice 32 / 64 / 128; the paper ties no number to it).
        attention_blocks: 0 (PF0, no attention: the hashing network sees the image only), 1 (PF1), 2 (PF2).
        attention_activation: ``sigmoid`` (paper), ``tanh`` or ``elu``; attention_channels: encoder widths.
        backbone, pretrained: timm hashing backbone (paper: ImageNet ResNet-18; a local weights file here).
        fc_dim: width of the one fully connected layer before the hash layer; None = no such layer (the
            plain ResNet-18 hashing baseline).
        margin, alpha, contrastive_weight, hashnet_weight: loss (paper m = 1, alpha = 10 / K, 0.5 / 0.5).
        lr, beta1, beta2, weight_decay, lr_decay, lr_step: Adam (paper lr 1e-4, beta1 0.9) with the lr times
            ``lr_decay`` (0.6) every ``lr_step`` (4000) optimiser steps.
    """

    search_space = "hamming"
    embedding_variants = {"float": "euclidean"}

    def __init__(self, hash_bits: int = 64, attention_blocks: int = 2, attention_activation: str = "sigmoid",
                 attention_channels: Sequence[int] = (32, 32, 64, 64, 128), backbone: str = "resnet18",
                 pretrained: str | None = None, fc_dim: int | None = 512, margin: float = 1.0,
                 alpha: float | None = None, contrastive_weight: float = 0.5, hashnet_weight: float = 0.5,
                 lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 0.0,
                 lr_decay: float = 0.6, lr_step: int = 4000, in_channels: int = 3):
        super().__init__()
        if int(hash_bits) < 1 or int(hash_bits) != hash_bits:
            raise ValueError(f"model.hash_bits={hash_bits}: expected a positive integer (e.g. 32, 64, 128)")
        if fc_dim is not None and int(fc_dim) < 1:
            raise ValueError(f"model.fc_dim={fc_dim}: expected a positive width or null (no FC layer)")
        if lr_step < 1 or not 0 < lr_decay <= 1:
            raise ValueError(f"model.lr_step={lr_step}, lr_decay={lr_decay}: expected lr_step >= 1, 0 < lr_decay <= 1")
        self.save_hyperparameters()
        self.attention = AttentionNetwork(attention_blocks, in_channels, attention_channels, attention_activation)
        chans = in_channels * (2 if attention_blocks else 1)
        self.hashing = HashingNetwork(backbone, pretrained, chans, fc_dim, int(hash_bits))
        self.criterion = AttentionHashingLoss(int(hash_bits), margin, alpha, contrastive_weight, hashnet_weight)

    # -- retrieval --------------------------------------------------------------------------------
    def attend(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Hashing-network input (image, or image and attended image stacked) and the attention maps."""
        attended, maps = self.attention(images)
        return (torch.cat([images, attended], 1) if maps else images), maps

    def logits(self, images: Tensor) -> Tensor:
        return self.hashing(self.attend(images)[0])

    def forward(self, images: Tensor) -> Tensor:
        """Relaxed codes h = tanh(z) in [-1, 1]^K."""
        return torch.tanh(self.logits(images))

    @staticmethod
    def binarize(z: Tensor) -> Tensor:
        """b = sign(z) with z >= 0 -> +1 (float +-1)."""
        return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    def embed(self, images: Tensor) -> Tensor:
        return self.binarize(self.logits(images))

    def embed_variants(self, images: Tensor) -> dict[str, Tensor]:
        """One forward pass: binary codes (``embedding``) and relaxed codes (``float``)."""
        z = self.logits(images)
        return {"embedding": self.binarize(z), "float": torch.tanh(z)}

    def attention_maps(self, images: Tensor) -> Tensor | None:
        """The last attention map S [B, H, W] (None for PF0)."""
        maps = self.attend(images)[1]
        return maps[-1][:, 0] if maps else None

    # -- training ---------------------------------------------------------------------------------
    def _loss(self, batch: dict, stage: str) -> Tensor:
        images = batch["image"]
        out = self.criterion(self(images), batch["label"])
        bs = images.shape[0]
        self.log(f"{stage}/loss", out["loss"], prog_bar=stage == "train", batch_size=bs, sync_dist=stage != "train")
        if stage == "train":
            self.log("train/contrastive", out["contrastive"], batch_size=bs)
            self.log("train/hashnet", out["hashnet"], batch_size=bs)
        return out["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._loss(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._loss(batch, "test")

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), weight_decay=h.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=h.lr_step, gamma=h.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
