"""Exact Hamming top-k on bit-packed binary codes (docs/metrics.md tie rule: equal distances -> lower gallery index).

Codes (+-1 or {0, 1}, any D) are packed to bits, 64 per uint64 word (``pack_codes``): a 64-bit code takes 8
bytes instead of 256 as float32. Three backends return identical neighbours:

- ``numba`` (:mod:`callbacks.hamming_kernel`): one compiled pass over the gallery per batch of queries, SIMD
  popcounts, a histogram cut-off instead of a sort; the default for unrestricted search.
- ``numpy``: ``query_chunk x gallery_chunk`` blocks, XOR + ``np.bitwise_count``, then per query a running
  top-k: a later block's item only enters when its distance is *strictly* below the current k-th distance
  (later blocks hold higher indices). It alone applies candidate restrictions (ids, patient groups), so
  ``auto`` takes it whenever a restriction is requested.
- ``faiss``: FAISS ``IndexBinaryFlat`` (exhaustive, multi-threaded) with the tie rule restored: it asks for
  2k neighbours, and rows where items at the k-th distance may have been cut off are completed with a range
  search. Unrestricted search only.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from callbacks.hamming_kernel import counting_topk_packed

BACKENDS = ("auto", "numba", "numpy", "faiss")
MAX_BLOCK = 1 << 21  # query_chunk x gallery_chunk elements per block (uint64 XOR: 16 MB)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def check_binary_codes(x: np.ndarray, name: str = "embeddings") -> None:
    """ValueError unless ``x`` holds binary codes: only {-1, +1} or only {0, 1}."""
    vals = np.unique(x) if x.size <= 1 << 24 else np.unique(x[:: max(1, x.shape[0] // 4096)])
    bad = vals[~np.isin(vals, (-1, 0, 1))]
    if bad.size:
        raise ValueError(f"hamming distance needs binary codes in {{0,1}} or {{-1,+1}}, but the {name} hold "
                         f"float values such as {float(bad[0]):.4g}: binarise them (sign) or search them with "
                         f"distance='euclidean' or 'cosine'")
    if (vals == -1).any() and (vals == 0).any():
        raise ValueError(f"hamming codes mix -1 and 0 in the {name}; use either {{0,1}} or {{-1,+1}}")


def pack_codes(x, words: bool = True) -> np.ndarray:
    """Binary codes [N, D] (+-1 or {0,1}) -> bits (1 where the code is > 0): uint64 words [N, ceil(D/64)]
    (``words``) or bytes [N, ceil(D/8)] (FAISS layout). Unused trailing bits are 0 in every code."""
    a = _numpy(x)
    if a.ndim != 2:
        raise ValueError(f"binary codes must be [N, D], got shape {a.shape}")
    check_binary_codes(a)
    packed = np.packbits(a > 0, axis=1)
    if not words:
        return packed
    n_words = -(-a.shape[1] // 64)
    out = np.zeros((a.shape[0], n_words * 8), np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Set bits per uint64 element as uint8 (``np.bitwise_count`` on numpy >= 2, a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x, out=out) if out is not None else np.bitwise_count(x)
    counts = _POPCOUNT8[np.ascontiguousarray(x).view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)
    if out is None:
        return counts
    out[...] = counts
    return out


def _merge(run_d, run_i, rows, cand_d, cand_i, k):
    """Running top-k [r, k] + candidates (row, d, index) -> new top-k sorted by (d, index)."""
    r = run_d.shape[0]
    all_r = np.concatenate([np.repeat(np.arange(r), k), rows])
    all_d = np.concatenate([run_d.ravel(), cand_d])
    all_i = np.concatenate([run_i.ravel(), cand_i])
    order = np.lexsort((all_i, all_d, all_r))
    all_r, all_d, all_i = all_r[order], all_d[order], all_i[order]
    rank = np.arange(len(all_r)) - np.searchsorted(all_r, np.arange(r))[all_r]
    keep = rank < k
    return all_d[keep].reshape(r, k), all_i[keep].reshape(r, k)


class _Blocks:
    """Reused buffers for the XOR / popcount / threshold passes of one query chunk against gallery blocks
    of up to ``gc`` items (no allocation per block: fresh 10 MB arrays cost page faults every block)."""

    def __init__(self, r: int, gc: int, words: int, dtype):
        self.xor = np.empty((r, gc, words), np.uint64)
        self.bits = np.empty((r, gc, words), np.uint8)
        self.dist = self.bits[:, :, 0] if words == 1 else np.empty((r, gc), dtype)
        self.below = np.empty((r, gc), bool)

    def distances(self, q: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Hamming distances [r, n] of the packed queries ``q`` [r, W] to the gallery block ``g`` [n, W]."""
        n = g.shape[0]
        x = np.bitwise_xor(q[:, None, :], g[None, :, :], out=self.xor[:, :n])
        c = popcount(x, out=self.bits[:, :n])
        if c.shape[2] == 1:
            return self.dist[:, :n]
        return np.sum(c, axis=2, dtype=self.dist.dtype, out=self.dist[:, :n])

    def below_cut(self, d: np.ndarray, cut: np.ndarray):
        """(rows, cols) of the block entries with distance < the row's cut."""
        below = np.less(d, cut[:, None], out=self.below[:, : d.shape[1]])
        return np.nonzero(below)


