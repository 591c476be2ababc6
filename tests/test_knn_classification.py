"""Lesion-type classification from embeddings: kNN accuracy and macro-F1 against scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from callbacks import evaluate_retrieval
from callbacks.retrieval_metrics import knn_predict, macro_f1


def test_macro_f1_hand_case():
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 1, FP 0, FN 1 -> 2/3; class 2: TP 1, FP 1, FN 0 -> 2/3
    pred, true = torch.tensor([0, 0, 2, 1, 2, 1]), torch.tensor([0, 1, 0, 1, 2, -1])
    assert macro_f1(pred, true) == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)


def test_knn_prediction_and_macro_f1_equal_sklearn():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 1.5
    g_lab, q_lab = rng.integers(0, 8, 400), rng.integers(0, 8, 150)
    gallery = centres[g_lab] + rng.normal(size=(400, 16))
    queries = centres[q_lab] + rng.normal(size=(150, 16))
    k = 5
    sk = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(gallery, g_lab)
    _, _, idx = evaluate_retrieval(queries, gallery, q_lab, g_lab, k_values=[k], distance="euclidean",
                                   metrics=["kNN"], return_neighbours=True)
    ours = knn_predict(torch.as_tensor(g_lab)[idx], k).numpy()
    theirs = sk.predict(queries)
    # sklearn breaks vote ties by the smallest label, we by the nearest neighbour: compare where untied.
    votes = np.stack([(g_lab[idx.numpy()] == c).sum(1) for c in range(8)], 1)
    untied = (votes == votes.max(1, keepdims=True)).sum(1) == 1
    assert untied.mean() > 0.8 and np.array_equal(ours[untied], theirs[untied])
    metrics = evaluate_retrieval(queries, gallery, q_lab, g_lab, k_values=[k], distance="euclidean",
                                 metrics=["kNN", "kNN_F1"])
    assert metrics["kNN@5"] == pytest.approx(np.mean(ours == q_lab))
    assert metrics["kNN_F1@5"] == pytest.approx(f1_score(q_lab, ours, average="macro"))
