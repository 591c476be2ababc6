"""Pooling of convolutional feature maps into global descriptors."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class GeM(nn.Module):
    """Generalized-mean pooling (Radenović, Tolias & Chum 2018, "Fine-tuning CNN image retrieval with no
    human annotation", eq. 2): f_k = (1/|X_k| sum_{x in X_k} x^p)^(1/p) per channel k.

    p = 1 is average pooling, p -> inf tends to max pooling. Activations are clamped to ``eps`` first (the
    power of a negative number is undefined for real p). ``p`` is a learnable scalar (init 3, the paper's
    and Qi et al. 2023's choice) unless ``learn_p=False``.

    Input [B, C, H, W] -> output [B, C] (float32).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM: p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # float32: x^p overflows half precision for moderately large activations.
        return x.float().clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"