def _query_chunk(q, g, k, n_bits, gc, mask_fn):
    """Exact top-k of a chunk of packed queries against the whole packed gallery."""
    dtype = np.uint8 if n_bits < 255 else np.uint16
    sent = n_bits + 1                               # distance of excluded pairs and empty slots
    r = q.shape[0]
    run_d = np.full((r, k), sent, np.int64)
    run_i = np.full((r, k), -1, np.int64)
    thr = np.full(r, sent, np.int64)               # an item can enter when its distance < thr
    blocks = _Blocks(r, min(gc, g.shape[0]), q.shape[1], dtype)
    for gs in range(0, g.shape[0], gc):
        ge = min(gs + gc, g.shape[0])
        d = blocks.distances(q, g[gs:ge])
        if mask_fn is not None:
            allowed = mask_fn(gs, ge)
            if allowed is not None:
                d[~allowed] = sent
        cut = thr.copy()
        open_rows = np.flatnonzero(thr == sent)
        if open_rows.size and ge - gs > k:         # list not full yet: at most the block's own k best can enter
            kth = np.partition(d[open_rows], k - 1, axis=1)[:, k - 1].astype(np.int64)
            cut[open_rows] = np.minimum(cut[open_rows], kth + 1)
        rows, cols = blocks.below_cut(d, cut.astype(d.dtype))      # cut <= sent fits d's dtype
        if rows.size:
            run_d, run_i = _merge(run_d, run_i, rows, d[rows, cols].astype(np.int64), cols + gs, k)
            full = run_i[:, -1] >= 0
            thr = np.where(full, run_d[:, -1], sent)
    return run_d, run_i


