"""Exact, chunked k-nearest-neighbour search (docs/metrics.md: ranking with ties broken by gallery index).

The Q x G distance matrix is never materialised: queries and gallery are processed in blocks of
``query_chunk x gallery_chunk``; each block's top-k is merged into a running top-k.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.validation import check_search_inputs

DISTANCES = ("cosine", "euclidean", "hamming")
CANDIDATES = ("all", "same_group", "other_group", "other_group_same_key")
#: candidates whose groups are [N, 2] columns (group, key): another group and the same key (e.g. sequence)
KEYED_CANDIDATES = ("other_group_same_key",)
SIMILARITY = "similarity"  # scores of a pairwise scorer (callbacks.pairwise): distance = -score
Prepared = tuple[Tensor, Tensor | None]


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    return distance


def _to_pm1(x: Tensor) -> Tensor:
    """Binary codes as +-1 floats; accepts +-1 or {0,1} codes (a code without 0 is read as +-1)."""
    if ((x != 0) & (x != 1) & (x != -1)).any():
        raise ValueError("hamming distance needs binary codes in {0,1} or {-1,+1}")
    has_neg, has_zero = bool((x == -1).any()), bool((x == 0).any())
    if has_neg and has_zero:
        raise ValueError("hamming codes mix -1 and 0; use either {0,1} or {-1,+1}")
    return x * 2 - 1 if has_zero else x


def prepare(x: Tensor, distance: str) -> Prepared:
    """Once per call: float32 embeddings (L2-normalised for cosine, +-1 for hamming) and, for
    euclidean, the squared norms."""
    x = x.float()
    if distance == "cosine":
        return F.normalize(x, dim=1), None
    if distance == "hamming":
        return _to_pm1(x), None
    return x, torch.einsum("ij,ij->i", x, x)


def score_block(q: Prepared, g: Prepared, distance: str, out: Tensor | None = None) -> Tensor:
    """One matmul on prepared blocks giving a score that decreases with the distance:
    <q,g> (cosine, hamming) or 2<q,g> - |g|^2 (euclidean, via addmm). ``finish`` maps it to distances."""
    (qx, _), (gx, g_sq) = q, g
    if distance == "euclidean":
        return torch.addmm(g_sq.neg().unsqueeze(0), qx, gx.t(), alpha=2.0, out=out)
    return torch.mm(qx, gx.t(), out=out)


def finish(score: Tensor, q: Prepared, distance: str) -> Tensor:
    """In place, scores of the query rows of ``q`` -> distances (monotone decreasing per row):
    cosine 1 - s; hamming (D - s) / 2 on +-1 codes; euclidean sqrt(max(|q|^2 - s, 0)); similarity -s."""
    if distance == SIMILARITY:
        return score.neg_()
    if distance == "cosine":
        return score.neg_().add_(1.0)
    if distance == "hamming":
        return score.neg_().add_(q[0].shape[1]).mul_(0.5)
    return score.neg_().add_(q[1].unsqueeze(1)).clamp_min_(0.0).sqrt_()


def distance_block(q: Prepared, g: Prepared, distance: str, out: Tensor | None = None) -> Tensor:
    """Distances between prepared blocks (``prepare``): score_block + finish."""
    return finish(score_block(q, g, distance, out), q, distance)


def pairwise_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    """Dense [len(a), len(b)] distance block ('cosine', 'euclidean' or 'hamming'), float32."""
    check_distance(distance)
    return distance_block(prepare(a, distance), prepare(b, distance), distance)


def check_candidates(candidates: str, query_groups: Tensor | None, gallery_groups: Tensor | None) -> None:
    if candidates not in CANDIDATES:
        raise ValueError(f"unknown candidates {candidates!r}; valid: {', '.join(CANDIDATES)}")
    if candidates != "all" and (query_groups is None or gallery_groups is None):
        raise ValueError(f"candidates={candidates!r} needs query_groups and gallery_groups")
    if candidates in KEYED_CANDIDATES and any(t.ndim != 2 or t.shape[1] != 2 for t in (query_groups, gallery_groups)):
        raise ValueError(f"candidates={candidates!r} needs groups of shape [N, 2] (group, key), got "
                         f"{tuple(query_groups.shape)} and {tuple(gallery_groups.shape)}")


def candidate_mask(query_ids: Tensor | None, gallery_ids: Tensor | None,
                   query_groups: Tensor | None, gallery_groups: Tensor | None,
                   candidates: str = "all") -> Tensor | None:
    """Bool [q, g] block of allowed pairs (None: all allowed). Pairs with equal ids are excluded
    (leave-one-out); ``same_group``/``other_group`` keep only gallery items of the same/another group;
    ``other_group_same_key`` (groups [N, 2] = (group, key)): another group with the same key."""
    mask = None
    if query_ids is not None and gallery_ids is not None:
        mask = query_ids.unsqueeze(1) != gallery_ids.unsqueeze(0)
    if candidates in KEYED_CANDIDATES:
        same_key = query_groups[:, 1].unsqueeze(1) == gallery_groups[:, 1].unsqueeze(0)
        group_ok = (query_groups[:, 0].unsqueeze(1) != gallery_groups[:, 0].unsqueeze(0)) & same_key
        mask = group_ok if mask is None else mask & group_ok
    elif candidates != "all":
        same = query_groups.unsqueeze(1) == gallery_groups.unsqueeze(0)
        group_ok = same if candidates == "same_group" else ~same
        mask = group_ok if mask is None else mask & group_ok
    return mask


def block_mask(aux: list[Tensor | None], qs: int, qe: int, gs: int, ge: int,
               candidates: str) -> Tensor | None:
    """``candidate_mask`` of the block queries[qs:qe] x gallery[gs:ge];
    aux = [query_ids, gallery_ids, query_groups, gallery_groups] (entries may be None)."""
    q_ids, g_ids, q_groups, g_groups = (None if t is None else t[s:e] for t, s, e in
                                        zip(aux, (qs, gs, qs, gs), (qe, ge, qe, ge)))
    return candidate_mask(q_ids, g_ids, q_groups, g_groups, candidates)


def _rows(q: Prepared, rows: Tensor) -> Prepared:
    return q[0][rows], None if q[1] is None else q[1][rows]


def _block_topk(score: Tensor, q: Prepared, k: int, distance: str) -> tuple[Tensor, Tensor]:
    """Exact (distance, index)-smallest k of each row of a score block, as a set (the merge orders it).

    torch.topk is not stable, and ``finish`` may map distinct scores to equal distances: where the
    k-th distance equals the (k+1)-th, the tied slots are refilled with the lowest column indices
    holding that distance."""
    n = score.shape[1]
    if n <= k:
        idx = torch.arange(n, device=score.device).expand_as(score).clone()
        return finish(score.clone(), q, distance), idx
    vals, idx = torch.topk(score, k + 1, dim=1, largest=True, sorted=True)
    vals = finish(vals, q, distance)
    tied = (vals[:, k] == vals[:, k - 1]) & torch.isfinite(vals[:, k - 1])
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        full = finish(score[rows], _rows(q, rows), distance)
        thr = vals[rows, k - 1].unsqueeze(1)
        n_less = (vals[rows] < thr).sum(1, keepdim=True)         # all selected, in front (sorted)
        eq = full == thr
        take = eq & (eq.cumsum(1, dtype=torch.int32) <= k - n_less)
        slots = torch.arange(k, device=score.device).unsqueeze(0) >= n_less
        sub = idx[rows]
        sub[slots] = take.nonzero()[:, 1]                          # row-major order on both sides
        idx[rows] = sub
    return vals, idx


def _merge(d: Tensor, i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sort candidates by (distance, gallery index) and keep the first k."""
    i, order = torch.sort(i, dim=1)
    d = torch.gather(d, 1, order)
    d, order = torch.sort(d, dim=1, stable=True)
    return d[:, :k], torch.gather(i, 1, order[:, :k])


