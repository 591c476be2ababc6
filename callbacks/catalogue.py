"""IG-CBIR's catalogue protocol (Silva et al. 2020, reference code) and graded nDCG from an expert ranking.

``paper``: for each seed, a stratified split of the pool (the query split, e.g. CheXpert's frontal
validation images) makes a catalogue of ``size`` images; the single query is the last positive image left
in the pool; precision = positives among the top K / K, K = the number of positives in the catalogue
(R-precision). Reported per catalogue size as the mean over seeds and its min / max:

    ``<stage>/paper/P@cat<size>``, ``<stage>/paper/P@cat<size>_min``, ``<stage>/paper/P@cat<size>_max``,
    ``<stage>/paper/K@cat<size>`` (mean K over seeds).

Expert ranking (the paper's nDCG; its rankings are not public): a CSV with columns ``query``, ``image``,
``rank`` naming images by their CSV ``Path`` (ranks 1..n within a query's catalogue of n images). Graded
relevance rel = ((n + 1) - rank) / 2 + 0.5 (rank 1 of 10 -> 5.5, rank 10 -> 1.0); the method ranks each
catalogue by its own distance and nDCG@K uses the exponential gain 2^rel - 1 (docs/metrics.md), logged as
``<stage>/paper/nDCG_expert@K`` with ``n_expert_queries``.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from callbacks.evaluate import evaluate_retrieval

PAPER_SEEDS = (42, 1, 27, 57, 77)
PAPER_SIZES = (10, 20, 30)


def paper_catalogue(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, int]:
    """(catalogue indices, query index) of one seed: sklearn ``train_test_split(train_size=size,
    stratify=labels, random_state=seed)`` of the pool, as the reference code; the query is the last
    positive of the remaining pool."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if size >= n:
        raise ValueError(f"catalogue of {size} images needs a pool of more than {size} images (one query is "
                         f"left out), but the pool holds {n}; lower catalogue sizes or enlarge the query split")
    catalogue, rest = train_test_split(np.arange(n), train_size=size, stratify=labels, random_state=seed)
    positives = [i for i in rest if labels[i] > 0]
    if not positives:
        raise ValueError(f"seed {seed}, catalogue {size}: no positive image left in the pool for the query")
    return np.asarray(catalogue), int(positives[-1])


def graded_relevance(rank: Tensor, n: int) -> Tensor:
    """Expert rank (1 = most similar) of a catalogue of ``n`` images -> rel = ((n + 1) - rank) / 2 + 0.5."""
    return ((n + 1) - rank.double()) / 2 + 0.5


