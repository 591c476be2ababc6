"""Attention network of Öztürk et al. 2021 (attention hashing for chest X-ray retrieval, Sec. 3, eq. 3-4).

No saliency supervision: the attention maps S learn through the retrieval loss only. One attention block is
an encoder of five 5x5 convolutions (32 -> 128 channels), each followed by BatchNorm + ELU, with two 2x2
max-pools, and a decoder of three transposed convolutions (the first two followed by BatchNorm + ELU) back
to one channel at the input resolution, then the output activation (sigmoid in the paper; tanh and ELU
were its ablation). Eq. 4: x_next = S ⊙ x.

Two blocks (PF2) are joined by a residual connection: block 1 sees x0 (the image) and gives x1 = S1 ⊙ x0;
block 2 sees x1 + x0 and gives x2 = S2 ⊙ (x1 + x0). PF1 stops after block 1; PF0 has no block.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU}


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm2d(c_out), nn.ELU(inplace=True)]


class AttentionBlock(nn.Module):
    """Image [B, C, H, W] -> attention map S [B, 1, H, W] (see the module docstring).

    Args:
        in_channels: image channels.
        channels: the five encoder widths (paper: from 32 to 128); max-pools after the 2nd and 4th conv.
        activation: output activation ``sigmoid`` (paper), ``tanh`` or ``elu``.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 32, 64, 64, 128),
                 activation: str = "sigmoid"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"attention_activation={activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError(f"attention_channels={list(channels)}: expected five positive widths")
        c = list(channels)
        layers = _conv(in_channels, c[0]) + _conv(c[0], c[1]) + [nn.MaxPool2d(2)] + _conv(c[1], c[2]) \
            + _conv(c[2], c[3]) + [nn.MaxPool2d(2)] + _conv(c[3], c[4])
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c[4], c[2], 2, stride=2), nn.BatchNorm2d(c[2]), nn.ELU(inplace=True),
            nn.ConvTranspose2d(c[2], c[0], 2, stride=2), nn.BatchNorm2d(c[0]), nn.ELU(inplace=True),
            nn.ConvTranspose2d(c[0], 1, 5, padding=2))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        s = self.decoder(self.encoder(x))
        if s.shape[-2:] != x.shape[-2:]:  # sides not divisible by 4
            s = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.activation(s)


class AttentionNetwork(nn.Module):
    """``n_blocks`` (0 = PF0, 1 = PF1, 2 = PF2) attention blocks joined by residual connections.

    ``forward(x) -> (attended image, [S_1, ..., S_n])``; with no block the attended image is x itself."""

    def __init__(self, n_blocks: int = 2, in_channels: int = 3, channels: Sequence[int] = (32, 32, 64, 64, 128),
                 activation: str = "sigmoid"):
        super().__init__()
        if n_blocks not in (0, 1, 2):
            raise ValueError(f"attention_blocks={n_blocks}: expected 0 (PF0), 1 (PF1) or 2 (PF2)")
        self.blocks = nn.ModuleList(AttentionBlock(in_channels, channels, activation) for _ in range(n_blocks))

    def forward(self, x0: Tensor) -> tuple[Tensor, list[Tensor]]:
        x, maps = x0, []
        for k, block in enumerate(self.blocks):
            inp = x0 if k == 0 else x + x0
            s = block(inp)
            x = s * inp  # eq. 4
            maps.append(s)
        return x, maps


def attention_maps_differ(maps: Tensor, tol: float = 1e-3) -> Tensor:
    """Per image, whether a map [B, 1, H, W] varies over space (std over pixels > tol)."""
    return maps.flatten(1).std(1) > tol


__all__ = ["ACTIVATIONS", "AttentionBlock", "AttentionNetwork", "attention_maps_differ"]
