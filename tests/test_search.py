"""exact_topk against a brute-force reference (full matrix + stable argsort), ties, exclusions, errors."""
import numpy as np
import pytest
import torch

from callbacks.search import exact_topk, pairwise_distance

DISTANCES = ("cosine", "euclidean", "hamming")


def _data(distance: str, n_q: int, n_g: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if distance == "hamming":
        return tuple(torch.randint(0, 2, (n, dim), generator=g).float() for n in (n_q, n_g))
    return torch.randn(n_q, dim, generator=g), torch.randn(n_g, dim, generator=g)


def _reference(q, g, k, distance, allowed=None):
    """Full distance matrix, excluded pairs at +inf, stable argsort (ties -> lower gallery index)."""
    full = pairwise_distance(q, g, distance).double().numpy()
    if allowed is not None:
        full[~allowed] = np.inf
    idx = np.argsort(full, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(full, idx, 1)
    return d, np.where(np.isinf(d), -1, idx)


MODES = ("none", "leave_one_out", "same_group", "other_group", "loo_same_group")


def _exclusions(mode: str, n: int, seed: int = 1):
    groups = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    ids = torch.arange(n)
    kw = {"none": {}, "leave_one_out": {"query_ids": ids, "gallery_ids": ids},
          "same_group": {"query_groups": groups, "gallery_groups": groups, "candidates": "same_group"},
          "other_group": {"query_groups": groups, "gallery_groups": groups, "candidates": "other_group"},
          "loo_same_group": {"query_ids": ids, "gallery_ids": ids, "query_groups": groups,
                             "gallery_groups": groups, "candidates": "same_group"}}[mode]
    allowed = np.ones((n, n), dtype=bool)
    if "query_ids" in kw:
        allowed &= ~np.eye(n, dtype=bool)
    same = (groups[:, None] == groups[None, :]).numpy()
    if kw.get("candidates") == "same_group":
        allowed &= same
    if kw.get("candidates") == "other_group":
        allowed &= ~same
    return kw, allowed


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunks", [(7, 13), (1024, 16384), (16, 4)])
def test_matches_bruteforce(distance, mode, chunks):
    n, k = 61, 9
    x, _ = _data(distance, n, n, 12)
    kw, allowed = _exclusions(mode, n)
    d, i = exact_topk(x, x, k, distance, query_chunk=chunks[0], gallery_chunk=chunks[1], **kw)
    ref_d, ref_i = _reference(x, x, k, distance, allowed)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == (n, k)
    np.testing.assert_array_equal(i.numpy(), ref_i)
    _close(d.numpy(), ref_d)


def _close(d, ref_d):
    # Block shapes change the matmul's rounding; sqrt magnifies it near 0 (self-distance), so compare squares.
    np.testing.assert_allclose(d ** 2, ref_d ** 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("chunks", [(8, 11), (1, 5)])
def test_query_and_gallery_differ(distance, chunks):
    q, g = _data(distance, 37, 53, 10, seed=3)
    d, i = exact_topk(q, g, 53, distance, query_chunk=chunks[0], gallery_chunk=chunks[1])
    ref_d, ref_i = _reference(q, g, 53, distance)
    np.testing.assert_array_equal(i.numpy(), ref_i)
    _close(d.numpy(), ref_d)


def test_pairwise_distance_definitions():
    a, b = np.random.default_rng(0).standard_normal((2, 5, 7))
    cos = 1 - (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
    euc = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    ta, tb = torch.tensor(a), torch.tensor(b)
    np.testing.assert_allclose(pairwise_distance(ta, tb, "cosine").numpy(), cos, atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(ta, tb, "euclidean").numpy(), euc, atol=1e-4)
    bits_a, bits_b = (a > 0).astype(np.float32), (b > 0).astype(np.float32)
    ham = (bits_a[:, None] != bits_b[None]).sum(-1)
    ham01 = pairwise_distance(torch.tensor(bits_a), torch.tensor(bits_b), "hamming")
    np.testing.assert_array_equal(ham01, ham)
    pm_a, pm_b = torch.tensor(bits_a * 2 - 1), torch.tensor(bits_b * 2 - 1)      # +-1 codes: same distances
    np.testing.assert_array_equal(pairwise_distance(pm_a, pm_b, "hamming"), ham)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunks", [(2, 3), (64, 64)])
def test_exact_ties_broken_by_gallery_index(distance, chunks):
    # Gallery: rows 2, 5, 9, 14, 17 are the same vector v (the nearest); the rest are far away.
    # With k = 3 the k-th value is tied with unselected items: expected [2, 5, 9], then 14, 17 for k = 5.
    g = torch.full((20, 3), -4.0)
    g[:, 0] = torch.arange(20.0) + 10
    v = torch.tensor([1.0, 2.0, 2.0])
    g[[2, 5, 9, 14, 17]] = v
    q = v.unsqueeze(0).repeat(4, 1)
    for k, expected in [(3, [2, 5, 9]), (5, [2, 5, 9, 14, 17]), (1, [2])]:
        d, i = exact_topk(q, g, k, distance, query_chunk=chunks[0], gallery_chunk=chunks[1])
        assert i.tolist() == [expected] * 4
        assert torch.all(d == d[:, :1])


def test_ties_from_distance_rounding():
    # Scores differ (cos 1e-9 vs 2e-9) but both distances round to 1.0 in float32: order by index, not score.
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1e-9, 1.0], [2e-9, 1.0], [-1.0, 0.0]])
    d, i = exact_topk(q, g, 1, "cosine")
    assert i.tolist() == [[0]] and d.item() == 1.0
    d, i = exact_topk(q, g, 3, "cosine", gallery_chunk=1)
    assert i.tolist() == [[0, 1, 2]] and d.tolist() == [[1.0, 1.0, 2.0]]


def test_hamming_many_ties_match_reference():
    q, g = _data("hamming", 50, 300, 6, seed=5)                 # 6-bit codes: almost every rank is tied
    d, i = exact_topk(q, g, 40, "hamming", query_chunk=16, gallery_chunk=70)
    ref_d, ref_i = _reference(q, g, 40, "hamming")
    np.testing.assert_array_equal(i.numpy(), ref_i)
    np.testing.assert_array_equal(d.numpy(), ref_d)


def test_leave_one_out_never_returns_query():
    x = torch.randn(40, 4)
    x[20:] = x[:20]                                             # exact duplicates: distance 0 to a copy
    ids = torch.arange(40)
    _, i = exact_topk(x, x, 5, "euclidean", query_ids=ids, gallery_ids=ids, query_chunk=6, gallery_chunk=9)
    assert not (i == ids[:, None]).any()
    assert i[:20, 0].tolist() == list(range(20, 40)) and i[20:, 0].tolist() == list(range(20))


def test_fewer_candidates_than_k_padded():
    x = torch.randn(6, 3)
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    ids = torch.arange(6)
    d, i = exact_topk(x, x, 4, "cosine", query_ids=ids, gallery_ids=ids, query_groups=groups,
                      gallery_groups=groups, candidates="same_group", gallery_chunk=4)
    n_cand = [2, 2, 2, 1, 1, 0]
    for row, n in enumerate(n_cand):
        assert (i[row, n:] == -1).all() and torch.isinf(d[row, n:]).all()
        assert (i[row, :n] >= 0).all() and torch.isfinite(d[row, :n]).all()
        assert set(i[row, :n].tolist()) == {j for j in range(6) if groups[j] == groups[row] and j != row}


def test_matches_faiss():
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    index = faiss.IndexFlatL2(32)
    index.add(x)
    fd, fi = index.search(x, 10)
    xt = torch.from_numpy(x)
    d, i = exact_topk(xt, xt, 10, "euclidean", query_chunk=64, gallery_chunk=100)
    np.testing.assert_array_equal(i.numpy(), fi)
    np.testing.assert_allclose(d.numpy() ** 2, fd, rtol=1e-4, atol=1e-3)


def test_errors_name_the_value():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6.*gallery size 5"):
        exact_topk(x, x, 6)
    with pytest.raises(ValueError, match="k=0"):
        exact_topk(x, x, 0)
    with pytest.raises(ValueError, match="'manhattan'"):
        exact_topk(x, x, 2, "manhattan")
    with pytest.raises(ValueError, match="'manhattan'"):
        pairwise_distance(x, x, "manhattan")
    with pytest.raises(ValueError, match="same_group.*groups"):
        exact_topk(x, x, 2, candidates="same_group")
    with pytest.raises(ValueError, match="'nearby'"):
        exact_topk(x, x, 2, candidates="nearby")
    with pytest.raises(ValueError, match="binary codes"):
        exact_topk(x, x, 2, "hamming")


@pytest.mark.slow_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(500, 64)
    d, i = exact_topk(x, x, 10, "euclidean", query_chunk=128, gallery_chunk=200)
    dc, ic = exact_topk(x.cuda(), x.cuda(), 10, "euclidean", query_chunk=128, gallery_chunk=200)
    assert ic.device.type == "cuda"
    np.testing.assert_array_equal(ic.cpu().numpy(), i.numpy())
    np.testing.assert_allclose(dc.cpu().numpy(), d.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", DISTANCES)
def test_wide_blocks_with_duplicates_across_blocks(distance):
    # Two full 2816-column gallery blocks and a 368-column tail; 8-bit hamming codes give ties everywhere.
    q, g = _data(distance, 50, 6000, 8, seed=7)
    g[4000:4100] = g[10]                                       # duplicates across blocks
    for k in (1, 5):
        d, i = exact_topk(q, g, k, distance, query_chunk=32, gallery_chunk=2816)
        ref_d, ref_i = _reference(q, g, k, distance)
        np.testing.assert_array_equal(i.numpy(), ref_i)
        _close(d.numpy(), ref_d)