def read_expert_ranking(path: str | Path, names: Sequence[str]) -> dict[int, tuple[Tensor, Tensor]]:
    """``{query index: (catalogue indices, ranks)}`` from a ranking CSV (columns query, image, rank), images
    named as in ``names`` (the split's CSV paths). One clear error for an unknown image or a bad rank."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expert ranking {path} not found (expected a CSV with columns query, image, rank)")
    index = {name: i for i, name in enumerate(names)}
    per_query: dict[int, list[tuple[int, int]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("query", "image", "rank") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected query, image, rank")
        for line, rec in enumerate(reader, start=2):
            for column in ("query", "image"):
                if rec[column].strip() not in index:
                    raise ValueError(f"{path} line {line}: {column} = {rec[column]!r} is not an image of the "
                                     f"evaluated split (expected a CSV Path such as {names[0]!r})")
            try:
                rank = int(rec["rank"])
            except ValueError:
                rank = 0
            if rank < 1:
                raise ValueError(f"{path} line {line}: rank = {rec['rank']!r}: expected an integer >= 1")
            per_query.setdefault(index[rec["query"].strip()], []).append((index[rec["image"].strip()], rank))
    out = {}
    for q, items in per_query.items():
        ranks = sorted(r for _, r in items)
        if ranks != list(range(1, len(items) + 1)):
            raise ValueError(f"{path}: query {names[q]!r} has ranks {ranks}; expected 1..{len(items)} once each")
        out[q] = (torch.tensor([i for i, _ in items]), torch.tensor([r for _, r in items]))
    return out


@dataclass
class CatalogueProtocol:
    """The ``paper`` protocol's settings (config key ``catalogue`` of ``RetrievalEvaluation``).

    Args:
        sizes: catalogue sizes (paper 10, 20, 30).
        seeds: one stratified catalogue per seed (reference code 42, 1, 27, 57, 77).
        expert_ranking: optional ranking CSV (module docstring) for graded nDCG; None = not computed.
        ndcg_k: cut-offs of the expert nDCG.
        stages: evaluation stages that run it (default test: the pool is the held-out validation set).
    """

    sizes: Sequence[int] = PAPER_SIZES
    seeds: Sequence[int] = PAPER_SEEDS
    expert_ranking: str | None = None
    ndcg_k: Sequence[int] = field(default_factory=lambda: [5, 10])
    stages: Sequence[str] = ("test",)

    def __post_init__(self):
        if not self.sizes or any(int(s) < 2 for s in self.sizes):
            raise ValueError(f"catalogue sizes {list(self.sizes)}: expected integers >= 2")
        if not self.seeds:
            raise ValueError("catalogue seeds: expected at least one seed")
        if any(s not in ("val", "test") for s in self.stages):
            raise ValueError(f"catalogue stages {list(self.stages)}: expected val and/or test")

    def evaluate(self, embeddings: Tensor, labels: Tensor, names: Callable[[], Sequence[str]] | None,
                 distance: str, pairwise_score=None) -> dict[str, float]:
        """The protocol's metrics (keys without the stage prefix) on the pool's embeddings and 0/1 labels."""
        labels_np = np.asarray(torch.as_tensor(labels)).astype(int)
        out: dict[str, float] = {}
        for size in self.sizes:
            precisions, ks = [], []
            for seed in self.seeds:
                cat, q = paper_catalogue(labels_np, int(size), int(seed))
                k = int(labels_np[cat].sum())
                res = evaluate_retrieval(embeddings[q:q + 1], embeddings[cat], labels[q:q + 1], labels[cat],
                                         k_values=[k], metrics=["P"], distance=distance,
                                         pairwise_score=pairwise_score)
                precisions.append(res[f"P@{k}"])
                ks.append(k)
            key = f"paper/P@cat{size}"
            out.update({key: float(np.mean(precisions)), f"{key}_min": float(np.min(precisions)),
                        f"{key}_max": float(np.max(precisions)), f"paper/K@cat{size}": float(np.mean(ks))})
        if self.expert_ranking is not None:
            if names is None:
                raise ValueError("expert_ranking needs a DataModule with paths(split) naming its images")
            out.update(self.expert_ndcg(embeddings, read_expert_ranking(self.expert_ranking, names()),
                                        distance, pairwise_score))
        return out

    def expert_ndcg(self, embeddings: Tensor, ranking: dict[int, tuple[Tensor, Tensor]], distance: str,
                    pairwise_score=None) -> dict[str, float]:
        """Mean nDCG@K (exp gain) of the method's ordering of each expert-ranked catalogue."""
        per_k: dict[int, list[float]] = {int(k): [] for k in self.ndcg_k}
        for q, (cat, ranks) in ranking.items():
            rel = graded_relevance(ranks, len(cat))
            rule = lambda q_, g: g.double().reshape(1, -1).expand(len(q_), -1)  # noqa: E731  graded: item's rel
            for k in per_k:
                res = evaluate_retrieval(embeddings[q:q + 1], embeddings[cat], torch.zeros(1), rel,
                                         k_values=[min(k, len(cat))], metrics=["nDCG"], distance=distance,
                                         relevance=rule, pairwise_score=pairwise_score)
                per_k[k].append(res[f"nDCG@{min(k, len(cat))}"])
        out = {f"paper/nDCG_expert@{k}": float(np.mean(v)) for k, v in per_k.items()}
        out["paper/n_expert_queries"] = float(len(ranking))
        return out