def hamming_topk_packed(q: np.ndarray, g: np.ndarray, k: int, n_bits: int, *, query_chunk: int = 256,
                        gallery_chunk: int = 8192, mask_fn=None, threads: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k on packed uint64 codes: (distances int64 [Q, k], indices int64 [Q, k]), sorted by
    (distance, gallery index); excluded pairs (``mask_fn(qs, qe, gs, ge) -> bool [q, g] allowed``) never
    appear, missing slots get index -1 and distance n_bits + 1."""
    n_q = q.shape[0]
    qc = max(1, min(query_chunk, n_q))
    gc = max(1, min(gallery_chunk, max(1, MAX_BLOCK // qc)))
    starts = list(range(0, n_q, qc))

    def run(qs):
        qe = min(qs + qc, n_q)
        fn = None if mask_fn is None else (lambda gs, ge: mask_fn(qs, qe, gs, ge))
        return _query_chunk(q[qs:qe], g, k, n_bits, gc, fn)

    workers = threads or min(len(starts), torch.get_num_threads())
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(run, starts))
    else:
        parts = [run(s) for s in starts]
    if not parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def faiss_hamming_topk(q_bytes: np.ndarray, g_bytes: np.ndarray, k: int, n_bits: int,
                       index=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with FAISS ``IndexBinaryFlat`` on byte-packed codes (n_bits % 8 == 0), ties broken by
    gallery index as in :func:`hamming_topk_packed` (2k neighbours, then a range search where needed)."""
    import faiss

    if n_bits % 8:
        raise ValueError(f"FAISS binary indexes need a code length divisible by 8, got {n_bits} bits")
    if index is None:
        index = faiss.IndexBinaryFlat(n_bits)
        index.add(np.ascontiguousarray(g_bytes))
    n_g = index.ntotal
    k2 = min(n_g, 2 * k)
    d, i = index.search(np.ascontiguousarray(q_bytes), k2)
    d, i = d.astype(np.int64), i.astype(np.int64)
    kth = d[:, k - 1]
    safe = (d[:, -1] > kth) | (k2 == n_g)          # every item at the k-th distance is in the list
    idx = np.argsort(i, axis=1, kind="stable")      # sort each row by (d, index)
    d, i = np.take_along_axis(d, idx, 1), np.take_along_axis(i, idx, 1)
    idx = np.argsort(d, axis=1, kind="stable")
    out_d, out_i = np.take_along_axis(d, idx, 1)[:, :k].copy(), np.take_along_axis(i, idx, 1)[:, :k].copy()
    redo = np.flatnonzero(~safe)
    if redo.size:
        lims, rd, ri = index.range_search(np.ascontiguousarray(q_bytes[redo]), int(kth[redo].max()) + 1)
        for n, row in enumerate(redo):
            dd, ii = rd[lims[n]:lims[n + 1]].astype(np.int64), ri[lims[n]:lims[n + 1]].astype(np.int64)
            o = np.lexsort((ii, dd))[:k]
            out_d[row], out_i[row] = dd[o], ii[o]
    return out_d, out_i


def hamming_topk(queries, gallery, k: int, *, mask_fn=None, restricted: bool = False, query_chunk: int = 256,
                 gallery_chunk: int = 8192, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Exact Hamming top-k of binary codes (+-1 or {0,1}): ``(distances float32 [Q, k], indices int64)`` as
    torch tensors on the queries' device, ties broken by gallery index; excluded pairs never appear (index
    -1, distance inf). ``mask_fn(qs, qe, gs, ge)`` gives the allowed block (None: all); ``restricted`` says
    whether one is in use (only the numpy backend restricts candidates)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    n_bits = int(queries.shape[1])
    if restricted and backend in ("numba", "faiss"):
        raise ValueError(f"backend={backend!r} cannot restrict candidates (ids / groups); use backend='numpy'")
    if backend == "auto":
        backend = "numpy" if restricted else "numba"
    device = queries.device if isinstance(queries, Tensor) else torch.device("cpu")
    if backend == "faiss":
        d, i = faiss_hamming_topk(pack_codes(queries, words=False), pack_codes(gallery, words=False), k, n_bits)
    else:
        q = pack_codes(queries)
        g = q if gallery is queries else pack_codes(gallery)
        if backend == "numba":
            d, i = counting_topk_packed(q, g, k, n_bits, threads=torch.get_num_threads())
        else:
            d, i = hamming_topk_packed(q, g, k, n_bits, query_chunk=query_chunk, gallery_chunk=gallery_chunk,
                                       mask_fn=mask_fn)
    missing = i < 0
    dist = torch.from_numpy(d.astype(np.float32))
    dist[torch.from_numpy(missing)] = float("inf")
    return dist.to(device), torch.from_numpy(i).to(device)
