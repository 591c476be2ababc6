"""Saliency cost of IG-CBIR: maps per second of zennit Deep Taylor vs gradient x input vs a forward pass.

Same DenseNet classifier (torchvision densenet121 layout, one output), same batch, eval mode:
- forward: ``model(batch)`` under no_grad (what the CNN baseline's embedding costs);
- gradient x input: one forward + backward to the input;
- Deep Taylor (zennit): the ``reference`` and ``deep_taylor`` rule maps of
  ``lightning_modules.components.saliency.relevance`` (forward + modified backward + hook bookkeeping).
Each is repeated ``--repeats`` times after a warm-up, alternating; medians are reported with ratios to the
forward pass. On a shared machine only ratios from one run are comparable. ``--device cuda`` on a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_modules.components.saliency import DenseNetClassifier, gradient_x_input, normalise, relevance


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", default="densenet121")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = DenseNetClassifier(args.architecture).to(dev).eval()
    batch = normalise(torch.rand(args.batch_size, 3, args.image_size, args.image_size)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def forward():
        model(batch)

    methods = {"forward": forward, "gradient x input": lambda: gradient_x_input(model, batch),
               "Deep Taylor (reference rules)": lambda: relevance(model, batch, "reference"),
               "Deep Taylor (textbook z+ / z^B)": lambda: relevance(model, batch, "deep_taylor")}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["forward"])
    print(f"{args.architecture}, batch {args.batch_size} x {args.image_size} px, {dev}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:34s} {args.batch_size / t:9.1f} maps/s   {t / base:6.2f} x forward time")


if __name__ == "__main__":
    main()
