"""Same-patient / cross-patient candidate sets on a hand-made example (the lesion-search protocol)."""
import pytest
import torch

from callbacks import evaluate_retrieval, exact_topk

# Six lesions on a line (1-D embeddings), three patients, two lesion types.
EMB = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
PATIENT = torch.tensor([0, 0, 1, 1, 2, 2])
TYPE = torch.tensor([4, 5, 4, 5, 4, 4])
IDS = torch.arange(6)


def neighbours(candidates, k=3):
    _, idx = exact_topk(EMB, EMB, k, "euclidean", query_ids=IDS, gallery_ids=IDS, query_groups=PATIENT,
                        gallery_groups=PATIENT, candidates=candidates)
    return idx.tolist()


def test_candidate_sets_exclude_the_query_and_restrict_patients():
    # Query 2 (patient 1): all = 1, 3 (distance 1, tie -> lower index first), then 0 (distance 2).
    assert neighbours("all")[2] == [1, 3, 0]
    # same patient only: lesion 3; nothing else -> -1 padding.
    assert neighbours("same_group")[2] == [3, -1, -1]
    # other patients only: 1 (patient 0), 0 (patient 0, distance 2) and 4 (patient 2, distance 2) -> 0 first.
    assert neighbours("other_group")[2] == [1, 0, 4]
    for q, row in enumerate(neighbours("all")):
        assert q not in row


def test_cross_patient_average_precision_by_hand():
    metrics = evaluate_retrieval(EMB, EMB, TYPE, TYPE, k_values=[2], distance="euclidean", metrics=["AP", "P"],
                                 query_ids=IDS, gallery_ids=IDS, query_groups=PATIENT, gallery_groups=PATIENT,
                                 candidates="other_group")
    # Cross-patient top-2 per query (type 4 = lesions 0, 2, 4, 5; type 5 = lesions 1, 3):
    # q0 (t4): 2 (t4, rel), 3 -> P@1 = 1; R = 3 (2, 4, 5) -> AP@2 = 1 / min(2, 3) = 0.5
    # q1 (t5): 2, 3 (t5, rel) -> AP@2 = (1/2) / min(2, 1) = 0.5
    # q2 (t4): 1, 0 (t4, rel) -> AP@2 = (1/2) / min(2, 3) = 0.25
    # q3 (t5): 4 (distance 1), then 1 and 5 tie at 2 -> 1 (lower index, t5, rel) -> AP@2 = (1/2) / min(2, 1)
    # q4 (t4): 3, 2 (t4, rel) -> AP@2 = (1/2) / min(2, 2) = 0.25   (R: 0, 2)
    # q5 (t4): 3, 2 (t4, rel) -> AP@2 = (1/2) / min(2, 2) = 0.25
    assert metrics["AP@2"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.5 + 0.25 + 0.25) / 6)
    assert metrics["P@2"] == pytest.approx(0.5)  # every query has exactly one hit in its top 2


def test_restricted_sets_score_every_metric_on_the_same_queries():
    """12 lesions, patient 3 has a single lesion (no same-patient candidate) and patient 2's lesions share
    no type: P@1 must equal AP@1 in every candidate set, and the scored count is reported."""
    rng = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 4, generator=rng)
    patient = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3])
    kind = torch.tensor([1, 1, 2, 2, 1, 2, 1, 2, 1, 2, 3, 1])
    ids = torch.arange(12)
    for candidates in ("all", "same_group", "other_group"):
        m = evaluate_retrieval(emb, emb, kind, kind, k_values=[1, 10], distance="cosine",
                               metrics=["mP", "P", "AP", "kNN"], query_ids=ids, gallery_ids=ids,
                               query_groups=patient, gallery_groups=patient, candidates=candidates)
        assert m["P@1"] == pytest.approx(m["AP@1"]) == pytest.approx(m["mP@1"]), candidates
        assert m["n_queries_scored"] + m["n_queries_without_relevant"] == m["n_queries"] == 12
    same = evaluate_retrieval(emb, emb, kind, kind, k_values=[1], distance="cosine", query_ids=ids,
                              gallery_ids=ids, query_groups=patient, gallery_groups=patient,
                              candidates="same_group")
    # Unscored: lesion 11 (patient 3, alone), 8, 9, 10 (patient 2, no shared type).
    assert same["n_queries_scored"] == 8


def test_cross_patient_same_key_keeps_other_patients_with_the_query_key():
    # key = image sequence: lesions 0, 2, 4 are sequence 0, lesions 1, 3, 5 sequence 1.
    seq = torch.tensor([0, 1, 0, 1, 0, 1])
    groups = torch.stack([PATIENT, seq], 1)
    _, idx = exact_topk(EMB, EMB, 3, "euclidean", query_ids=IDS, gallery_ids=IDS, query_groups=groups,
                        gallery_groups=groups, candidates="other_group_same_key")
    # q2 (patient 1, seq 0): other patients' seq-0 lesions 0 and 4 (both at distance 2 -> lower index first).
    assert idx[2].tolist() == [0, 4, -1]
    # q5 (patient 2, seq 1): 3 (distance 2), 1 (distance 4); lesion 4 (same patient) and 2 (seq 0) never.
    assert idx[5].tolist() == [3, 1, -1]
    # R counts the same candidates: q0 (type 4, seq 0) has lesions 2 and 4 (type 4, seq 0, other patients).
    m = evaluate_retrieval(EMB, EMB, TYPE, TYPE, k_values=[1], distance="euclidean", metrics=["AP"],
                           query_ids=IDS, gallery_ids=IDS, query_groups=groups, gallery_groups=groups,
                           candidates="other_group_same_key")
    # q5 (type 4, seq 1, patient 2) sees only lesions 1 and 3 (type 5): the one query without a relevant item.
    assert m["n_queries_without_relevant"] == 1
    with pytest.raises(ValueError, match=r"groups of shape \[N, 2\]"):
        exact_topk(EMB, EMB, 1, "euclidean", query_groups=PATIENT, gallery_groups=PATIENT,
                   candidates="other_group_same_key")


def test_callback_cross_patient_same_key_needs_the_key():
    from callbacks import RetrievalEvaluation
    with pytest.raises(ValueError, match="needs same_key"):
        RetrievalEvaluation(candidate_sets=["cross_patient_same_key"])
    cb = RetrievalEvaluation(candidate_sets=["cross_patient_same_key"], same_key="sequence")
    assert cb.same_key == "sequence"
