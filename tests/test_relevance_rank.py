"""Relevance rank accuracy: hand-computed cases, quantus.RelevanceRankAccuracy, empty masks, ties."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from callbacks.explanation_metrics import mean_relevance_rank_accuracy, relevance_rank_accuracy


def test_hand_computed():
    # Image 0: 2x3, mask = {0, 1, 4} (M = 3); ranking by attribution: 1 (.9), 5 (.8), 4 (.7), 0, 2, 3.
    # Top-3 = {1, 5, 4}; in mask: 1 and 4 -> RR = 2/3.
    # Image 1: mask = {5} (M = 1); top-1 = pixel 5 (attribution 6) -> RR = 1.
    # Image 2: mask = {0, 2} (M = 2); top-2 = {3, 4} -> RR = 0.
    a = torch.tensor([[[0.2, 0.9, 0.1], [0.0, 0.7, 0.8]],
                      [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                      [[0.1, 0.2, 0.3], [0.9, 0.8, 0.4]]])
    m = torch.tensor([[[1, 1, 0], [0, 1, 0]],
                      [[0, 0, 0], [0, 0, 1]],
                      [[1, 0, 1], [0, 0, 0]]], dtype=torch.float32)
    rr, skipped = relevance_rank_accuracy(a, m)
    assert skipped == 0
    torch.testing.assert_close(rr, torch.tensor([2 / 3, 1.0, 0.0], dtype=torch.float64))
    # Mean (2/3 + 1 + 0) / 3 = 5/9; the [N, 1, H, W] layout gives the same.
    out = mean_relevance_rank_accuracy(a[:, None], m[:, None])
    assert out == {"RR": pytest.approx(5 / 9), "RR_n_images": 3, "RR_n_skipped_empty": 0}


def test_negative_attributions_are_not_made_absolute():
    # Mask = {0}; attributions (-5, 1): top-1 is pixel 1 (1 > -5) -> RR = 0 (with |a| it would be 1).
    rr, _ = relevance_rank_accuracy(torch.tensor([[[-5.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]]))
    assert rr.tolist() == [0.0]


def test_tie_rule_lower_index_first():
    # All attributions equal: ranks follow the flattened index, so top-2 = {0, 1}.
    # Mask {0, 1} -> RR = 1; mask {2, 3} -> RR = 0.
    a = torch.zeros(2, 2, 2)
    m = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [1, 1]]], dtype=torch.float32)
    assert relevance_rank_accuracy(a, m)[0].tolist() == [1.0, 0.0]


def test_mask_threshold_is_half():
    # Values 0.4 / 0.6: only the 0.6 pixel is in the mask (M = 1); it has the top attribution -> RR = 1.
    rr, _ = relevance_rank_accuracy(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[0.4, 0.6]]]))
    assert rr.tolist() == [1.0]


def test_empty_masks_skipped_and_counted_never_nan():
    a = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(3, 4, 4)
    m[1, 0, 0] = 1.0  # only image 1 has a mask
    rr, skipped = relevance_rank_accuracy(a, m)
    assert skipped == 2 and len(rr) == 1
    out = mean_relevance_rank_accuracy(a, m)
    assert out["RR_n_images"] == 1 and out["RR_n_skipped_empty"] == 2 and not math.isnan(out["RR"])
    none = mean_relevance_rank_accuracy(a, torch.zeros(3, 4, 4))
    assert none == {"RR_n_images": 0, "RR_n_skipped_empty": 3}


def test_invalid_inputs():
    with pytest.raises(ValueError, match="same N images"):
        relevance_rank_accuracy(torch.rand(2, 4, 4), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        relevance_rank_accuracy(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        relevance_rank_accuracy(torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2))


def test_matches_quantus_on_untied_random_data():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    n, h, w = 24, 16, 16
    a = rng.standard_normal((n, 1, h, w)).astype(np.float32)  # continuous: no ties
    assert len(np.unique(a.reshape(n, -1)[0])) == h * w
    s = (rng.random((n, 1, h, w)) < rng.uniform(0.02, 0.6, (n, 1, 1, 1))).astype(np.float32)
    s[[3, 10]] = 0.0  # two empty masks: quantus returns NaN for them
    x = rng.random((n, 1, h, w)).astype(np.float32)
    metric = quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantus warns (and divides 0/0) on the empty masks
        expected = np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(n, dtype=int),
                                     a_batch=a, s_batch=s), dtype=np.float64)
    rr, skipped = relevance_rank_accuracy(torch.from_numpy(a), torch.from_numpy(s))
    assert skipped == 2 and np.isnan(expected[[3, 10]]).all()
    np.testing.assert_array_equal(rr.numpy(), expected[~np.isnan(expected)])
    out = mean_relevance_rank_accuracy(torch.from_numpy(a), torch.from_numpy(s))
    assert out["RR"] == pytest.approx(np.nanmean(expected), abs=1e-12)
