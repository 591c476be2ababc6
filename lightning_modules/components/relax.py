"""RELAX: explanations of representations by random masking (Wickstrøm et al. 2021, arXiv:2112.10161).

For masks M(n) and s_n = cos(h, h_n), h = embed(x), h_n = embed(x masked by M(n)), RELAX gives

- importance  R_ij = sum_n s_n M_ij(n) / sum_n M_ij(n)                     (paper eq. 4, mask-weighted mean)
- uncertainty U_ij = sum_n M_ij(n) (s_n - R_ij)^2 / sum_n M_ij(n)          (U-RELAX, weighted variance)

Works for any ``embed: Tensor[B, C, H, W] -> Tensor[B, D]``. Putting the module behind ``embed`` in eval
mode is the caller's business (a BatchNorm in train mode makes h_n depend on the other masks of the batch).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class RelaxResult:
    """Importance R and uncertainty U, each [B, H, W] ([H, W] for an unbatched input), float32."""

    importance: Tensor
    uncertainty: Tensor


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"RELAX: {name} must be an integer >= {minimum}, got {value!r}")


class RELAX:
    """Batched, seeded RELAX / U-RELAX explainer.

    Args:
        num_masks: N, masks per image (paper: 3000 = 30 batches x 100).
        mask_batch_size: masked copies per ``embed`` call; bounds memory (mask_batch_size x C x H x W).
        grid_size: cells per side of the Bernoulli grid (paper: 7).
        keep_prob: P(cell kept) (paper: 0.5).
        fill_value: value of masked-out pixels: x_masked = x * M + fill_value * (1 - M) (paper: 0).
        max_shift: random mask shift in pixels, as in the reference code: the upsampled [H, W] mask is
            reflect-padded by ``max_shift // 2`` (top/left) and ``max_shift - max_shift // 2``
            (bottom/right) and cropped back to [H, W] at offsets (dy, dx) drawn uniformly from
            {0, ..., max_shift}. The reference code corresponds to ``max_shift = 2 * (grid_size // 2)``
            (6 for 7 cells); 0 (default, the paper) disables the shift.
        seed: seed of the CPU ``torch.Generator`` drawing all grids and shifts up front, so the result
            does not depend on ``mask_batch_size`` (up to float round-off in ``embed``). The same masks
            are used for every image of a batch.
    """

    def __init__(self, num_masks: int = 3000, mask_batch_size: int = 100, grid_size: int = 7,
                 keep_prob: float = 0.5, fill_value: float = 0.0, max_shift: int = 0, seed: int = 0):
        _check_int("num_masks", num_masks, 1)
        _check_int("mask_batch_size", mask_batch_size, 1)
        _check_int("grid_size", grid_size, 1)
        _check_int("max_shift", max_shift, 0)
        _check_int("seed", seed, -(2 ** 63))
        if not isinstance(keep_prob, (int, float)) or not 0.0 < keep_prob < 1.0:
            raise ValueError(f"RELAX: keep_prob must be in the open interval (0, 1), got {keep_prob!r}")
        if not isinstance(fill_value, (int, float)) or not math.isfinite(fill_value):
            raise ValueError(f"RELAX: fill_value must be a finite number, got {fill_value!r}")
        self.num_masks, self.mask_batch_size, self.grid_size = num_masks, mask_batch_size, grid_size
        self.keep_prob, self.fill_value = float(keep_prob), float(fill_value)
        self.max_shift, self.seed = max_shift, seed

    def draw(self, n: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """The random part of ``n`` masks: 0/1 grids [n, g, g] and shifts [n, 2] (dy, dx), on CPU."""
        grids = (torch.rand(n, self.grid_size, self.grid_size, generator=generator) < self.keep_prob).float()
        shifts = torch.randint(0, self.max_shift + 1, (n, 2), generator=generator)
        return grids, shifts

    def _axis(self, size: int, device: torch.device) -> Tensor:
        """1-D linear interpolation weights [size + max_shift, g] (align_corners=False), reflect-padded."""
        lo = self.max_shift // 2
        if self.max_shift - lo >= size:
            raise ValueError(f"RELAX: max_shift={self.max_shift} is too large for an image side of {size}")
        eye = torch.eye(self.grid_size, device=device)[:, None]  # g signals [g, 1, g]
        weights = F.interpolate(eye, size=size, mode="linear", align_corners=False)  # [g, 1, size]
        if self.max_shift:
            weights = F.pad(weights, (lo, self.max_shift - lo), mode="reflect")
        return weights[:, 0].T

    def upsample(self, grids: Tensor, shifts: Tensor, height: int, width: int) -> Tensor:
        """Smooth masks [n, H, W] in [0, 1]: bilinear upsampling (align_corners=False), then the shift.

        Bilinear upsampling is separable, M = A_H G A_W^T (= ``F.interpolate(mode="bilinear")`` up to
        round-off), and reflect-pad + crop only selects rows of A_H and A_W, so both cost two small
        batched matmuls.
        """
        device = grids.device
        rows = self._axis(height, device)[shifts[:, 0, None] + torch.arange(height, device=device)]
        cols = self._axis(width, device)[shifts[:, 1, None] + torch.arange(width, device=device)]
        return (rows @ grids @ cols.transpose(1, 2)).clamp_(0.0, 1.0)  # clamp: matmul round-off

    def masks(self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` masks [n, H, W] on CPU; with ``generator`` seeded by ``seed`` these are explain()'s masks."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        return self.upsample(*self.draw(n, generator), height, width)

    @torch.no_grad()
    def explain(self, embed: Callable[[Tensor], Tensor], images: Tensor) -> RelaxResult:
        """RELAX importance and U-RELAX uncertainty of each image of ``images`` [B, C, H, W] or [C, H, W].

        Runs on the device of ``images``; running sums of M, s*M and s^2*M are kept in float64, so
        U = sum s^2 M / sum M - R^2 is computed in one pass. Pixels never covered by a mask
        (sum_n M_ij = 0, possible for small N) get R = U = 0.
        """
        unbatched = images.dim() == 3
        images = images[None] if unbatched else images
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"RELAX: images must be a float [B, C, H, W] or [C, H, W] tensor, got "
                             f"{tuple(images.shape)} {images.dtype}")
        owner = getattr(embed, "__self__", None)
        if isinstance(owner, nn.Module) and owner.training:
            warnings.warn("RELAX: the module behind embed() is in train mode; call .eval() first",
                          stacklevel=2)
        b, _, h, w = images.shape
        device = images.device
        grids, shifts = self.draw(self.num_masks, torch.Generator().manual_seed(self.seed))
        grids, shifts = grids.to(device), shifts.to(device)
        reference = embed(images).flatten(1).float()  # h, [B, D]
        weight = torch.zeros(h * w, dtype=torch.float64, device=device)  # sum_n M
        moments = torch.zeros(b, 2, h * w, dtype=torch.float64, device=device)  # sum_n s M, sum_n s^2 M
        for start in range(0, self.num_masks, self.mask_batch_size):
            stop = min(start + self.mask_batch_size, self.num_masks)
            masks = self.upsample(grids[start:stop], shifts[start:stop], h, w).to(images.dtype)
            flat = masks.reshape(stop - start, h * w).double()
            weight += flat.sum(0)
            for i in range(b):
                masked = (masks[:, None] * (images[i] - self.fill_value)).add_(self.fill_value)
                sim = F.cosine_similarity(reference[i:i + 1], embed(masked).flatten(1).float(), dim=1)
                sim = sim.double()
                moments[i] += torch.stack([sim, sim * sim]) @ flat
        covered = weight > 0
        safe = torch.where(covered, weight, torch.ones_like(weight))
        importance = torch.where(covered, moments[:, 0] / safe, 0.0)
        uncertainty = torch.where(covered, moments[:, 1] / safe - importance ** 2, 0.0).clamp_min(0.0)
        result = RelaxResult(importance.reshape(b, h, w).float(), uncertainty.reshape(b, h, w).float())
        if unbatched:
            result = RelaxResult(result.importance[0], result.uncertainty[0])
        return result
