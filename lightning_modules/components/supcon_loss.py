"""Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out"), optionally over every DDP process.

L_out = mean over anchors i with a positive of  -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / t) /
sum_{a in A(i)} exp(z_i . z_a / t) ), with z L2-normalised, A(i) every other sample of the batch and P(i)
those with the label of i. The paper writes a sum over anchors; its reference code (and pytorch-metric-
learning) average, which only rescales the loss; anchors without a positive contribute nothing.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

IMPLEMENTATIONS = ("pml", "direct")


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """The equation written out (the reference for tests): ``z`` [N, d], ``labels`` [N]."""
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.t() / temperature
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)[anchors]) / n_pos[anchors]
    return per_anchor.mean()


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenation of ``x`` from every process, in rank order; gradients flow back to each process's own
    rows summed over processes (lightly's GatherLayer), so DDP's gradient averaging gives the gradient of
    the loss of the global batch. Needs the same shape on every process. Identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from lightly.utils.dist import gather

    return torch.cat(gather(x), 0)


class SupConLoss(nn.Module):
    """``loss(z [N, d], labels [N])``: Khosla's L_out at ``temperature``.

    Args:
        temperature: t (not stated in the poster; 0.07 is the SupCon reference code's default, the paper's
            experiments use 0.1).
        implementation: ``pml`` (pytorch-metric-learning's ``SupConLoss``, equal to the equation whenever the
            batch holds a negative; tested) or ``direct`` (:func:`supcon_loss`).
        gather_distributed: under DDP compute the loss over the embeddings and labels of every process
            (positives and negatives from the global batch), as SimCLR's gather does.
    """

    def __init__(self, temperature: float = 0.07, implementation: str = "pml", gather_distributed: bool = True):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"model.loss_implementation={implementation!r}: expected one of {IMPLEMENTATIONS}")
        if temperature <= 0:
            raise ValueError(f"model.temperature={temperature}: expected > 0")
        self.temperature, self.implementation = float(temperature), implementation
        self.gather_distributed = gather_distributed
        self._pml = None
        if implementation == "pml":
            from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

            self._pml = PMLSupConLoss(temperature=self.temperature)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        if self.gather_distributed and self.training:
            z, labels = gather_with_grad(z), gather_with_grad(labels)
        if self._pml is not None:
            return self._pml(z.float(), labels)
        return supcon_loss(z, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, implementation={self.implementation!r}"
