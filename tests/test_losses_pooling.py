"""GeM pooling and the margin (triplet) loss of Qi et al. 2023 against their equations."""
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.losses import MarginTripletLoss, all_triplets, has_triplet, margin_triplet_loss
from lightning_modules.components.pooling import GeM


def test_gem_at_p1_is_average_pooling():
    x = torch.rand(2, 5, 4, 4) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)


def test_gem_approaches_max_pooling_for_large_p():
    x = torch.rand(2, 5, 4, 4) + 0.5
    gem, mx = GeM(p=50.0)(x), x.amax(dim=(-2, -1))
    # (mean (x/max)^p)^(1/p) lies in [(1/16)^(1/50), 1]: within 6% of the max, never above it.
    assert torch.all(gem <= mx + 1e-5) and torch.all(gem >= mx * (1 / 16) ** (1 / 50) - 1e-5)
    avg = x.mean(dim=(-2, -1))
    assert torch.all(GeM(p=3.0)(x) >= avg - 1e-6) and torch.all(GeM(p=3.0)(x) <= gem + 1e-6)


def test_gem_p_is_learnable_and_initialised_to_3():
    pool = GeM()
    assert pool.p.requires_grad and pool.p.item() == 3.0
    pool(torch.rand(2, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad) and pool.p.grad != 0
    assert not GeM(learn_p=False).p.requires_grad


def test_gem_clamps_negative_activations():
    out = GeM()(torch.full((1, 2, 3, 3), -1.0))
    assert torch.isfinite(out).all() and torch.allclose(out, torch.full((1, 2), 1e-6))


def test_margin_loss_hand_made_triplets():
    e = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cos(0,1) = cos(1,2) = 1/sqrt2, cos(0,2) = 0
    labels = torch.tensor([0, 0, 1])
    d01 = 1 - 1 / math.sqrt(2)  # = d12
    # triplets (0, 1, 2): 1/2 max(0, 0.8 + d01 - 1) = 0.0464466; (1, 0, 2): 1/2 max(0, 0.8 + d10 - d12) = 0.4
    expected = (0.5 * (0.8 + d01 - 1.0) + 0.5 * 0.8) / 2
    assert expected == pytest.approx(0.2232233, abs=1e-6)
    assert margin_triplet_loss(e, labels).item() == pytest.approx(expected, abs=1e-6)
    assert margin_triplet_loss(3.0 * e, labels).item() == pytest.approx(expected, abs=1e-6)  # cosine: scale-free
    assert MarginTripletLoss(margin=0.8)(e, labels).item() == pytest.approx(expected, abs=1e-6)


def test_margin_loss_hinge_at_zero():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])  # d(a,p) ~ 0.005, d(a,n) = 2: satisfied margins
    assert margin_triplet_loss(e, torch.tensor([0, 0, 1])).item() == 0.0
    # m = 2.5 activates both; c = cos(e0, e1) = -cos(e1, e2) = 1/sqrt(1.01), d = 1 - cos:
    # (0, 1, 2): 1/2 (2.5 + (1 - c) - 2) ; (1, 0, 2): 1/2 (2.5 + (1 - c) - (1 + c)); mean = 1 - 3c/4
    c = 1 / math.sqrt(1.01)
    assert margin_triplet_loss(e, torch.tensor([0, 0, 1]), margin=2.5).item() == pytest.approx(
        1 - 0.75 * c, abs=1e-6)


def test_all_triplets_mining():
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    got = set(zip(*(t.tolist() for t in all_triplets(labels))))
    expected = {(a, p, n) for a, p in [(0, 1), (1, 0)] for n in (2, 3, 5)}
    expected |= {(a, p, n) for a, p in [(2, 3), (3, 2)] for n in (0, 1, 5)}
    assert got == expected  # class 2 has no positive; row 4 (unlabelled) is in no triplet
    assert has_triplet(labels) and not has_triplet(torch.tensor([0, 1, 2, -1, -1]))
    assert not has_triplet(torch.tensor([1, 1, 1, -1]))


def test_unlabelled_rows_are_ignored():
    torch.manual_seed(0)
    e, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with_unlabelled = torch.cat([e, torch.randn(3, 4)]), torch.cat([labels, torch.full((3,), -1)])
    assert torch.allclose(margin_triplet_loss(*with_unlabelled), margin_triplet_loss(e, labels))


def test_no_triplet_gives_zero_loss_with_graph():
    e = torch.randn(3, 4, requires_grad=True)
    loss = margin_triplet_loss(e, torch.tensor([0, 1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))


def test_matches_pytorch_metric_learning_up_to_one_half():
    """PML's TripletMarginLoss (cosine similarity, all triplets, plain mean) is max(0, m + d_ap - d_an)."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    torch.manual_seed(0)
    e, labels = torch.randn(12, 8), torch.randint(0, 3, (12,))
    ref = TripletMarginLoss(margin=0.8, distance=CosineSimilarity(), reducer=MeanReducer())(e, labels)
    assert torch.allclose(margin_triplet_loss(e, labels), 0.5 * ref, atol=1e-6)


def test_unknown_distance_rejected():
    with pytest.raises(ValueError, match="distance='l1'"):
        MarginTripletLoss(distance="l1")
