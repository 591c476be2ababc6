"""Visual-similarity relevance: the generic Fourier descriptor, the measures, their combination, and the
metrics computed from it in blocks (checked against a brute-force nDCG with scikit-learn)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import rotate

from callbacks import evaluate_retrieval
from callbacks.relevance import make_relevance
from callbacks.visual_similarity import (
    VisualSimilarity,
    generic_fourier_descriptor,
    grey_histogram,
    iou_similarity,
    pack_attributes,
    split_attributes,
)

Y, X = np.mgrid[:64, :64]


def disc(cy, cx, r):
    return ((Y - cy) ** 2 + (X - cx) ** 2 < r ** 2).astype(np.float32)


def l_shape():
    return (((abs(Y - 32) < 4) & (abs(X - 26) < 14)) | ((abs(X - 14) < 4) & (abs(Y - 24) < 12))).astype(np.float32)


def gfd(*masks):
    return generic_fourier_descriptor(torch.tensor(np.stack(masks)))


def l1(a, b):
    return float((a - b).abs().sum())


def test_gfd_is_rotation_and_translation_invariant():
    shape = l_shape()
    rotated = [np.rot90(shape, k).copy() for k in (1, 2, 3)]
    d = gfd(shape, *rotated, np.roll(shape, (5, -7), axis=(0, 1)))
    for other in d[1:]:  # quarter turns permute the polar raster's angles exactly; shifts move the centroid
        assert l1(d[0], other) < 1e-4
    by30 = gfd((rotate(shape, 30, reshape=False, order=1) > 0.5).astype(np.float32))[0]
    bar = gfd(((abs(Y - 32) < 2) & (abs(X - 32) < 20)).astype(np.float32))[0]
    assert l1(d[0], by30) < 0.1 * l1(d[0], bar)  # off-grid rotation: resampling error only


def test_gfd_equal_for_identical_shapes_and_larger_for_circle_vs_bar():
    circle, same, bigger = disc(30, 34, 12), disc(20, 22, 12), disc(32, 32, 20)
    bar = ((abs(Y - 32) < 2) & (abs(X - 32) < 20)).astype(np.float32)
    d = gfd(circle, same, bigger, bar)
    assert d.shape == (4, 36)
    assert l1(d[0], d[1]) < 1e-4                       # the same disc elsewhere
    assert l1(d[0], d[2]) < 0.1                        # scale invariant up to pixelisation
    assert l1(d[0], d[3]) > 20 * max(l1(d[0], d[2]), 1e-3) and l1(d[0], d[3]) > 2.0
    assert 0.9 < d[0, 0] <= 1.0 and d[3, 0] < 0.4     # first entry: covered fraction of the polar raster
    assert torch.equal(gfd(np.zeros((64, 64), np.float32))[0], torch.zeros(36))


def test_measures_by_hand():
    a = torch.tensor([[1, 1, 0, 0.0], [0, 0, 0, 0]])
    b = torch.tensor([[1, 0, 1, 0.0], [0, 0, 0, 0], [1, 1, 0, 0]])
    assert torch.allclose(iou_similarity(a, b, {}), torch.tensor([[1 / 3, 0, 1], [0, 1, 0]]))
    hist = grey_histogram(torch.tensor([[[0.5, -5.0], [5.0, 0.1]]]), torch.tensor([[[1, 1], [1, 0]]]), bins=4,
                          value_range=(-2.0, 2.0))
    # -5 -> first bin (clipped), 0.5 -> third, 5 -> last (clipped); 0.1 is outside the mask
    assert torch.allclose(hist, torch.tensor([[1 / 3, 0, 1 / 3, 1 / 3]]))
    layout = {"m": 4, "h": 2}
    q, _ = pack_attributes({"m": a[:1], "h": torch.tensor([[0.5, 0.5]])})
    g, _ = pack_attributes({"m": b[:1], "h": torch.tensor([[1.0, 0.0]])})
    rule = VisualSimilarity({"m": {"measure": "iou", "weight": 3}, "h": {"measure": "histogram", "weight": 1}},
                            layout)
    assert float(rule(q, g)) == pytest.approx((3 * (1 / 3) + 1 * 0.5) / 4)
    rule = VisualSimilarity({"h": {"measure": "l1_exp", "scale": 2.0}}, layout)
    assert float(rule(q, g)) == pytest.approx(np.exp(-1.0 / 2.0))


def random_items(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16)
    for i in range(n):
        cy, cx, r = torch.randint(3, 13, (2,), generator=g).tolist() + [int(torch.randint(1, 6, (1,), generator=g))]
        masks[i] = torch.tensor(((np.mgrid[:16, :16][0] - cy) ** 2 + (np.mgrid[:16, :16][1] - cx) ** 2) < r * r)
    hist = torch.rand(n, 8, generator=g)
    attrs, layout = pack_attributes({"wt_mask": masks, "histogram": hist / hist.sum(1, keepdim=True),
                                     "gfd": generic_fourier_descriptor(masks)})
    return attrs, layout, torch.arange(n) // 3, torch.randn(n, 5, generator=g)


def brute_force_ndcg(emb, rel, groups, k):
    from sklearn.metrics import ndcg_score

    d = 1 - torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(emb, dim=1).t()
    scores = []
    for q in range(len(emb)):
        keep = (groups != groups[q]).numpy()
        order = np.lexsort((np.arange(keep.sum()), d[q][keep].numpy()))   # ties: lower gallery index first
        score = np.zeros(keep.sum())
        score[order] = np.arange(keep.sum(), 0, -1)                        # strictly decreasing, no ties
        scores.append(ndcg_score(rel[q][keep].numpy()[None], score[None], k=k))
    return float(np.mean(scores))


def test_blocked_metrics_equal_brute_force_and_do_not_depend_on_chunks():
    attrs, layout, groups, emb = random_items()
    rule = VisualSimilarity(layout=layout)
    rel = rule(attrs, attrs)
    assert rel.shape == (60, 60) and float(rel.min()) >= 0 and float(rel.max()) <= 1
    kw = dict(k_values=[5, 10], relevance=rule, metrics=["nDCG_lin"], query_ids=torch.arange(60),
              gallery_ids=torch.arange(60), query_groups=groups, gallery_groups=groups, candidates="other_group")
    whole = evaluate_retrieval(emb, emb, attrs, attrs, **kw)
    blocks = evaluate_retrieval(emb, emb, attrs, attrs, query_chunk=7, gallery_chunk=11, **kw)
    assert whole == pytest.approx(blocks, abs=1e-6)
    for k in (5, 10):
        assert whole[f"nDCG_lin@{k}"] == pytest.approx(brute_force_ndcg(emb, rel, groups, k), abs=1e-5)


def test_bad_rule_configurations_are_one_clear_error():
    with pytest.raises(ValueError, match="measure='cosine'"):
        VisualSimilarity({"gfd": {"measure": "cosine"}})
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        VisualSimilarity({"gfd": {"measure": "l1_exp", "wieght": 1}})
    with pytest.raises(ValueError, match="do not carry"):
        VisualSimilarity({"size": {"measure": "l1_exp"}}, layout={"gfd": 36})
    with pytest.raises(ValueError, match="do not match the layout"):
        split_attributes(torch.zeros(2, 5), {"gfd": 36})
    with pytest.raises(ValueError, match="no attribute_layout"):
        make_relevance("visual_similarity", {}, datamodule=object())
    with pytest.raises(ValueError, match="relevance_args"):
        make_relevance("same_label", {"terms": {}})


def test_a_dataset_adds_its_own_attribute_without_touching_the_callback():
    """A lesion-size scalar packed beside the others and named in the rule's terms is all it takes."""
    attrs, layout, groups, _ = random_items(12)
    size = attrs[:, :256].sum(1, keepdim=True)
    packed, layout2 = pack_attributes({**split_attributes(attrs, layout), "lesion_size": size})

    class DataModuleLike:
        attribute_layout = layout2

    rule = make_relevance("visual_similarity", {"terms": {"lesion_size": {"measure": "l1_exp", "scale": 10.0}}},
                          DataModuleLike())
    assert torch.allclose(rule(packed, packed), torch.exp(-(size - size.t()).abs() / 10.0))
