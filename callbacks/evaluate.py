"""``evaluate_retrieval``: exact search + retrieval metrics on plain arrays (numpy or torch); the definitions
and the query rule are in docs/metrics.md."""
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from callbacks.pairwise import pairwise_topk
from callbacks.relevance import Rule, SameLabel, get_relevance, is_binary
from callbacks.retrieval_metrics import (
    average_precision_at_k,
    knn_accuracy,
    knn_predict,
    macro_f1,
    mean_precision_at_k,
    ndcg_at_k,
    precision_at_k,
)
from callbacks.search import KEYED_CANDIDATES, block_mask, check_candidates, check_distance, exact_topk
from callbacks.validation import as_tensor, check_retrieval_inputs

METRICS = ("mP", "P", "AP", "nDCG", "nDCG_lin", "kNN", "kNN_F1")
DEFAULT_METRICS = METRICS[:-1]  # kNN_F1 (lesion-type classification) on request
ArrayLike = np.ndarray | Tensor


def _tensor(x: ArrayLike | None, device: torch.device, name: str = "array") -> Tensor | None:
    return None if x is None else as_tensor(x, name).to(device)


def retrieved_relevance(rule: Rule, q_labels: Tensor, g_labels: Tensor, indices: Tensor,
                        max_block: int = 1 << 22) -> Tensor:
    """rel of each retrieved item [Q, K] (0 where the index is -1), from the rule's [q, g] blocks: the
    rule runs on c queries x their c*K neighbours, and the diagonal blocks are kept."""
    n_q, k = indices.shape
    out = torch.zeros(n_q, k, dtype=torch.float32, device=indices.device)
    c = max(1, int((max_block / max(k, 1)) ** 0.5))
    for s in range(0, n_q, c):
        e = min(s + c, n_q)
        diag = torch.arange(e - s, device=indices.device)
        rel = rule(q_labels[s:e], g_labels[indices[s:e].clamp_min(0).reshape(-1)])
        out[s:e] = rel.reshape(e - s, e - s, k)[diag, diag].float()
    return out.masked_fill_(indices < 0, 0.0)


def _count_equal(q_keys: list[Tensor], g_keys: list[Tensor]) -> Tensor:
    """For each query, the number of gallery items whose keys all equal the query's."""
    q, g = torch.stack([t.long() for t in q_keys], 1), torch.stack([t.long() for t in g_keys], 1)
    inv = torch.unique(torch.cat([q, g]), dim=0, return_inverse=True)[1]
    counts = torch.bincount(inv[len(q):], minlength=len(q) + len(g))
    return counts[inv[: len(q)]]


def _same_label_counts(q_labels: Tensor, g_labels: Tensor, ids: tuple[Tensor, Tensor] | None,
                       groups: tuple[Tensor, Tensor] | None, candidates: str) -> Tensor:
    """Fast path of ``relevant_candidates`` for SameLabel (integer keys): inclusion-exclusion counts."""
    def same(extra: list[tuple[Tensor, Tensor]]) -> Tensor:      # same label and same extra keys
        return _count_equal([q_labels] + [a for a, _ in extra], [g_labels] + [b for _, b in extra])

    def allowed(extra: list[tuple[Tensor, Tensor]]) -> Tensor:   # ... minus the excluded equal ids
        return same(extra) - same(extra + [ids]) if ids is not None else same(extra)
    if candidates == "all":
        r = allowed([])
    elif candidates == "same_group":
        r = allowed([groups])
    else:
        r = allowed([]) - allowed([groups])
    return r.masked_fill(q_labels == -1, 0)


