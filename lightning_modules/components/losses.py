"""Metric-learning losses shared by methods."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

DISTANCES = ("cosine", "euclidean")


def all_triplets(labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Indices (anchor, positive, negative) of every triplet of a labelled batch.

    a != p with label[a] == label[p], label[n] != label[a]; rows with a negative label (-1 = unlabelled)
    take part in no triplet. Costs O(B^3) booleans (B = 256: 16 M).
    """
    labels = labels.reshape(-1)
    valid = labels >= 0
    same = (labels[:, None] == labels[None, :]) & valid[:, None] & valid[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same & valid[:, None] & valid[None, :]
    a, p, n = torch.nonzero(positive[:, :, None] & negative[:, None, :], as_tuple=True)
    return a, p, n


def has_triplet(labels: Tensor) -> bool:
    """True when the labelled rows (label >= 0) hold at least one (anchor, positive, negative) triplet."""
    counts = torch.unique(labels[labels >= 0], return_counts=True)[1]
    return len(counts) >= 2 and bool(counts.max() >= 2)


def pairwise_distance(x: Tensor, y: Tensor, distance: str = "cosine") -> Tensor:
    """d(x_i, y_j) for all pairs: cosine distance 1 - cos(x_i, y_j) or Euclidean ||x_i - y_j||."""
    if distance == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    if distance == "euclidean":
        return torch.cdist(x, y)
    raise ValueError(f"distance={distance!r}: expected one of {DISTANCES}")


def margin_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.8,
                        distance: str = "cosine") -> Tensor:
    """Margin loss of Qi, Cheng & Haehn 2023 (stage 2): L = 1/2 max(0, m + d(a, p) - d(a, n)).

    Averaged over all triplets of the batch (:func:`all_triplets`: anchor, positive of the same lesion
    type, negative of another type; unlabelled rows ignored). With no triplet the loss is 0 and still part
    of the graph (``0 * embeddings.sum()``), so every process of a DDP run takes the same backward path.
    """
    a, p, n = all_triplets(labels)
    if len(a) == 0:
        return embeddings.sum() * 0.0
    d = pairwise_distance(embeddings, embeddings, distance)
    return (0.5 * F.relu(margin + d[a, p] - d[a, n])).mean()


class MarginTripletLoss(nn.Module):
    """:func:`margin_triplet_loss` as a module: ``loss(embeddings [B, D], labels [B]) -> scalar``.

    Args:
        margin: m (paper 0.8).
        distance: ``cosine`` (d = 1 - cos, the paper) or ``euclidean``.
    """

    def __init__(self, margin: float = 0.8, distance: str = "cosine"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}: expected one of {DISTANCES}")
        self.margin, self.distance = float(margin), distance

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return margin_triplet_loss(embeddings, labels, self.margin, self.distance)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}"
