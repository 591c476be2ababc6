"""Batched SSIM (Wang et al. 2004) with scikit-image's ``structural_similarity`` defaults, as a pairwise score.

skimage defaults reproduced: 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N / (N - 1),
N = 49), ``data_range`` = 255 for 8-bit images, and the mean SSIM over the window centres at least 3 pixels
from the border (skimage crops that margin after filtering). Per-image means and variances are computed
once; each pair needs only its cross term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

K1, K2 = 0.01, 0.03


def _box(x: Tensor, win: int) -> Tensor:
    """Mean over every win x win window fully inside the image ([..., H, W] -> [..., H-win+1, W-win+1])."""
    shape = x.shape
    out = F.avg_pool2d(x.reshape(-1, 1, *shape[-2:]), win, stride=1)
    return out.reshape(*shape[:-2], *out.shape[-2:])


def _stats(x: Tensor, win: int) -> tuple[Tensor, Tensor]:
    mu = _box(x, win)
    n = win * win
    return mu, (_box(x * x, win) - mu * mu) * (n / (n - 1))


def ssim_matrix(queries: Tensor, gallery: Tensor, win_size: int = 7, data_range: float = 255.0,
                max_pixels: int = 1 << 24) -> Tensor:
    """Mean SSIM [q, g] between grey images ``queries`` [q, H, W] and ``gallery`` [g, H, W] (float, in
    ``data_range`` units); pairs are processed in blocks of at most ``max_pixels`` pair-pixels."""
    if queries.ndim != 3 or gallery.ndim != 3 or queries.shape[1:] != gallery.shape[1:]:
        raise ValueError(f"SSIM needs [q, H, W] and [g, H, W] images of one size, got {tuple(queries.shape)} "
                         f"and {tuple(gallery.shape)}")
    if min(queries.shape[1:]) < win_size or win_size % 2 == 0:
        raise ValueError(f"win_size={win_size}: expected an odd window no larger than the images "
                         f"{tuple(queries.shape[1:])}")
    x, y = queries.double(), gallery.double()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, vx = _stats(x, win_size)
    my, vy = _stats(y, win_size)
    n = win_size * win_size
    out = torch.empty(len(x), len(y), dtype=torch.float64, device=x.device)
    step = max(1, max_pixels // max(1, len(y) * x[0].numel()))
    for s in range(0, len(x), step):
        e = min(s + step, len(x))
        cross = _box(x[s:e, None] * y[None], win_size)                       # [b, g, h, w]
        mxy = mx[s:e, None] * my[None]
        vxy = (cross - mxy) * (n / (n - 1))
        num = (2 * mxy + c1) * (2 * vxy + c2)
        den = (mx[s:e, None] ** 2 + my[None] ** 2 + c1) * (vx[s:e, None] + vy[None] + c2)
        out[s:e] = (num / den).mean(dim=(-2, -1))
    return out.float()
