"""Attention hashing: the loss terms against the paper's equations, the networks, codes and bad input."""
import math

import numpy as np
import pytest
import torch

from lightning_modules.attention_hashing import AttentionHashing
from lightning_modules.components.attention import AttentionBlock, AttentionNetwork
from lightning_modules.components.hashing_losses import (
    AttentionHashingLoss,
    hashnet_loss,
    label_similarity,
    squared_contrastive_loss,
)

H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
LABELS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])  # pairs (0,1) and (1,2) share a label, (0,2) not


def test_similarity_from_multi_hot_labels():
    assert label_similarity(LABELS).tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]


def test_squared_contrastive_matches_equation():
    m, total = 1.5, 0.0
    for i, j in ((0, 1), (0, 2), (1, 2)):
        d = math.dist(H[i].tolist(), H[j].tolist())
        s = float(LABELS[i] @ LABELS[j] > 0)
        total += 0.5 * s * d ** 2 + 0.5 * (1 - s) * max(0.0, m - d) ** 2
    out = squared_contrastive_loss(H, label_similarity(LABELS), margin=m)
    assert out.item() == pytest.approx(total / 3, abs=1e-12)


def test_hashnet_weighted_likelihood_matches_equation():
    a, pairs = 0.7, ((0, 1), (0, 2), (1, 2))
    s = {p: float(LABELS[p[0]] @ LABELS[p[1]] > 0) for p in pairs}
    n1 = sum(s.values())
    w = {p: 3 / n1 if s[p] else 3 / (3 - n1) for p in pairs}
    ref = sum(w[p] * (math.log(1 + math.exp(a * float(H[p[0]] @ H[p[1]]))) - s[p] * a * float(H[p[0]] @ H[p[1]]))
              for p in pairs) / 3
    assert hashnet_loss(H, label_similarity(LABELS), a).item() == pytest.approx(ref, abs=1e-12)


def test_hashnet_stable_where_naive_exp_overflows():
    h = torch.full((2, 100), 10.0)                           # theta = a <h_i, h_j> = 10 * 10,000
    theta = 10.0 * float(h[0] @ h[1])
    with pytest.raises(OverflowError):
        math.exp(theta)
    assert torch.isinf(torch.log(1 + torch.exp(torch.tensor(theta))))   # the naive form
    same, other = torch.tensor([[1, 0], [1, 0]]), torch.tensor([[1, 0], [0, 1]])
    assert hashnet_loss(h, label_similarity(same), 10.0).item() == 0.0            # log(1+e^t) - t -> 0
    assert hashnet_loss(h, label_similarity(other), 10.0).item() == pytest.approx(theta)   # log(1+e^t) -> t
    h.requires_grad_(True)
    hashnet_loss(h, label_similarity(other), 10.0).backward()
    assert torch.isfinite(h.grad).all()


def test_total_loss_is_half_and_half():
    crit = AttentionHashingLoss(hash_bits=2, margin=1.0)
    out = crit(H, LABELS)
    assert crit.alpha == 5.0                                  # 10 / bits (HashNet's code)
    s = label_similarity(LABELS)
    expected = 0.5 * squared_contrastive_loss(H, s, 1.0) + 0.5 * hashnet_loss(H, s, 5.0)
    assert out["loss"].item() == pytest.approx(expected.item())


@pytest.mark.parametrize("activation,low,high", [("sigmoid", 0, 1), ("tanh", -1, 1), ("elu", -1, math.inf)])
def test_attention_block_output_activation(activation, low, high):
    s = AttentionBlock(3, (4, 4, 8, 8, 8), activation)(torch.rand(2, 3, 30, 30))
    assert s.shape == (2, 1, 30, 30) and s.min() >= low and s.max() <= high


def test_attention_network_residual_blocks():
    x = torch.rand(2, 3, 32, 32)
    net = AttentionNetwork(2, 3, (4, 4, 8, 8, 8)).eval()
    out, maps = net(x)
    s1, s2 = maps
    assert torch.allclose(out, s2 * (s1 * x + x))             # x1 = S1 x0, x2 = S2 (x1 + x0)
    assert AttentionNetwork(0)(x)[0] is x


@pytest.fixture(scope="module")
def tiny(one_thread):
    torch.manual_seed(0)
    return {n: AttentionHashing(hash_bits=16, attention_blocks=n, attention_channels=(4, 4, 8, 8, 8)).eval()
            for n in (0, 2)}


def test_codes_binary_at_retrieval_relaxed_in_training(tiny):
    x = torch.rand(4, 3, 32, 32)
    model = tiny[2]
    assert model.search_space == "hamming" and model.embedding_variants == {"float": "euclidean"}
    with torch.no_grad():
        out = model.embed_variants(x)
        codes = model.embed(x)
    assert torch.equal(out["embedding"], codes) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert out["float"].abs().max() < 1 and torch.equal(torch.where(out["float"] >= 0, 1.0, -1.0), codes)
    assert model.hashing.backbone.conv1.in_channels == 6 and tiny[0].hashing.backbone.conv1.in_channels == 3
    assert model.attention_maps(x).shape == (4, 32, 32) and tiny[0].attention_maps(x) is None
    assert AttentionHashing.binarize(torch.tensor([0.0, -0.0, -1e-9])).tolist() == [1.0, 1.0, -1.0]


def test_optimiser_and_schedule_from_config(tiny):
    opt = tiny[2].configure_optimizers()
    sched = opt["lr_scheduler"]["scheduler"]
    assert isinstance(opt["optimizer"], torch.optim.Adam) and opt["optimizer"].defaults["betas"][0] == 0.9
    assert (sched.step_size, sched.gamma, opt["lr_scheduler"]["interval"]) == (4000, 0.6, "step")


@pytest.mark.parametrize("bits", [0, -8, 2.5])
def test_hash_bits_must_be_positive(bits):
    with pytest.raises(ValueError, match=f"hash_bits={bits}: expected a positive integer"):
        AttentionHashing(hash_bits=bits)


def test_bad_attention_settings():
    with pytest.raises(ValueError, match="attention_activation='relu'"):
        AttentionHashing(attention_activation="relu")
    with pytest.raises(ValueError, match="attention_blocks=3"):
        AttentionHashing(attention_blocks=3)


def test_pf2_attention_maps_learn_and_vary_over_space(tmp_path, one_thread):
    """A few optimiser steps on the phantom: the PF2 maps S vary over the image (not a constant) and have
    moved away from their initial values (they are trained through the retrieval loss only)."""
    from datamodules.chestxray14 import ChestXray14DataModule
    from tests.conftest import chestxray_phantom

    torch.manual_seed(0)
    dm = ChestXray14DataModule(str(chestxray_phantom()), image_size=32, num_workers=0)
    dm.setup()
    model = AttentionHashing(hash_bits=16, attention_channels=(4, 4, 8, 8, 8), lr=3e-3)
    opt = model.configure_optimizers()["optimizer"]
    loader = dm.train_dataloader()
    probe = torch.stack([dm.datasets["val"][i]["image"] for i in range(8)])
    model.eval()
    with torch.no_grad():
        before = model.attention_maps(probe)
    model.train()
    for _, batch in zip(range(10), loader):
        loss = model.criterion(model(batch["image"]), batch["label"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model.attention_maps(probe)
    assert (after.flatten(1).std(1) > 1e-3).all()             # not a constant map
    assert (after - before).abs().mean() > 1e-3               # the attention was trained
    assert np.isfinite(loss.item())