def _scan(rule: Rule, q_labels: Tensor, g_labels: Tensor, k: int, graded: bool, aux: list[Tensor | None],
          candidates: str, query_chunk: int, gallery_chunk: int) -> tuple[Tensor, Tensor | None]:
    """R [Q] and, if ``graded``, the top-k candidate relevances [Q, k], block by block."""
    n_q, n_g = len(q_labels), len(g_labels)
    r = torch.zeros(n_q, dtype=torch.int64, device=q_labels.device)
    ideal = []
    for qs in range(0, n_q, query_chunk):
        qe = min(qs + query_chunk, n_q)
        run = torch.zeros(qe - qs, 0, device=q_labels.device)
        for gs in range(0, n_g, gallery_chunk):
            ge = min(gs + gallery_chunk, n_g)
            rel = rule(q_labels[qs:qe], g_labels[gs:ge]).float()
            mask = block_mask(aux, qs, qe, gs, ge, candidates)
            if mask is not None:
                rel = rel.masked_fill(~mask, 0.0)
            r[qs:qe] += (rel > 0).sum(1)
            if graded:
                run = torch.cat([run, rel], 1)
                run = run.topk(min(k, run.shape[1]), dim=1).values
        ideal.append(run)
    return r, torch.cat(ideal) if graded else None


def relevant_candidates(rule: Rule, q_labels: Tensor, g_labels: Tensor, k: int, *,
                        query_ids: Tensor | None = None, gallery_ids: Tensor | None = None,
                        query_groups: Tensor | None = None, gallery_groups: Tensor | None = None,
                        candidates: str = "all", query_chunk: int = 4096, gallery_chunk: int = 4096
                        ) -> tuple[Tensor, Tensor]:
    """R (number of relevant candidates) [Q] and the ideal top-k relevances [Q, k] (descending) over the
    candidates ``exact_topk`` searches (same ``candidate_mask``), in blocks; for binary rules the ideal
    list is min(R, k) ones. SameLabel with integer keys takes a counting fast path (equal results)."""
    check_candidates(candidates, query_groups, gallery_groups)
    aux = [query_ids, gallery_ids, query_groups, gallery_groups]
    ids = None if query_ids is None or gallery_ids is None else (query_ids, gallery_ids)
    groups = None if candidates == "all" else (query_groups, gallery_groups)
    keys = [q_labels, g_labels] + list(ids or ()) + list(groups or ())
    if isinstance(rule, SameLabel) and q_labels.ndim == 1 and not any(t.is_floating_point() for t in keys) \
            and candidates not in KEYED_CANDIDATES:
        r, ideal = _same_label_counts(q_labels, g_labels, ids, groups, candidates), None
    else:
        r, ideal = _scan(rule, q_labels, g_labels, k, not is_binary(rule), aux, candidates,
                         query_chunk, gallery_chunk)
    if ideal is None:
        ideal = (torch.arange(k, device=r.device) < r.unsqueeze(1)).float()
    return r, ideal


