"""Exact Hamming top-k in one pass over the gallery, compiled with numba (Python threads over query ranges;
the kernel releases the GIL).

Distances of a K-bit code are integers 0..K, so the top-k needs no sort (docs/metrics.md tie rule: equal
distances -> lower gallery index). A batch of B queries walks the gallery tile by tile: the tile's codes are
read once for all B queries, its distances computed with a SIMD popcount loop (``llvm.ctpop``), and a tile
is skipped when its smallest distance exceeds the query's current cut-off. Entering items are appended in
gallery order with a histogram of their distances; the cut-off drops to the k-th held distance as soon as
k items lie below it. At the end every held item with d below the k-th distance T goes to the slot range
of its distance, then the first k - #{d < T} items at T: within one distance items are in index order, so
the result is sorted by (distance, index) exactly as a stable sort of the full distance row would give.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _popcount64(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (the CPU's popcount instruction)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@njit(cache=True, nogil=True)
def _compact(cd, ci, n, thr, below, k):
    """Drop held candidates that can no longer enter: d > thr, and ties at thr beyond the k - below
    first ones (the buffer is in gallery order, so the first ties are the ones the tie rule keeps)."""
    m, ties = 0, 0
    for c in range(n):
        if cd[c] < thr or (cd[c] == thr and ties < k - below):
            ties += cd[c] == thr
            cd[m], ci[m] = cd[c], ci[c]
            m += 1
    return m, ties


@njit(cache=True, nogil=True)
def _tile_distances(q, g, j0, j1, out):
    """out[:j1 - j0] = Hamming distances of the packed code q [W] to g[j0:j1] (a SIMD popcount loop)."""
    n = j1 - j0
    for j in range(n):
        out[j] = _popcount64(q[0] ^ g[j0 + j, 0])
    for w in range(1, g.shape[1]):
        for j in range(n):
            out[j] += _popcount64(q[w] ^ g[j0 + j, w])


@njit(cache=True, nogil=True)
def _batch_topk(qb, g, k, n_bits, out_d, out_i, tile):
    """Top-k of the queries ``qb`` [B, W] in one pass over the gallery, tile by tile (a tile of codes is
    read from memory once for all B queries and its distances are computed with SIMD popcounts).

    Per query: held candidates (gallery order), their histogram ``hist``, the cut-off ``thr`` (the k-th
    distance of the held set) and ``below`` = #held with d < thr. An item enters when d < thr, or d == thr
    while fewer than k - below ties are held. When below reaches k, thr drops (below stays < k). A tile
    whose smallest distance exceeds thr is skipped without a scan."""
    n_g = g.shape[0]
    n_b = qb.shape[0]
    bins = n_bits + 2
    cap = 4 * k
    hist = np.zeros((n_b, bins), np.int64)
    thr = np.full(n_b, n_bits + 1, np.int64)               # nothing is at n_bits + 1: all enter at first
    below = np.zeros(n_b, np.int64)
    held = np.zeros(n_b, np.int64)
    cd = np.empty((n_b, cap), np.int64)
    ci = np.empty((n_b, cap), np.int64)
    dist = np.empty(tile, np.uint64)
    for j0 in range(0, n_g, tile):
        j1 = min(n_g, j0 + tile)
        for b in range(n_b):
            _tile_distances(qb[b], g, j0, j1, dist)
            if np.int64(dist[: j1 - j0].min()) > thr[b]:
                continue
            for j in range(j1 - j0):
                d, t = np.int64(dist[j]), thr[b]
                if d > t or (d == t and hist[b, t] >= k - below[b]):
                    continue
                if held[b] == cap:
                    held[b], hist[b, t] = _compact(cd[b], ci[b], cap, t, below[b], k)
                cd[b, held[b]], ci[b, held[b]] = d, j0 + j
                held[b] += 1
                hist[b, d] += 1
                if d < t:
                    below[b] += 1
                    while below[b] >= k:                    # entries below thr fill k slots: lower thr
                        thr[b] -= 1
                        below[b] -= hist[b, thr[b]]
    for b in range(n_b):                                    # place: distance buckets, gallery order within
        t, base = thr[b], 0
        start = np.empty(bins, np.int64)
        for u in range(t + 1):
            start[u] = base
            base += hist[b, u]
        for c in range(held[b]):
            d = cd[b, c]
            if d <= t and start[d] < k:
                out_d[b, start[d]], out_i[b, start[d]] = d, ci[b, c]
                start[d] += 1


@njit(cache=True, nogil=True)
def _topk_range(q, g, k, n_bits, out_d, out_i, lo, hi, batch, tile):
    """Queries q[lo:hi], ``batch`` at a time (one thread; releases the GIL)."""
    for start in range(lo, hi, batch):
        stop = min(hi, start + batch)
        _batch_topk(q[start:stop].copy(), g, k, n_bits, out_d[start:stop], out_i[start:stop], tile)


def counting_topk_packed(q: np.ndarray, g: np.ndarray, k: int, n_bits: int, threads: int | None = None,
                         batch: int = 16, tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k on packed uint64 codes ``q`` [Q, W], ``g`` [G, W] (k <= G): (distances int64 [Q, k],
    indices int64 [Q, k]) sorted by (distance, gallery index); ``threads`` defaults to the CPU count."""
    if not 1 <= k <= g.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the gallery size {g.shape[0]}")
    if n_bits >= 1 << 16:
        raise ValueError(f"codes of {n_bits} bits: the counting search supports fewer than 65536 bits")
    n_q = q.shape[0]
    out_d = np.empty((n_q, k), np.int64)
    out_i = np.empty((n_q, k), np.int64)
    q, g = np.ascontiguousarray(q), np.ascontiguousarray(g)
    workers = max(1, min(threads or os.cpu_count() or 1, -(-n_q // batch)))
    bounds = np.linspace(0, n_q, workers + 1).astype(np.int64)

    def run(part: int) -> None:
        _topk_range(q, g, k, n_bits, out_d, out_i, bounds[part], bounds[part + 1], batch, tile)

    if workers == 1:
        run(0)
    else:     # Python threads, not numba's OpenMP layer: a second OpenMP runtime beside torch's changed
        with ThreadPoolExecutor(workers) as pool:     # torch's float results after a resume
            list(pool.map(run, range(workers)))
    return out_d, out_i
