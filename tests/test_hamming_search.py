"""Packed-bit Hamming search: numpy blocks and FAISS IndexBinaryFlat give the reference neighbours."""
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
    for backend, kw in (("numpy", {"query_chunk": 16, "gallery_chunk": 333}), ("numpy", {}), ("faiss", {})):
        d, i = hamming_topk(q, g, k, backend=backend, **kw)
        np.testing.assert_array_equal(i.numpy(), ref_i, err_msg=backend)
        np.testing.assert_array_equal(d.numpy(), ref_d, err_msg=backend)
    d, i = exact_topk(q, g, k, "hamming")                        # the single entry point
    np.testing.assert_array_equal(i.numpy(), ref_i)


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
    with pytest.raises(ValueError, match="cannot restrict"):
        hamming_topk(codes(4, 8, 0), codes(9, 8, 1), 2, backend="faiss", restricted=True)


def test_byte_table_popcount_without_numpy2(monkeypatch):
    q, g = codes(20, 70, 3), codes(400, 70, 4)
    ref_d, ref_i = reference(q, g, 9)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    d, i = hamming_topk(q, g, 9, backend="numpy")
    np.testing.assert_array_equal(i.numpy(), ref_i)
    np.testing.assert_array_equal(d.numpy(), ref_d)
