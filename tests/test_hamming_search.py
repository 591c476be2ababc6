"""Packed-bit Hamming search: the numba kernel, numpy blocks and FAISS IndexBinaryFlat give the reference
neighbours (stable sort of the full distance matrix)."""
import numpy as np
import pytest
import torch

from callbacks import evaluate_retrieval
from callbacks.hamming import hamming_topk, pack_codes
from callbacks.search import exact_topk


def codes(n, bits, seed):
    return torch.randint(0, 2, (n, bits), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


def reference(q, g, k):
    """Full Hamming matrix, stable argsort: ties -> lower gallery index."""
    d = (q.numpy()[:, None, :] != g.numpy()[None, :, :]).sum(2)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("bits,n_g,k", [(16, 3000, 50), (64, 2000, 100), (8, 500, 7)])
def test_numpy_and_faiss_match_reference(bits, n_g, k):
    q, g = codes(60, bits, 1), codes(n_g, bits, 2)
    g[1500 % n_g:1500 % n_g + 30] = g[3]                        # duplicates: ties across blocks
    ref_d, ref_i = reference(q, g, k)
    for backend, kw in (("numpy", {"query_chunk": 16, "gallery_chunk": 333}), ("numpy", {}), ("faiss", {}),
                        ("numba", {})):
        d, i = hamming_topk(q, g, k, backend=backend, **kw)
        np.testing.assert_array_equal(i.numpy(), ref_i, err_msg=backend)
        np.testing.assert_array_equal(d.numpy(), ref_d, err_msg=backend)
    d, i = exact_topk(q, g, k, "hamming")                        # the single entry point
    np.testing.assert_array_equal(i.numpy(), ref_i)


@pytest.mark.parametrize("bits,n_g,k", [(64, 5000, 100), (70, 900, 33), (8, 40, 40), (128, 300, 1)])
def test_numba_kernel_ties_collapse_and_batches(bits, n_g, k):
    """The one-pass kernel on its hard cases: every gallery code equal (the held buffer overflows and is
    compacted), a few distinct codes (massive ties at the k-th distance), multi-word codes, k == gallery size,
    query batches and tiles that do not divide the sizes."""
    from callbacks.hamming_kernel import counting_topk_packed

    q = codes(37, bits, 5)
    for g in (codes(1, bits, 6).repeat(n_g, 1), codes(3, bits, 7)[torch.arange(n_g) % 3], codes(n_g, bits, 8)):
        ref_d, ref_i = reference(q, g, k)
        for batch, tile in ((16, 1024), (5, 7), (1, 1)):
            d, i = counting_topk_packed(pack_codes(q), pack_codes(g), k, bits, batch=batch, tile=tile)
            np.testing.assert_array_equal(i, ref_i)
            np.testing.assert_array_equal(d, ref_d)


def test_codes_pack_to_bits():
    pm1 = codes(5, 64, 0)
    assert pack_codes(pm1).shape == (5, 1) and pack_codes(pm1).dtype == np.uint64   # 8 bytes per code
    np.testing.assert_array_equal(pack_codes(pm1), pack_codes((pm1 > 0).float()))   # {0,1} == +-1
    assert pack_codes(codes(5, 70, 0)).shape == (5, 2)


def test_hamming_on_float_embeddings_is_one_clear_error():
    x = torch.randn(10, 16)
    with pytest.raises(ValueError, match=r"hamming distance needs binary codes.*values are neither.*binarise"):
        exact_topk(x, x, 3, "hamming")
    with pytest.raises(ValueError, match="hamming distance needs binary codes"):
        evaluate_retrieval(x, x, torch.zeros(10, 2), torch.zeros(10, 2), k_values=[3], distance="hamming",
                           relevance="label_overlap")
    for backend in ("faiss", "numba"):
        with pytest.raises(ValueError, match="cannot restrict"):
            hamming_topk(codes(4, 8, 0), codes(9, 8, 1), 2, backend=backend, restricted=True)


def test_byte_table_popcount_without_numpy2(monkeypatch):
    q, g = codes(20, 70, 3), codes(400, 70, 4)
    ref_d, ref_i = reference(q, g, 9)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    d, i = hamming_topk(q, g, 9, backend="numpy")
    np.testing.assert_array_equal(i.numpy(), ref_i)
    np.testing.assert_array_equal(d.numpy(), ref_d)
