"""Multi-sequence supervised contrastive retrieval of brain MRI slices (Sauron et al., BraTS poster).

The four sequence images (T1, T1ce, T2, FLAIR) of one patient slice are positives of each other: the label
of each image is its patient id, so no human label is used. A 1-channel ResNet-18 encodes every sequence
image of the batch ([B, 4, H, W] -> [B*4, 1, H, W]); a projection head feeds the supervised contrastive loss
(Khosla et al. 2020, L_out, :mod:`lightning_modules.components.supcon_loss`); an optional decoder
reconstructs each image from its embedding. Retrieval uses the encoder's pooled features (cosine).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.mri_views import SequenceViewsd
from lightning_modules.components.optim import LR_SCHEDULES, optimizer_with_schedule
from lightning_modules.components.supcon_loss import SupConLoss
from lightning_modules.vae import _up

OPTIMIZERS = ("adam", "sgd", "lars")
POSITIVES = ("patient", "slice")


class ReconstructionDecoder(nn.Module):
    """Embedding [N, D] -> image [N, 1, S, S]: a linear layer to 256 x 4 x 4, then transposed convolutions
    (x2 each, BN + ReLU) to S = ``size`` (a power of two >= 8), a last 3x3 convolution to one channel."""

    def __init__(self, in_dim: int, size: int = 64, width: int = 256):
        super().__init__()
        steps = int(round(math.log2(size / 4)))
        if size < 8 or 4 * 2 ** steps != size:
            raise ValueError(f"model.recon_size={size}: expected a power of two >= 8")
        widths = [max(width >> i, 16) for i in range(steps + 1)]
        self.width = width
        self.fc = nn.Linear(in_dim, width * 16)
        self.up = nn.Sequential(*(_up(i, o) for i, o in zip(widths[:-1], widths[1:])))
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.up(self.fc(h).view(-1, self.width, 4, 4)))


class SupCon(RetrievalModule):
    """Supervised contrastive training on the sequences of a slice (positives = same patient).

    Loss: L = L_out(z, patient ids) + recon_weight * mean squared error(decoder(h), x), z = g(h) the
    projection of the encoder output h, L_out over the B*4 images of the batch (and of every process under
    DDP with ``gather_distributed``). The poster adds the reconstruction term unweighted (recon_weight 1 in
    its "+ reconstruction" row); 0 turns the decoder off.

    Args:
        backbone: timm CNN (poster: ``resnet18``), built with 1 input channel.
        pretrained: local weights file (e.g. ImageNet ResNet-18; timm sums the first convolution over RGB),
            or None (from scratch).
        zero_init_residual: keep timm's zero initialisation of the last BatchNorm of each residual block when
            training from scratch (Goyal et al.). Off by default (torchvision's convention): with it, an
            untrained ResNet maps small slices whose corners are background to an all-zero embedding (its
            stride-2 1x1 shortcuts only see the corners), a degenerate "untrained" baseline.
        freeze_encoder: keep the encoder fixed (in eval mode, no gradient): with ``pretrained`` this is the
            poster's "frozen ImageNet, no training" baseline (only the projection head trains, retrieval is
            unchanged).
        proj_hidden_dim / proj_dim: projection head g widths (Linear-BN-ReLU-Linear; SupCon uses an MLP head).
        temperature: t of L_out (not in the poster; 0.07 = the SupCon reference code's default).
        loss_implementation: ``pml`` (pytorch-metric-learning, tested equal to the equation) or ``direct``.
        positives: ``patient`` (poster: label = patient id, so several slices of one patient are positives
            too) or ``slice`` (only the sequences of the same slice).
        gather_distributed: positives and negatives from every process under DDP.
        recon_weight: weight of the reconstruction loss (0 = no decoder); recon_size: side the decoder
            outputs (the target image is resized to it).
        augment: random views (:class:`SequenceViewsd`, each sequence augmented independently); off = the
            plain slices. crop_scale, flip_p, rotate_deg, intensity_scale, intensity_shift: its settings.
        optimizer: ``adam`` (AdamW; the poster does not say), ``sgd`` or ``lars``; lr, weight_decay, momentum
            (sgd / lars), lr_schedule ``constant`` or ``cosine``.
    """

    search_space = "cosine"

    def __init__(self, backbone: str = "resnet18", pretrained: Optional[str] = None,
                 zero_init_residual: bool = False, freeze_encoder: bool = False,
                 proj_hidden_dim: int = 512, proj_dim: int = 128, temperature: float = 0.07,
                 loss_implementation: str = "pml", positives: str = "patient", gather_distributed: bool = True,
                 recon_weight: float = 0.0, recon_size: int = 64, augment: bool = True,
                 crop_scale: Tuple[float, float] = (0.6, 1.0), flip_p: float = 0.5, rotate_deg: float = 10.0,
                 intensity_scale: float = 0.1, intensity_shift: float = 0.1, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 1e-4, momentum: float = 0.9,
                 lr_schedule: str = "constant"):
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={optimizer!r}: expected one of {OPTIMIZERS}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"model.lr_schedule={lr_schedule!r}: expected one of {LR_SCHEDULES}")
        if positives not in POSITIVES:
            raise ValueError(f"model.positives={positives!r}: expected one of {POSITIVES}")
        if recon_weight < 0:
            raise ValueError(f"model.recon_weight={recon_weight}: expected >= 0 (0 = no reconstruction)")
        self.encoder = create_backbone(backbone, pretrained, in_chans=1)
        if not pretrained and not zero_init_residual:
            for block in self.encoder.modules():
                if hasattr(block, "zero_init_last"):   # timm residual blocks: last BN gamma back to 1
                    last = getattr(block, "bn3", None) or getattr(block, "bn2", None)
                    if getattr(last, "weight", None) is not None:
                        nn.init.ones_(last.weight)
        dim = self.encoder.num_features
        self.projector = nn.Sequential(nn.Linear(dim, proj_hidden_dim), nn.BatchNorm1d(proj_hidden_dim),
                                       nn.ReLU(inplace=True), nn.Linear(proj_hidden_dim, proj_dim))
        self.criterion = SupConLoss(temperature, loss_implementation, gather_distributed)
        self.decoder = ReconstructionDecoder(dim, recon_size) if recon_weight > 0 else None
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self._views = SequenceViewsd(crop_scale, flip_p, rotate_deg, intensity_scale, intensity_shift) \
            if augment else None

    def view_transform(self) -> Optional[SequenceViewsd]:
        return self._views

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.encoder.eval()   # frozen: BatchNorm statistics do not move either
        return self

    def embed(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"SupCon embeds single-sequence images [B, 1, H, W], got {tuple(images.shape)}")
        return self.encoder(images)

    def slice_labels(self, batch: dict, n_seq: int) -> Tensor:
        """Label of each of the B * n_seq images: the patient id (or patient and slice)."""
        labels = batch["patient_id"].long()
        if self.hparams.positives == "slice":
            labels = labels * 100_000 + batch["slice_index"].long()
        return labels.repeat_interleave(n_seq)

    def losses(self, batch: dict) -> dict[str, Tensor]:
        x = batch["views"] if "views" in batch else batch["image"]
        if x.ndim != 4:
            raise ValueError(f"SupCon trains on slices [B, sequences, H, W], got {tuple(x.shape)}")
        b, s, h, w = x.shape
        flat = x.reshape(b * s, 1, h, w)
        feats = self.encoder(flat)
        out = {"supcon": self.criterion(self.projector(feats), self.slice_labels(batch, s))}
        out["loss"] = out["supcon"]
        if self.decoder is not None:
            size = self.hparams.recon_size
            target = F.interpolate(flat, size=(size, size), mode="area" if h >= size else "bilinear")
            out["recon"] = F.mse_loss(self.decoder(feats), target)
            out["loss"] = out["loss"] + self.hparams.recon_weight * out["recon"]
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.losses(batch)
        bs = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        """Loss on held-out slices (retrieval metrics come from the callback)."""
        out = self.losses(batch)
        self.log(f"{stage}/loss", out["loss"], batch_size=batch["image"].shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer != "adam":
            return optimizer_with_schedule(self, h.optimizer, h.lr, h.momentum, h.weight_decay, h.lr_schedule)
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=h.lr,
                                weight_decay=h.weight_decay)
        if h.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs or 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
