"""Binary-code search at scale: exact Hamming top-k on packed 64-bit codes vs exact float search.

Same machine, one run, random data of the issue's sizes by default (1,000,000 gallery items, 10,000 queries,
top-100): 64-bit codes searched by
  * ours: ``callbacks.hamming_kernel.counting_topk_packed`` (numba: one pass over the gallery per batch of
    queries, SIMD popcount, histogram cut-off; the default backend), and the numpy block search
    ``callbacks.hamming.hamming_topk_packed`` (the backend for restricted candidate sets),
  * FAISS ``IndexBinaryFlat`` (raw ``search``, its own tie order), and FAISS with our tie rule
    (``faiss_hamming_topk``: 2k neighbours + range search where the k-th distance is tied);
against exact float search on the 512-d pooled features the codes replace (ours: ``exact_topk`` euclidean;
FAISS ``IndexFlatL2``), and on 64-d relaxed float codes (``exact_topk``). Prints wall times, the ratios
and the gallery memory of each representation; checks that ours and FAISS-with-tie-rule agree exactly.

    python benchmarks/hamming_search.py                                  # the issue's sizes (long on 2 cores)
    python benchmarks/hamming_search.py --gallery 200000 --queries 2000  # smaller
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbacks.hamming import faiss_hamming_topk, hamming_topk_packed, pack_codes  # noqa: E402
from callbacks.hamming_kernel import counting_topk_packed  # noqa: E402
from callbacks.search import exact_topk  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--float-dim", type=int, default=512)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    print(f"gallery {a.gallery:,}, queries {a.queries:,}, top-{a.k}, {a.bits}-bit codes vs {a.float_dim}-d "
          f"float32 features, {a.threads} threads")
    feats_g = rng.standard_normal((a.gallery, a.float_dim), dtype=np.float32)
    feats_q = rng.standard_normal((a.queries, a.float_dim), dtype=np.float32)
    proj = rng.standard_normal((a.float_dim, a.bits), dtype=np.float32) / np.sqrt(a.float_dim)
    relax_g, relax_q = np.tanh(feats_g @ proj), np.tanh(feats_q @ proj)      # relaxed codes
    codes_g, codes_q = np.where(relax_g >= 0, 1.0, -1.0), np.where(relax_q >= 0, 1.0, -1.0)
    words_g, words_q = pack_codes(codes_g), pack_codes(codes_q)
    bytes_g, bytes_q = pack_codes(codes_g, words=False), pack_codes(codes_q, words=False)
    rows = {}
    counting_topk_packed(words_q[:2], words_g[:1000], 10, a.bits)              # compile (cached) outside the clock
    rows["hamming, ours (numba)"] = timed(lambda: counting_topk_packed(words_q, words_g, a.k, a.bits,
                                                                       threads=a.threads))
    rows["hamming, ours (numpy blocks)"] = timed(lambda: hamming_topk_packed(words_q, words_g, a.k, a.bits,
                                                                             threads=a.threads))
    index = faiss.IndexBinaryFlat(a.bits)
    rows["hamming, FAISS IndexBinaryFlat"] = timed(lambda: (index.add(bytes_g), index.search(bytes_q, a.k))[1])
    rows["hamming, FAISS + our tie rule"] = timed(lambda: faiss_hamming_topk(bytes_q, bytes_g, a.k, a.bits,
                                                                             index=index))
    reference = rows["hamming, FAISS + our tie rule"][1][1]
    same = all(np.array_equal(rows[f"hamming, ours ({n})"][1][1], reference) for n in ("numba", "numpy blocks"))
    tq, tg = torch.from_numpy(feats_q), torch.from_numpy(feats_g)
    rows[f"float {a.float_dim}-d, ours (exact_topk)"] = timed(lambda: exact_topk(tq, tg, a.k, "euclidean"))
    flat = faiss.IndexFlatL2(a.float_dim)
    rows[f"float {a.float_dim}-d, FAISS IndexFlatL2"] = timed(lambda: (flat.add(feats_g), flat.search(feats_q, a.k))[1])
    rq, rg = torch.from_numpy(relax_q), torch.from_numpy(relax_g)
    rows[f"float {a.bits}-d relaxed, ours (exact_topk)"] = timed(lambda: exact_topk(rq, rg, a.k, "euclidean"))
    ours = rows["hamming, ours (numba)"][0]
    print("\n| search | wall s | time / ours Hamming |\n|---|---|---|")
    for name, (sec, _) in rows.items():
        print(f"| {name} | {sec:.2f} | {sec / ours:.1f}x |")
    mem = {f"{a.bits}-bit packed codes": words_g.nbytes, f"{a.float_dim}-d float32": feats_g.nbytes,
           f"{a.bits}-d float32 relaxed": relax_g.nbytes}
    print("\n| gallery representation | MiB | x packed |\n|---|---|---|")
    for name, b in mem.items():
        print(f"| {name} | {b / 2**20:.1f} | {b / words_g.nbytes:.0f}x |")
    faiss_t = rows["hamming, FAISS IndexBinaryFlat"][0]
    print(f"\nours vs FAISS IndexBinaryFlat: {ours / faiss_t:.2f}x its time (goal <= 1.2x); "
          f"float {a.float_dim}-d exact (ours) / Hamming (ours): "
          f"{rows[f'float {a.float_dim}-d, ours (exact_topk)'][0] / ours:.1f}x (goal >= 10x); "
          f"identical neighbours (numba, numpy blocks, FAISS + tie rule): {same}")


if __name__ == "__main__":
    main()
