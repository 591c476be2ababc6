"""Relevance rank accuracy (Arras et al. 2022, CLEVR-XAI; ``quantus.RelevanceRankAccuracy``).

With M = number of pixels of the ground-truth mask GT and P_top-M the M pixels of highest attribution,
RR = |P_top-M ∩ GT| / M (per image; the ``RR`` key of docs/metrics.md). Attributions are used as
they are (no absolute value, no normalisation: quantus with ``abs=False, normalise=False``).

Tie rule: pixels are ranked by attribution, descending, with equal attributions ordered by flattened
(row-major) pixel index, ascending (a stable sort). Quantus ranks with ``np.argsort(-a)`` (an unstable
sort), so its order among ties is unspecified; for untied attributions both are identical.
"""
from __future__ import annotations

import torch
from torch import Tensor

from callbacks.validation import as_tensor, check_maps


def _as_maps(name: str, x: Tensor) -> Tensor:
    """[N, H, W] or [N, 1, H, W] -> [N, H*W]."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [N, H, W] or [N, 1, H, W], got {tuple(x.shape)}")
    return x.reshape(len(x), x.shape[-2] * x.shape[-1])


def relevance_rank_accuracy(attributions: Tensor, masks: Tensor) -> tuple[Tensor, int]:
    """Per-image RR (float64, images with a non-empty mask only) and the number of empty masks skipped.

    ``masks`` are binary: a pixel is in the mask when its value is > 0.5.
    """
    attributions, masks = as_tensor(attributions, "attributions"), as_tensor(masks, "masks")
    scores, mask_values = _as_maps("attributions", attributions), _as_maps("masks", masks)
    if scores.shape != mask_values.shape:
        raise ValueError(f"attributions {tuple(attributions.shape)} and masks {tuple(masks.shape)} "
                         "must describe the same N images of the same size")
    check_maps(scores, mask_values)
    inside = mask_values > 0.5
    size = inside.sum(1)  # M per image
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked_hits = inside.gather(1, order)  # ranked_hits[n, r] = pixel of rank r is in the mask
    in_top = torch.arange(scores.shape[1], device=scores.device)[None] < size[:, None]
    keep = size > 0
    rr = (ranked_hits & in_top).sum(1)[keep].double() / size[keep].double()
    return rr, int((~keep).sum())


def mean_relevance_rank_accuracy(attributions: Tensor, masks: Tensor) -> dict[str, float]:
    """{"RR": mean over images with a non-empty mask, "RR_n_images": their number, "RR_n_skipped_empty"}.

    When every mask is empty, "RR" is absent (never NaN) and only the two counts are returned.
    """
    rr, skipped = relevance_rank_accuracy(attributions, masks)
    out: dict[str, float] = {"RR_n_images": len(rr), "RR_n_skipped_empty": skipped}
    if len(rr):
        out["RR"] = float(rr.mean())
    return out
