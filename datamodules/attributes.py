"""Per-item attributes for relevance from visual similarity (computed by the data, read by evaluation).

A DataModule packs named per-item parts into one flat float vector ``attributes`` [F] with
:func:`pack_attributes` and publishes the layout ``{name: width}``; ``callbacks.visual_similarity`` compares
items part by part. Also here: grey histograms and the generic Fourier descriptor of a shape (Zhang & Lu
2002), the attributes BraTS items carry (Sauron et al.'s visual-similarity relevance).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def pack_attributes(parts: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, int]]:
    """Per-item parts {name: [N, ...]} -> (flat float32 [N, F], layout {name: width}) in the given order."""
    flat = [torch.as_tensor(v).float().reshape(len(v), -1) for v in parts.values()]
    return torch.cat(flat, 1), {k: t.shape[1] for k, t in zip(parts, flat, strict=True)}


def split_attributes(x: Tensor, layout: Mapping[str, int]) -> dict[str, Tensor]:
    """Inverse of :func:`pack_attributes`: {name: [N, width]} views of ``x`` [N, F]."""
    total = sum(layout.values())
    if x.ndim != 2 or x.shape[1] != total:
        raise ValueError(f"attributes of shape {tuple(x.shape)} do not match the layout {dict(layout)} "
                         f"({total} columns); is relevance_args' layout the one of this DataModule?")
    return dict(zip(layout, torch.split(x, list(layout.values()), dim=1), strict=True))


def grey_histogram(images: Tensor, masks: Tensor, bins: int = 32, value_range: tuple[float, float] = (-3.0, 3.0)
                   ) -> Tensor:
    """Normalised histograms [N, bins] of the pixels of ``images`` [N, H, W] where ``masks`` (the brain) is
    true; values outside ``value_range`` go to the end bins. An empty mask gives a zero histogram."""
    lo, hi = value_range
    idx = ((images.float() - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    weight = (masks > 0).float().reshape(len(images), -1)
    out = torch.zeros(len(images), bins).scatter_add_(1, idx.reshape(len(images), -1), weight)
    return out / out.sum(1, keepdim=True).clamp_min(1.0)


def generic_fourier_descriptor(masks: Tensor, radial: int = 4, angular: int = 9, radial_samples: int = 32,
                               angular_samples: int = 64) -> Tensor:
    """Generic Fourier descriptor (Zhang & Lu 2002) of shapes ``masks`` [N, H, W] -> [N, radial * angular].

    The mask is resampled on a polar raster about its centroid, f(r_k, theta_i) with r_k = (k + 1/2) R / Rs
    (R: the largest centroid-to-pixel distance, Rs = ``radial_samples``) and theta_i = 2 pi i / T (T =
    ``angular_samples``), bilinearly. Its 2-D DFT PF(m, n) = sum_k sum_i f e^{-j 2 pi (k m / Rs + i n / T)}
    gives FD = [|PF(0,0)| / (Rs T), |PF(m,n)| / |PF(0,0)| for m < radial, n < angular, (m,n) != (0,0)] in the
    order m major. A rotation shifts theta, so |PF| is rotation invariant (exactly for multiples of 2 pi / T);
    the centroid makes it translation invariant, R and the division by |PF(0,0)| scale invariant. The first
    entry is the covered fraction of the polar raster. Empty masks give zeros.
    """
    masks = masks.float()
    n, h, w = masks.shape
    if radial > radial_samples or angular > angular_samples:
        raise ValueError(f"radial={radial}, angular={angular} exceed the polar raster "
                         f"{radial_samples} x {angular_samples}")
    out = torch.zeros(n, radial * angular)
    inside = masks > 0.5
    keep = inside.flatten(1).any(1)
    if not bool(keep.any()):
        return out
    m, ins = masks[keep], inside[keep]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    area = ins.float().sum((1, 2))
    cy = (ins * ys).sum((1, 2)) / area
    cx = (ins * xs).sum((1, 2)) / area
    dist = torch.sqrt((ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2)
    radius = (dist * ins).flatten(1).amax(1) + 0.5
    r = (torch.arange(radial_samples) + 0.5) / radial_samples
    theta = torch.arange(angular_samples) * (2 * math.pi / angular_samples)
    py = cy[:, None, None] + radius[:, None, None] * r[None, :, None] * torch.sin(theta)[None, None, :]
    px = cx[:, None, None] + radius[:, None, None] * r[None, :, None] * torch.cos(theta)[None, None, :]
    grid = torch.stack([px / max(w - 1, 1) * 2 - 1, py / max(h - 1, 1) * 2 - 1], -1)   # [n, Rs, T, 2]
    polar = F.grid_sample(m[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    spectrum = torch.fft.fft2(polar).abs()[:, :radial, :angular].reshape(len(m), -1)
    dc = spectrum[:, :1]
    fd = spectrum / dc.clamp_min(1e-12)
    fd[:, 0] = dc[:, 0] / (radial_samples * angular_samples)
    out[keep] = fd
    return out
