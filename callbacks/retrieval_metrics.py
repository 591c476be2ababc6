"""Per-query retrieval metrics on ranked relevance (definitions: docs/metrics.md).

``ranked_rel [Q, K']`` holds rel_i of the items at ranks 1..K' (0 for missing items); an item is a hit
when rel_i > 0. Columns beyond K' count as non-relevant. Results are float64 per query.
"""
import torch
from torch import Tensor


def _top(x: Tensor, k: int, fill: float = 0.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """First k columns (as ``dtype``), padded with ``fill`` if x has fewer."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = x[:, :k].to(dtype)
    if x.shape[1] < k:
        x = torch.cat([x, x.new_full((x.shape[0], k - x.shape[1]), fill)], 1)
    return x


def _ranks(k: int, like: Tensor) -> Tensor:
    return torch.arange(1, k + 1, dtype=torch.float64, device=like.device)


def precision_at_k(ranked_rel: Tensor, k: int) -> Tensor:
    """``P@K``: hits in the top k / k (k not capped by the number of relevant items)."""
    return (_top(ranked_rel, k) > 0).sum(1).double() / k


def mean_precision_at_k(ranked_rel: Tensor, k: int) -> Tensor:
    """``mP@K`` (the CT-liver paper's "MAP", ARP): (1/k) * sum_{i=1..k} P@i."""
    hits = (_top(ranked_rel, k) > 0).double()
    return (hits.cumsum(1) / _ranks(k, hits)).mean(1)


def average_precision_at_k(ranked_rel: Tensor, n_relevant: Tensor, k: int) -> Tensor:
    """``AP@K``: sum over relevant items at rank r <= k of P@r, divided by min(k, R); NaN where R == 0."""
    hits = (_top(ranked_rel, k) > 0).double()
    num = (hits * hits.cumsum(1) / _ranks(k, hits)).sum(1)
    r = n_relevant.to(hits.device).double()
    return torch.where(r > 0, num / r.clamp(1, k), torch.full_like(num, float("nan")))


def ndcg_at_k(ranked_rel: Tensor, ideal_rel: Tensor, k: int, gain: str = "exp") -> Tensor:
    """``nDCG@K``: DCG = sum_{i<=k} g(rel_i) / log2(i+1), g = 2^rel - 1 ("exp") or rel ("linear");
    IDCG the same on ``ideal_rel`` (candidates' relevances, sorted descending here); NaN where IDCG == 0."""
    if gain not in ("exp", "linear"):
        raise ValueError(f"unknown gain {gain!r}; valid: exp, linear")
    rel = _top(ranked_rel, k)
    ideal = _top(torch.sort(ideal_rel.double(), dim=1, descending=True).values, k)
    disc = 1.0 / torch.log2(_ranks(k, rel) + 1)
    g = (lambda x: torch.exp2(x) - 1) if gain == "exp" else (lambda x: x)
    dcg, idcg = (g(rel) * disc).sum(1), (g(ideal) * disc).sum(1)
    return torch.where(idcg > 0, dcg / idcg.where(idcg > 0, 1.0), torch.full_like(dcg, float("nan")))


def knn_predict(neighbour_labels: Tensor, k: int) -> Tensor:
    """Majority label of the k nearest neighbours (-1 when none has a label).

    Vote ties go to the label whose nearest occurrence has the smallest rank. Label -1 (a missing
    neighbour, index -1, or an unlabelled item) casts no vote."""
    lab = _top(neighbour_labels, k, fill=-1, dtype=torch.int64)
    valid = lab != -1
    votes = ((lab.unsqueeze(2) == lab.unsqueeze(1)) & valid.unsqueeze(1)).sum(2).masked_fill(~valid, 0)
    return lab.gather(1, votes.argmax(1, keepdim=True)).squeeze(1)     # argmax: first maximum


def knn_accuracy(neighbour_labels: Tensor, query_labels: Tensor, k: int) -> Tensor:
    """``kNN@K``: 1.0 where :func:`knn_predict` equals the query label; an unlabelled query scores 0."""
    pred = knn_predict(neighbour_labels, k)
    q = query_labels.to(pred.device).long()
    return ((pred == q) & (pred != -1) & (q != -1)).double()


def macro_f1(pred: Tensor, true: Tensor) -> float:
    """Macro-averaged F1 over the classes present in ``true`` (labels >= 0; unlabelled queries ignored):
    mean over classes c of 2 TP_c / (2 TP_c + FP_c + FN_c), as sklearn's ``f1_score(average="macro",
    labels=present classes)``. A prediction of -1 counts as wrong."""
    keep = true >= 0
    pred, true = pred[keep].long(), true[keep].long()
    scores = []
    for c in torch.unique(true).tolist():
        tp = ((pred == c) & (true == c)).sum().item()
        fp = ((pred == c) & (true != c)).sum().item()
        fn = ((pred != c) & (true == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores)) if scores else float("nan")
