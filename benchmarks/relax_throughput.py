"""RELAX throughput vs the bare forward passes it needs, and vs a naive one-mask-at-a-time loop.

Rates are masked images per second (one image explained with ``--num-masks`` masks):
- RELAX: ``RELAX(num_masks, mask_batch_size).explain(model, image)`` (mask upsampling, masking, cosine,
  float64 running sums included);
- bare forward: ``model(batch)`` under no_grad on ``num_masks`` random images in batches of
  ``mask_batch_size`` (the lower bound on RELAX's cost; goal RELAX / bare >= 0.9);
- naive: the same explainer with one mask per forward pass (``mask_batch_size=1``), on ``--naive-masks``;
- bookkeeping only: RELAX with a free ``embed`` (spatial mean), i.e. RELAX's own overhead per masked image.
Each measurement is repeated ``--repeats`` times after a warm-up, alternating; medians are reported.
On a shared machine, timings are only comparable within one run (the three alternate).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import timm
import torch

from lightning_modules.components.relax import RELAX


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spatial_mean(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--num-masks", type=int, default=500)
    p.add_argument("--mask-batch-size", type=int, default=100)
    p.add_argument("--naive-masks", type=int, default=50)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0).eval()
    image = torch.rand(1, 3, args.image_size, args.image_size)
    batch = torch.rand(args.mask_batch_size, 3, args.image_size, args.image_size)
    relax = RELAX(num_masks=args.num_masks, mask_batch_size=args.mask_batch_size)
    naive = RELAX(num_masks=args.naive_masks, mask_batch_size=1)
    n_batches, rest = divmod(args.num_masks, args.mask_batch_size)

    @torch.no_grad()
    def bare() -> None:
        for _ in range(n_batches):
            model(batch)
        if rest:
            model(batch[:rest])

    runs: Dict[str, tuple] = {
        "RELAX (batched)": (lambda: relax.explain(model, image), args.num_masks),
        "bare forward": (bare, args.num_masks),
        "naive RELAX (1 mask / forward)": (lambda: naive.explain(model, image), args.naive_masks),
        "RELAX bookkeeping only (embed = spatial mean)": (lambda: relax.explain(spatial_mean, image),
                                                          args.num_masks),
    }
    RELAX(num_masks=args.mask_batch_size, mask_batch_size=args.mask_batch_size).explain(model, image)  # warm
    times: Dict[str, list] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (fn, _) in runs.items():
            times[name].append(timed(fn))
    rate = {name: n / statistics.median(times[name]) for name, (_, n) in runs.items()}

    print(f"\n{args.backbone}, {args.image_size}x{args.image_size}, CPU x{torch.get_num_threads()} threads, "
          f"num_masks={args.num_masks}, mask_batch_size={args.mask_batch_size}, "
          f"naive_masks={args.naive_masks}, median of {args.repeats}\n")
    print("| run | masked images / s | RELAX / run |")
    print("|---|---:|---:|")
    for name, r in rate.items():
        print(f"| {name} | {r:.1f} | {rate['RELAX (batched)'] / r:.2f} |")


if __name__ == "__main__":
    main()
