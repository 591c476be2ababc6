"""Hashing losses of Öztürk et al. 2021 (eq. 5-7): L = 0.5 Lc + 0.5 Lw on relaxed codes h in [-1, 1]^K.

Similarity from multi-hot labels: s_ij = 1 when images i and j share at least one label ("No Finding"
counts as one). Both terms average over the pairs i < j of the batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def label_similarity(labels: Tensor) -> Tensor:
    """s_ij = 1 if the multi-hot rows i and j share >= 1 positive label, else 0 ([B, B] float)."""
    pos = (labels > 0).float()
    return (pos @ pos.T > 0).float()


def _pairs(n: int, device) -> tuple[Tensor, Tensor]:
    return torch.triu_indices(n, n, offset=1, device=device).unbind(0)


def squared_contrastive_loss(h: Tensor, s: Tensor, margin: float = 1.0) -> Tensor:
    """Lc = mean over pairs i < j of 1/2 s D^2 + 1/2 (1 - s) max(0, m - D)^2, D = ||h_i - h_j|| (eq. 5;
    squared, unlike pytorch-metric-learning's ContrastiveLoss)."""
    i, j = _pairs(len(h), h.device)
    if len(i) == 0:
        return h.sum() * 0.0
    d2 = (h[i] - h[j]).pow(2).sum(1)
    d = d2.clamp_min(1e-12).sqrt()
    sij = s[i, j]
    return (0.5 * sij * d2 + 0.5 * (1 - sij) * (margin - d).clamp_min(0).pow(2)).mean()


def stable_softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): never overflows (HashNet ``pairwise_loss_updated``)."""
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def hashnet_loss(h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """Lw = 1/S sum_{i<j} w_ij (log(1 + exp(theta_ij)) - s_ij theta_ij), theta_ij = alpha <h_i, h_j> (eq. 6,
    HashNet's weighted pairwise likelihood, Cao et al. 2017). w_ij = S / S1 for similar and S / S0 for
    dissimilar pairs (S pairs, S1 similar, S0 dissimilar), so both kinds weigh equally."""
    i, j = _pairs(len(h), h.device)
    if len(i) == 0:
        return h.sum() * 0.0
    theta = alpha * (h[i] * h[j]).sum(1)
    sij = s[i, j]
    n, n1 = float(len(i)), sij.sum()
    n0 = n - n1
    w = torch.where(sij > 0, n / n1.clamp_min(1.0), n / n0.clamp_min(1.0))
    return (w * (stable_softplus(theta) - sij * theta)).sum() / n


class AttentionHashingLoss(nn.Module):
    """L = contrastive_weight * Lc + hashnet_weight * Lw (paper eq. 7: 0.5 / 0.5).

    Args:
        hash_bits: code length K; ``alpha`` None = 10 / K (HashNet's code).
        margin: m of Lc (paper 1).
    """

    def __init__(self, hash_bits: int, margin: float = 1.0, alpha: float | None = None,
                 contrastive_weight: float = 0.5, hashnet_weight: float = 0.5):
        super().__init__()
        self.margin = float(margin)
        self.alpha = float(alpha) if alpha is not None else 10.0 / hash_bits
        self.contrastive_weight, self.hashnet_weight = float(contrastive_weight), float(hashnet_weight)

    def forward(self, h: Tensor, labels: Tensor) -> dict[str, Tensor]:
        s = label_similarity(labels)
        lc = squared_contrastive_loss(h, s, self.margin)
        lw = hashnet_loss(h, s, self.alpha)
        return {"loss": self.contrastive_weight * lc + self.hashnet_weight * lw, "contrastive": lc, "hashnet": lw}