def evaluate_retrieval(query_embeddings: ArrayLike, gallery_embeddings: ArrayLike, query_labels: ArrayLike,
                       gallery_labels: ArrayLike, *, k_values: Sequence[int] = (1, 5, 10),
                       distance: str = "cosine", relevance: str | Rule = "same_label",
                       metrics: Sequence[str] = DEFAULT_METRICS,
                       query_ids: ArrayLike | None = None, gallery_ids: ArrayLike | None = None,
                       query_groups: ArrayLike | None = None, gallery_groups: ArrayLike | None = None,
                       candidates: str = "all", query_chunk: int = 4096, gallery_chunk: int = 4096,
                       return_neighbours: bool = False, pairwise_score=None):
    """Exact retrieval metrics (docs/metrics.md) as a flat dict: ``{metric}@{k}`` for each k in ``k_values``
    and each of ``metrics`` (mP, P, AP, nDCG [exp gain], nDCG_lin [linear gain], kNN [accuracy of the
    k-NN majority vote], kNN_F1 [its macro-F1 over the query classes]), plus the counts
    ``n_queries``, ``n_gallery`` and ``n_queries_without_relevant``.

    One ``exact_topk`` search with k = max(k_values) (same distance / ids / groups / candidates rules);
    relevance from ``relevance`` (see ``callbacks.relevance``) on the retrieved items only, R and the
    ideal ranking over all candidates in blocks.

    Query rule (docs/metrics.md): every metric of one call (one candidate set) is averaged over the SAME
    queries, those with at least one relevant candidate (R > 0). A query without one (no candidate at all
    in a restricted set, or none of its class) is not scored by any metric; otherwise P@1 and AP@1 would
    average over different queries and disagree. Counts: ``n_queries`` (all), ``n_queries_scored`` and
    ``n_queries_without_relevant``; with no scored query every metric is NaN. kNN@K / kNN_F1@K are only
    computed for single-label integer labels (skipped for multi-label). With ``return_neighbours=True``
    the result is ``(metrics, distances [Q, kmax], indices [Q, kmax])`` from the search, for figures.

    ``pairwise_score(queries, gallery) -> [q, g]`` (a similarity, see ``callbacks.pairwise``) replaces the
    embedding distance: the "embeddings" are then whatever per-item representation the scorer reads (e.g.
    images), searched block by block by ``pairwise_topk`` with the same masks and tie rule.
    """
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(METRICS)}")
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
    rule = get_relevance(relevance)
    q_emb = as_tensor(query_embeddings, "query_embeddings")
    dev = q_emb.device
    g_emb = q_emb if gallery_embeddings is query_embeddings else _tensor(gallery_embeddings, dev,
                                                                         "gallery_embeddings")
    q_lab, g_lab = _tensor(query_labels, dev, "query_labels"), _tensor(gallery_labels, dev, "gallery_labels")
    if pairwise_score is None:  # a pairwise scorer ranks by its own score (search_space "pairwise")
        check_distance(distance)
    check_retrieval_inputs(q_emb, g_emb, q_lab, g_lab, rule, ks, items=pairwise_score is not None)
    aux = {"query_ids": _tensor(query_ids, dev), "gallery_ids": _tensor(gallery_ids, dev),
           "query_groups": _tensor(query_groups, dev), "gallery_groups": _tensor(gallery_groups, dev),
           "candidates": candidates}
    if pairwise_score is None:
        dist, idx = exact_topk(q_emb, g_emb, ks[-1], distance, query_chunk=query_chunk,
                               gallery_chunk=gallery_chunk, **aux)
    else:
        dist, idx = pairwise_topk(q_emb, g_emb, ks[-1], pairwise_score, query_chunk=query_chunk,
                                  gallery_chunk=gallery_chunk, **aux)
    ranked = retrieved_relevance(rule, q_lab, g_lab, idx)
    n_rel, ideal = relevant_candidates(rule, q_lab, g_lab, ks[-1], query_chunk=query_chunk,
                                       gallery_chunk=gallery_chunk, **aux)
    single_label = q_lab.ndim == 1 and not q_lab.is_floating_point()
    neighbour_labels = g_lab[idx.clamp_min(0)].masked_fill(idx < 0, -1) if single_label else None
    per_query = {
        "mP": lambda k: mean_precision_at_k(ranked, k),
        "P": lambda k: precision_at_k(ranked, k),
        "AP": lambda k: average_precision_at_k(ranked, n_rel, k),
        "nDCG": lambda k: ndcg_at_k(ranked, ideal, k, "exp"),
        "nDCG_lin": lambda k: ndcg_at_k(ranked, ideal, k, "linear"),
        "kNN": lambda k: knn_accuracy(neighbour_labels, q_lab, k),
    }
    scored = n_rel > 0                      # the query rule: the same queries for every metric
    n_scored = int(scored.sum())
    out: dict[str, float] = {}
    for k in ks:
        for m in metrics:
            if m.startswith("kNN") and not single_label:
                continue
            if not n_scored:
                out[f"{m}@{k}"] = float("nan")
            elif m == "kNN_F1":
                out[f"{m}@{k}"] = macro_f1(knn_predict(neighbour_labels[scored], k), q_lab[scored])
            else:
                out[f"{m}@{k}"] = float(per_query[m](k)[scored].mean())
    out.update(n_queries=len(q_emb), n_gallery=len(g_emb), n_queries_scored=n_scored,
               n_queries_without_relevant=len(q_emb) - n_scored)
    return (out, dist, idx) if return_neighbours else out
