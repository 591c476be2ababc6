"""Exact top-k for methods that score pairs instead of embedding items (e.g. SSIM between raw images).

A pairwise scorer is ``score(queries [q, ...], gallery [g, ...]) -> Tensor[q, g]``, a similarity (higher =
more alike) between per-item representations (what the method's ``embed()`` returns, e.g. the images).
:func:`pairwise_topk` scans it block by block exactly like :func:`callbacks.search.exact_topk` scans
distances: same candidate masks (leave-one-out ids, same / other group), same exact block top-k and merge,
same tie rule (equal scores: lower gallery index first). The distance it returns is ``-score``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from callbacks.search import SIMILARITY, _block_topk, _merge, block_mask, check_candidates

PairwiseScore = Callable[[Tensor, Tensor], Tensor]
PAIRWISE = "pairwise"  # a module's search_space (or the callback's distance) selecting its pairwise_score

__all__ = ["PAIRWISE", "PairwiseScore", "pairwise_scorer", "pairwise_topk"]


def pairwise_scorer(module, distance: str) -> PairwiseScore | None:
    """``module.pairwise_score`` when ``distance`` is ``pairwise``, else None (embedding distances)."""
    if distance != PAIRWISE:
        return None
    score = getattr(module, "pairwise_score", None)
    if not callable(score):
        raise TypeError(f"distance 'pairwise' needs a method with pairwise_score(queries, gallery); "
                        f"{type(module).__name__} has none")
    return score


def pairwise_topk(queries: Tensor, gallery: Tensor, k: int, score: PairwiseScore, *,
                  query_ids: Tensor | None = None, gallery_ids: Tensor | None = None,
                  query_groups: Tensor | None = None, gallery_groups: Tensor | None = None,
                  candidates: str = "all", query_chunk: int = 4096, gallery_chunk: int = 4096
                  ) -> tuple[Tensor, Tensor]:
    """Exact k best-scoring gallery items per query: ``(-score [Q, k] float32, indices [Q, k] int64)``,
    sorted by descending score, ties by ascending gallery index; excluded pairs never appear (index -1,
    distance inf where fewer than k candidates). Memory: one ``query_chunk x gallery_chunk`` score block
    (the scorer bounds its own working memory)."""
    check_candidates(candidates, query_groups, gallery_groups)
    n_q, n_g = len(queries), len(gallery)
    if k < 1 or k > n_g:
        raise ValueError(f"k={k} must be between 1 and the gallery size {n_g}")
    if query_chunk < 1 or gallery_chunk < 1:
        raise ValueError("query_chunk and gallery_chunk must be >= 1")
    dev = queries.device
    aux = [None if t is None else torch.as_tensor(t, device=dev)
           for t in (query_ids, gallery_ids, query_groups, gallery_groups)]
    out_d = torch.empty(n_q, k, dtype=torch.float32, device=dev)
    out_i = torch.empty(n_q, k, dtype=torch.int64, device=dev)
    for qs in range(0, n_q, query_chunk):
        qe = min(qs + query_chunk, n_q)
        placeholder = (torch.empty(qe - qs, 0, device=dev), None)   # no prepared embedding for scorers
        run_d = torch.empty(qe - qs, 0, device=dev)
        run_i = torch.empty(qe - qs, 0, dtype=torch.int64, device=dev)
        for gs in range(0, n_g, gallery_chunk):
            ge = min(gs + gallery_chunk, n_g)
            block = score(queries[qs:qe], gallery[gs:ge].to(dev)).float()
            if block.shape != (qe - qs, ge - gs):
                raise ValueError(f"pairwise score returned shape {tuple(block.shape)}, expected "
                                 f"({qe - qs}, {ge - gs})")
            mask = block_mask(aux, qs, qe, gs, ge, candidates)
            if mask is not None:
                block = block.masked_fill(~mask, float("-inf"))
            d, i = _block_topk(block, placeholder, k, SIMILARITY)
            run_d, run_i = _merge(torch.cat([run_d, d], 1), torch.cat([run_i, i + gs], 1), k)
        out_d[qs:qe], out_i[qs:qe] = run_d, run_i
    out_i.masked_fill_(torch.isinf(out_d), -1)
    return out_d, out_i
