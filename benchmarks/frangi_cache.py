"""Frangi vesselness cost per 64 x 64 crop (scikit-image vs ours) and the epoch time saved by the crop cache.

1. Frangi et al. 1998 with the paper's 41 scales on DeepLesion-phantom crops: ``skimage.filters.frangi``
   one crop at a time (as the reference code filters in ``__getitem__``) vs :func:`frangi_vesselness` one
   crop at a time and batched; medians of ``--repeats`` runs, outputs checked equal.
2. One pass over the training split of DeepLesionDataModule (``frangi=True``, ``cache_dir``): the first pass
   decodes the PNGs, crops and computes Frangi (filling the cache); the second, a fresh DataModule on the same
   cache, reads the cache. Pass = setup + iterating the train loader (no model).

Run: ``python benchmarks/frangi_cache.py`` (``--patients``, ``--repeats``, ``--threads`` change the workload;
DataLoader workers run torch with one thread, so ``--threads 1`` is the per-sample transform setting).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datamodules.deeplesion import DeepLesionDataModule
from datamodules.synthetic.deeplesion import write_deeplesion_phantom
from datamodules.transforms.frangi import PAPER_SIGMAS, frangi_vesselness

PAPER = dict(alpha=1.0, beta=0.6, gamma=0.0444, black_ridges=False)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def frangi_costs(crops: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per crop: scikit-image and ours one by one (first ``n_single`` crops), ours batched (all)."""
    from skimage.filters import frangi

    single = crops[:8]
    ref = [frangi(c, sigmas=PAPER_SIGMAS, **PAPER) for c in single]
    ours = frangi_vesselness(single, **PAPER)
    assert np.allclose(np.stack(ref), ours, atol=1e-5), "frangi_vesselness differs from scikit-image"
    frangi_vesselness(crops[:2], **PAPER)  # build the operator matrices once
    return {
        "scikit-image, one crop at a time": median_time(
            lambda: [frangi(c, sigmas=PAPER_SIGMAS, **PAPER) for c in single], repeats) / len(single),
        "ours, one crop at a time": median_time(
            lambda: [frangi_vesselness(c, **PAPER) for c in single], repeats) / len(single),
        f"ours, batched ({len(crops)} crops)": median_time(
            lambda: frangi_vesselness(crops, **PAPER), repeats) / len(crops),
    }


def epoch_pass(root: Path, cache: Path, workers: int) -> float:
    """Seconds for setup + one pass over the train loader of a fresh DataModule on ``cache``."""
    start = time.perf_counter()
    dm = DeepLesionDataModule(str(root), frangi=True, cache_dir=str(cache), batch_size=64,
                              num_workers=workers)
    dm.setup()
    for batch in dm.train_dataloader():
        assert batch["vesselness"].shape[1:] == (1, 64, 64)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40, help="phantom patients (about 9 lesions each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the epoch passes")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_deeplesion_phantom(Path(tmp) / "DeepLesion", n_patients=args.patients)
        dm = DeepLesionDataModule(str(root), num_workers=0)
        dm.setup()
        hu = torch.stack([s["hu"][0] for s in dm.datasets["train"]]).numpy()
        crops = ((np.clip(hu, -1024, 3071) + 1024) / 4095).astype(np.float32)  # the windowed crops
        costs = frangi_costs(crops, args.repeats)
        first = epoch_pass(root, Path(tmp) / "cache", args.workers)
        second = epoch_pass(root, Path(tmp) / "cache", args.workers)
    base = costs["scikit-image, one crop at a time"]
    print(f"Frangi vesselness, 41 scales, 64 x 64 crops ({torch.get_num_threads()} torch threads)")
    print(f"{'method':<36}{'ms / crop':>10}{'speed-up':>10}")
    for name, sec in costs.items():
        print(f"{name:<36}{sec * 1e3:>10.2f}{base / sec:>9.1f}x")
    print(f"\nDeepLesionDataModule(frangi=True), one pass over the train split ({len(crops)} lesions, "
          f"{args.workers} workers)")
    print(f"{'pass':<36}{'seconds':>10}{'ratio':>10}")
    print(f"{'1st: decode PNG + crop + Frangi':<36}{first:>10.2f}{1.0:>9.1f}x")
    print(f"{'2nd: from cache_dir':<36}{second:>10.2f}{first / second:>9.1f}x")


if __name__ == "__main__":
    main()
