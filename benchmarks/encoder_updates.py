"""How much does each optimiser setting move the SimCLR-GeM encoder? Relative weight change after N steps.

Prints, for LARS (the paper's lr 0.05, eta 0.001) and for SGD at the same lr (the phantom configs), the median
relative change |w_N - w_0| / |w_0| of the conv weights, of the BatchNorm / bias parameters, and GeM's p.
The steps use random crops (the magnitude of an update does not depend much on the content).

    python benchmarks/encoder_updates.py --steps 10 --size 32
"""
from __future__ import annotations

import argparse
import statistics

import torch

from lightning_modules.simclr_gem import SimCLRGeM


def relative_change(optimizer: str, lr: float, steps: int, size: int, batch: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = SimCLRGeM(backbone="resnet18", extra_channels=(256, 256), optimizer=optimizer, lr=lr,
                      lr_schedule="constant", proj_hidden_dim=256, proj_dim=64)
    opt = model.configure_optimizers()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    for _ in range(steps):
        views = [torch.rand(batch, 3, size, size) for _ in range(2)]
        loss = model.simclr_loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
    conv, norm = [], []
    for n, p in model.named_parameters():
        change = float((p.detach() - before[n]).norm() / before[n].norm().clamp_min(1e-12))
        (conv if p.ndim == 4 else norm if "pool.p" not in n else []).append(change)
    return {"conv": statistics.median(conv), "bn_bias": statistics.median(norm),
            "gem_p": float(model.encoder.pool.p)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.steps} steps, batch {args.batch}, {args.size} px; median relative change per parameter tensor")
    print("| optimiser | lr | conv weights | BatchNorm / bias | GeM p |")
    print("|---|---|---|---|---|")
    for optimizer, lr in (("lars", 0.05), ("lars", 4.8), ("sgd", 0.05)):
        r = relative_change(optimizer, lr, args.steps, args.size, args.batch)
        print(f"| {optimizer} | {lr} | {r['conv']:.2e} | {r['bn_bias']:.2e} | {r['gem_p']:.4f} |")


if __name__ == "__main__":
    main()