def exact_topk(queries: Tensor, gallery: Tensor, k: int, distance: str = "cosine", *,
               query_ids: Tensor | None = None, gallery_ids: Tensor | None = None,
               query_groups: Tensor | None = None, gallery_groups: Tensor | None = None,
               candidates: str = "all", query_chunk: int = 4096, gallery_chunk: int = 4096
               ) -> tuple[Tensor, Tensor]:
    """Exact k nearest gallery items of each query: ``(distances [Q,k] float32, indices [Q,k] int64)``.

    Sorted by ascending distance, ties broken by ascending gallery index. Pairs excluded by
    ``candidate_mask`` (equal ids, group rule) never appear; missing slots get index -1, distance inf.
    Memory: inputs + one ``query_chunk x gallery_chunk`` block + O(Q k); computed on the inputs' device.
    ``hamming`` searches bit-packed codes (:mod:`callbacks.hamming`; float embeddings are an error).
    """
    check_distance(distance)
    check_candidates(candidates, query_groups, gallery_groups)
    check_search_inputs(queries, gallery, distance, k, query_ids=query_ids, gallery_ids=gallery_ids,
                        query_groups=query_groups, gallery_groups=gallery_groups)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"need [Q, D] and [G, D] inputs, got {tuple(queries.shape)}, {tuple(gallery.shape)}")
    n_q, n_g = queries.shape[0], gallery.shape[0]
    if k < 1 or k > n_g:
        raise ValueError(f"k={k} must be between 1 and the gallery size {n_g}")
    if query_chunk < 1 or gallery_chunk < 1:
        raise ValueError("query_chunk and gallery_chunk must be >= 1")
    if distance == "hamming":
        return _hamming_topk(queries, gallery, k, [query_ids, gallery_ids, query_groups, gallery_groups],
                             candidates, query_chunk, gallery_chunk)
    dev = queries.device
    q = prepare(queries, distance)
    g = q if gallery is queries else prepare(gallery.to(dev), distance)
    aux = [None if t is None else torch.as_tensor(t, device=dev)
           for t in (query_ids, gallery_ids, query_groups, gallery_groups)]
    out_d = torch.empty(n_q, k, dtype=torch.float32, device=dev)
    out_i = torch.empty(n_q, k, dtype=torch.int64, device=dev)
    qc, gc = min(query_chunk, max(n_q, 1)), min(gallery_chunk, n_g)
    buf = torch.empty(qc * gc, dtype=torch.float32, device=dev)
    for qs in range(0, n_q, qc):
        qe = min(qs + qc, n_q)
        qb = tuple(None if t is None else t[qs:qe] for t in q)
        run_d = torch.empty(qe - qs, 0, device=dev)
        run_i = torch.empty(qe - qs, 0, dtype=torch.int64, device=dev)
        for gs in range(0, n_g, gc):
            ge = min(gs + gc, n_g)
            gb = tuple(None if t is None else t[gs:ge] for t in g)
            block = score_block(qb, gb, distance, out=buf[: (qe - qs) * (ge - gs)].view(qe - qs, ge - gs))
            mask = block_mask(aux, qs, qe, gs, ge, candidates)
            if mask is not None:
                block.masked_fill_(~mask, float("-inf"))
            d, i = _block_topk(block, qb, k, distance)
            run_d, run_i = _merge(torch.cat([run_d, d], 1), torch.cat([run_i, i + gs], 1), k)
        out_d[qs:qe], out_i[qs:qe] = run_d, run_i
    out_i.masked_fill_(torch.isinf(out_d), -1)
    return out_d, out_i


def _hamming_topk(queries: Tensor, gallery: Tensor, k: int, aux: list, candidates: str, query_chunk: int,
                  gallery_chunk: int) -> tuple[Tensor, Tensor]:
    """``exact_topk`` for distance="hamming": bit-packed search (:mod:`callbacks.hamming`), same exclusions
    and tie rule; float (non-binary) embeddings are a ValueError."""
    from callbacks.hamming import hamming_topk

    aux = [None if t is None else torch.as_tensor(t).cpu() for t in aux]
    restricted = (aux[0] is not None and aux[1] is not None) or candidates != "all"

    def mask_fn(qs: int, qe: int, gs: int, ge: int):
        mask = block_mask(aux, qs, qe, gs, ge, candidates)
        return None if mask is None else mask.numpy()

    return hamming_topk(queries, gallery, k, mask_fn=mask_fn if restricted else None, restricted=restricted,
                        query_chunk=min(query_chunk, 256), gallery_chunk=gallery_chunk)
