"""Metric functions: hand-computed cases and independent implementations (sklearn, torchmetrics)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score
from sklearn.neighbors import KNeighborsClassifier
from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_precision
from torchmetrics.retrieval import RetrievalPrecision

from callbacks.retrieval_metrics import (
    average_precision_at_k,
    knn_accuracy,
    mean_precision_at_k,
    ndcg_at_k,
    precision_at_k,
)
from callbacks.search import exact_topk, pairwise_distance

# rows: relevant at ranks {1, 3} (R = 3), nothing relevant (R = 0), relevant at ranks {2, 3, 5} (R = 3)
RANKED = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.float32)
N_REL = torch.tensor([3, 0, 3])
NAN = float("nan")


def assert_metric_equal(actual, expected):
    np.testing.assert_allclose(actual.numpy(), np.array(expected, dtype=np.float64), rtol=1e-12,
                               equal_nan=True)


def test_precision_hand():
    assert_metric_equal(precision_at_k(RANKED, 3), [2 / 3, 0, 2 / 3])
    assert_metric_equal(precision_at_k(RANKED, 5), [2 / 5, 0, 3 / 5])
    assert_metric_equal(precision_at_k(RANKED, 7), [2 / 7, 0, 3 / 7])  # k not capped: missing ranks are misses


def test_mean_precision_hand():
    # row 0: P@1 = 1, P@2 = 1/2, P@3 = 2/3 -> (1 + 1/2 + 2/3) / 3 = 13/18
    # row 2: P@1 = 0, P@2 = 1/2, P@3 = 2/3 -> (0 + 1/2 + 2/3) / 3 = 7/18
    assert_metric_equal(mean_precision_at_k(RANKED, 3), [13 / 18, 0, 7 / 18])
    # k = 5, row 2: (0 + 1/2 + 2/3 + 2/4 + 3/5) / 5 = ((30 + 40 + 30 + 36)/60) / 5 = 136/300
    assert mean_precision_at_k(RANKED, 5)[2].item() == pytest.approx(136 / 300)


def test_average_precision_hand():
    # row 0, k = 3: (P@1 + P@3) / min(3, R=3) = (1 + 2/3) / 3 = 5/9; row 1: R = 0 -> NaN
    # row 2, k = 3: (P@2 + P@3) / 3 = (1/2 + 2/3) / 3 = 7/18
    assert_metric_equal(average_precision_at_k(RANKED, N_REL, 3), [5 / 9, NAN, 7 / 18])
    # row 2, k = 5: (1/2 + 2/3 + 3/5) / min(5, 3) = (53/30) / 3 = 53/90
    assert_metric_equal(average_precision_at_k(RANKED, N_REL, 5), [5 / 9, NAN, 53 / 90])
    # k = 2 < R: row 0: P@1 / min(2, 3) = 1/2; row 2: P@2 / 2 = 1/4
    assert_metric_equal(average_precision_at_k(RANKED, N_REL, 2), [1 / 2, NAN, 1 / 4])


def test_ndcg_hand_binary():
    ideal = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 1, 1]])         # R = 3, 0, 3
    # row 0, k = 3: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/2 = 2.1309 -> 0.70393
    # row 2, k = 3: DCG = 1/log2(3) + 1/log2(4) = 1.1309; IDCG = 2.1309 -> 0.53536
    idcg = 1 + 1 / math.log2(3) + 1 / 2
    expected = [1.5 / idcg, NAN, (1 / math.log2(3) + 1 / 2) / idcg]
    assert_metric_equal(ndcg_at_k(RANKED, ideal, 3, "exp"), expected)
    assert_metric_equal(ndcg_at_k(RANKED, ideal, 3, "linear"), expected)           # binary: 2^1 - 1 = 1


def test_ndcg_hand_graded():
    ranked = torch.tensor([[2.0, 0, 3, 1]])
    ideal = torch.tensor([[1.0, 3, 0, 2, 1]])                      # unsorted on purpose: 3, 2, 1, 1, 0
    # linear, k = 3: DCG = 2 + 0 + 3/2 = 3.5; IDCG = 3 + 2/log2(3) + 1/2 = 4.76186 -> 0.73500
    assert_metric_equal(ndcg_at_k(ranked, ideal, 3, "linear"), [3.5 / (3 + 2 / math.log2(3) + 1 / 2)])
    # exp, k = 3: DCG = 3 + 0 + 7/2 = 6.5; IDCG = 7 + 3/log2(3) + 1/2 = 9.39279 -> 0.69202
    assert_metric_equal(ndcg_at_k(ranked, ideal, 3, "exp"), [6.5 / (7 + 3 / math.log2(3) + 1 / 2)])
    with pytest.raises(ValueError, match="'log'"):
        ndcg_at_k(ranked, ideal, 3, "log")


def test_knn_hand():
    labels = torch.tensor([[3, 1, 1, 3, 2], [-1, 2, -1, 5, 5], [-1, -1, 4, 4, 4]])
    query = torch.tensor([3, 5, -1])
    # row 0: k=1 -> 3 (hit); k=3 -> 1 has 2 votes (miss); k=4 -> 3:2 vs 1:2 tie, 3 is nearer (hit)
    # row 1: -1 casts no vote. k=1 -> no vote (miss); k=4 -> 2:1 vs 5:1 tie, 2 nearer (miss); k=5 -> 5 (hit)
    # row 2: unlabelled query never scores
    assert_metric_equal(knn_accuracy(labels, query, 1), [1, 0, 0])
    assert_metric_equal(knn_accuracy(labels, query, 3), [0, 0, 0])
    assert_metric_equal(knn_accuracy(labels, query, 4), [1, 0, 0])
    assert_metric_equal(knn_accuracy(labels, query, 5), [1, 1, 0])


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_sklearn_graded(k):
    rng = np.random.default_rng(0)
    rel = rng.integers(0, 4, (40, 30)).astype(np.float64)
    rel[3] = 0                                                      # no relevant item: NaN here, skipped
    score = rng.random((40, 30))                                    # untied
    order = np.argsort(-score, axis=1)
    ranked = torch.tensor(np.take_along_axis(rel, order, 1))
    for gain, true in [("linear", rel), ("exp", 2 ** rel - 1)]:
        ours = ndcg_at_k(ranked, torch.tensor(rel), k, gain).numpy()
        assert np.isnan(ours[3])
        ref = [ndcg_score(true[i:i + 1], score[i:i + 1], k=k) for i in range(40) if i != 3]
        np.testing.assert_allclose(np.delete(ours, 3), ref, rtol=1e-10)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_matches_sklearn(metric, k):
    rng = np.random.default_rng(1)
    xg, xq = rng.standard_normal((200, 8)), rng.standard_normal((60, 8))
    yg, yq = rng.integers(0, 2, 200), rng.integers(0, 2, 60)       # binary labels + odd k: no vote ties
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(xg, yg)
    _, idx = exact_topk(torch.tensor(xq), torch.tensor(xg), k, metric)
    ours = knn_accuracy(torch.tensor(yg)[idx], torch.tensor(yq), k).numpy()
    np.testing.assert_array_equal(ours, (clf.predict(xq) == yq).astype(float))


def _ranked_setup(seed=2, n_q=30, n_g=50):
    rng = np.random.default_rng(seed)
    q, g = torch.tensor(rng.standard_normal((n_q, 6))), torch.tensor(rng.standard_normal((n_g, 6)))
    rel = torch.tensor(rng.random((n_q, n_g)) < 0.2)
    dist = pairwise_distance(q, g, "cosine")
    _, idx = exact_topk(q, g, n_g, "cosine")
    return rel, dist, rel.gather(1, idx).float()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_precision_matches_torchmetrics(k):
    rel, dist, ranked = _ranked_setup()
    n_q, n_g = rel.shape
    metric = RetrievalPrecision(top_k=k)
    # positive, untied scores; indexes = query id so torchmetrics ranks each query separately
    metric.update(torch.exp(-dist).flatten(), rel.flatten(), indexes=torch.arange(n_q).repeat_interleave(n_g))
    assert precision_at_k(ranked, k).mean().item() == pytest.approx(metric.compute().item(), abs=1e-6)


def test_trap_torchmetrics_functional_flattens_2d():
    rel, dist, ranked = _ranked_setup()
    k = 5
    ours = precision_at_k(ranked, k).mean().item()
    naive = retrieval_precision(torch.exp(-dist), rel, top_k=k).item()       # ONE ranking of all Q*G pairs
    per_query = np.mean([retrieval_precision(torch.exp(-d), r, top_k=k).item() for d, r in zip(dist, rel)])
    assert ours == pytest.approx(per_query, abs=1e-6)
    assert abs(naive - ours) > 0.01


def test_trap_torchmetrics_nonpositive_scores():
    # One query, the only relevant item is ranked 3rd and has a negative cosine similarity.
    sim = torch.tensor([0.9, 0.2, -0.3])
    rel = torch.tensor([0, 0, 1])
    ours = average_precision_at_k(torch.tensor([[0.0, 0, 1]]), torch.tensor([1]), 3)     # P@3 / 1 = 1/3
    assert ours.item() == pytest.approx(1 / 3)
    assert retrieval_average_precision(torch.exp(sim - 1), rel).item() == pytest.approx(1 / 3)
    assert retrieval_average_precision(sim, rel).item() != pytest.approx(1 / 3)    # raw similarities: wrong
