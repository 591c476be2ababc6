"""evaluate_retrieval end to end: hand-computed case, policies, fast path == generic path, sklearn nDCG."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from callbacks.evaluate import evaluate_retrieval, relevant_candidates
from callbacks.relevance import SameLabel, SharedLabelCount, get_relevance
from callbacks.search import pairwise_distance

# 1-D embeddings on a line, leave-one-out (query set = gallery).
X = np.array([[0.0], [1.0], [2.5], [4.5], [7.0]], dtype=np.float32)
Y = np.array([0, 0, 1, 0, 1])
IDS = np.arange(5)


def test_hand_computed_leave_one_out():
    # Rankings (euclidean, self excluded) and relevance (same label):
    #   q0: [1, 2, 3, 4] rel [1, 0, 1, 0] R=2      q1: [0, 2, 3, 4] rel [1, 0, 1, 0] R=2
    #   q2: [1, 3, 0, 4] rel [0, 0, 0, 1] R=1      q3: [2, 4, 1, 0] rel [0, 0, 1, 1] R=2
    #   q4: [3, 2, 1, 0] rel [0, 1, 0, 0] R=1
    m = evaluate_retrieval(X, X, Y, Y, k_values=(1, 2), distance="euclidean", query_ids=IDS, gallery_ids=IDS)
    idcg2 = 1 + 1 / math.log2(3)
    expected = {
        "P@1": 2 / 5, "mP@1": 2 / 5, "AP@1": 2 / 5, "nDCG@1": 2 / 5, "nDCG_lin@1": 2 / 5, "kNN@1": 2 / 5,
        # P@2: q0 1/2, q1 1/2, q4 1/2 -> 1.5 / 5
        "P@2": 0.3,
        # mP@2: q0 (1 + 1/2)/2, q1 the same, q4 (0 + 1/2)/2 -> (0.75 + 0.75 + 0.25) / 5
        "mP@2": 0.35,
        # AP@2: q0 1/min(2,2), q1 the same, q4 (1/2)/min(2,1) -> (0.5 + 0.5 + 0.5) / 5
        "AP@2": 0.3,
        # nDCG@2: q0, q1 1/(1 + 1/log2 3); q4 (1/log2 3)/1; q2, q3 0
        "nDCG@2": (2 / idcg2 + 1 / math.log2(3)) / 5, "nDCG_lin@2": (2 / idcg2 + 1 / math.log2(3)) / 5,
        # kNN@2: q0 [0, 1] tie -> nearest 0 (hit); q1 [0, 1] (hit);
        #        q2 [0, 0], q3 [1, 1], q4 [0, 1] tie -> 0 (misses)
        "kNN@2": 2 / 5,
        "n_queries": 5, "n_gallery": 5, "n_queries_scored": 5, "n_queries_without_relevant": 0,
    }
    assert m == pytest.approx(expected, rel=1e-12)


def test_queries_without_relevant_policy():
    # Queries: label 0 at x=0 (ranking [0, 1, 2, 3, 4], rel [1, 1, 0, 1, 0], R=3), label 2 (absent from the
    # gallery) and label -1 (unlabelled): the last two have no relevant item.
    q = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    m = evaluate_retrieval(q, X, np.array([0, 2, -1]), Y, k_values=(1, 2), distance="euclidean")
    assert m["n_queries_without_relevant"] == 2 and m["n_queries_scored"] == 1 and m["n_queries"] == 3
    # One rule for every metric: only the first query is scored (docs/metrics.md).
    assert m["P@2"] == m["mP@2"] == m["kNN@1"] == m["AP@2"] == pytest.approx(1.0)
    assert m["nDCG@2"] == pytest.approx(1.0)
    none = evaluate_retrieval(q[1:], X, np.array([2, -1]), Y, k_values=(1,), distance="euclidean")
    assert none["n_queries_scored"] == 0 and all(np.isnan(none[k]) for k in ("P@1", "AP@1", "kNN@1"))


def test_return_neighbours_and_input_types():
    m, d, i = evaluate_retrieval(X, X, Y, Y, k_values=(1, 3), distance="euclidean", query_ids=IDS,
                                 gallery_ids=IDS, return_neighbours=True)
    assert d.shape == i.shape == (5, 3) and i[0].tolist() == [1, 2, 3]
    m_torch = evaluate_retrieval(torch.tensor(X), torch.tensor(X), torch.tensor(Y), torch.tensor(Y),
                                 k_values=(1, 3), distance="euclidean", query_ids=torch.tensor(IDS),
                                 gallery_ids=torch.tensor(IDS))
    assert m_torch == m


class GenericSameLabel:
    """SameLabel through the generic block path (not an instance of SameLabel)."""

    binary = True

    def __call__(self, q, g):
        return SameLabel()(q, g)


@pytest.mark.parametrize("candidates", ["all", "same_group", "other_group"])
@pytest.mark.parametrize("with_ids", [False, True])
def test_same_label_fast_path_equals_generic(candidates, with_ids):
    rng = np.random.default_rng(0)
    n_q, n_g = 70, 90
    ql, gl = torch.tensor(rng.integers(-1, 4, n_q)), torch.tensor(rng.integers(-1, 4, n_g))
    qg, gg = torch.tensor(rng.integers(0, 5, n_q)), torch.tensor(rng.integers(0, 5, n_g))
    qi, gi = torch.tensor(rng.integers(0, 40, n_q)), torch.tensor(rng.integers(0, 40, n_g))   # repeated ids
    kw = {"query_groups": qg, "gallery_groups": gg, "candidates": candidates}
    if with_ids:
        kw.update(query_ids=qi, gallery_ids=gi)
    r_fast, ideal_fast = relevant_candidates(SameLabel(), ql, gl, 10, **kw)
    chunks = {"query_chunk": 16, "gallery_chunk": 17}
    r_gen, ideal_gen = relevant_candidates(GenericSameLabel(), ql, gl, 10, **chunks, **kw)
    assert torch.equal(r_fast, r_gen) and torch.equal(ideal_fast, ideal_gen)
    x = rng.standard_normal((n_q, 5)).astype(np.float32)
    xg = rng.standard_normal((n_g, 5)).astype(np.float32)
    generic = evaluate_retrieval(x, xg, ql, gl, relevance=GenericSameLabel(), **chunks, **kw)
    assert evaluate_retrieval(x, xg, ql, gl, **kw) == generic


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_graded_ndcg_matches_sklearn(leave_one_out):
    rng = np.random.default_rng(3)
    n_q, n_g, k = 40, 60, 10
    xg = rng.standard_normal((n_g, 8)).astype(np.float32)
    yg = (rng.random((n_g, 5)) < 0.3).astype(np.int64)
    xq, yq = (xg[:n_q], yg[:n_q]) if leave_one_out else (rng.standard_normal((n_q, 8)).astype(np.float32),
                                                          (rng.random((n_q, 5)) < 0.3).astype(np.int64))
    ids = {"query_ids": np.arange(n_q), "gallery_ids": np.arange(n_g)} if leave_one_out else {}
    m = evaluate_retrieval(xq, xg, yq, yg, k_values=(k,), distance="euclidean",
                           relevance="shared_label_count", query_chunk=16, gallery_chunk=25, **ids)
    rel = SharedLabelCount()(torch.tensor(yq), torch.tensor(yg)).numpy()
    score = -pairwise_distance(torch.tensor(xq), torch.tensor(xg), "euclidean").double().numpy()
    rows = []
    for i in range(n_q):
        keep = np.arange(n_g) != i if leave_one_out else np.ones(n_g, bool)
        if rel[i, keep].sum() > 0:                              # queries without relevant items are skipped
            rows.append((rel[i:i + 1, keep], score[i:i + 1, keep]))
    assert m["n_queries_without_relevant"] == n_q - len(rows) > 0
    assert m[f"nDCG_lin@{k}"] == pytest.approx(np.mean([ndcg_score(t, s, k=k) for t, s in rows]), rel=1e-6)
    exp_gain = np.mean([ndcg_score(2 ** t - 1, s, k=k) for t, s in rows])
    assert m[f"nDCG@{k}"] == pytest.approx(exp_gain, rel=1e-6)
    assert "kNN@10" not in m                                   # multi-label: no kNN


def test_label_overlap_multilabel():
    # X-ray rule: relevant when sharing >= 1 positive label; column 2 plays "No Finding".
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    rel = get_relevance("label_overlap")(torch.tensor(labels), torch.tensor(labels))
    assert rel.tolist() == [[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 1]]
    count = get_relevance("shared_label_count")(torch.tensor(labels), torch.tensor(labels))
    assert count[1].tolist() == [1, 2, 0, 1]
    x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    m = evaluate_retrieval(x, x, labels, labels, k_values=(1,), distance="euclidean",
                           relevance="label_overlap", query_ids=np.arange(4), gallery_ids=np.arange(4))
    # nearest (self excluded): 0->1 (rel), 1->0 (rel), 2->1 (no), 3->2 (no); query 2 has no relevant item
    assert m["n_queries_without_relevant"] == 1                # query 2 is not scored by any metric
    assert m["P@1"] == m["AP@1"] == pytest.approx(2 / 3)


def test_same_label_unlabelled_never_relevant():
    rel = SameLabel()(torch.tensor([0, -1]), torch.tensor([0, -1, 1]))
    assert rel.tolist() == [[1, 0, 0], [0, 0, 0]]


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="'MRR'.*valid: mP, P, AP, nDCG, nDCG_lin, kNN"):
        evaluate_retrieval(X, X, Y, Y, metrics=("P", "MRR"))
    with pytest.raises(ValueError, match="'same_patient'.*same_label, label_overlap, shared_label_count"):
        evaluate_retrieval(X, X, Y, Y, relevance="same_patient")
    with pytest.raises(ValueError, match="k=6.*gallery size 5"):
        evaluate_retrieval(X, X, Y, Y, k_values=(1, 6))
    with pytest.raises(ValueError, match="'chebyshev'"):
        evaluate_retrieval(X, X, Y, Y, distance="chebyshev")
