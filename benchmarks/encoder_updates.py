"""How much does each optimiser setting move the SimCLR-GeM encoder? Relative weight change after N steps.

Prints, for LARS (the paper's lr 0.05, eta 0.001; and SimCLR's lr 4.8) and for SGD at lr 0.05 (the phantom
configs), the relative change |w_N - w_0| / |w_0| of all conv kernels together, of all BatchNorm weights and
biases together, and GeM's p.
The steps use random crops (the magnitude of an update does not depend much on the content).

    python benchmarks/encoder_updates.py --steps 10 --size 32
"""
from __future__ import annotations

import argparse

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
    groups = {"conv": [], "bn_bias": []}
    for n, p in model.named_parameters():
        if "pool.p" not in n and p.ndim != 2:  # conv kernels vs BatchNorm weights / biases (linear layers skipped)
            groups["conv" if p.ndim == 4 else "bn_bias"].append((p.detach() - before[n], before[n]))

    def relative(pairs):  # |w_N - w_0| / |w_0| over the whole group (zero-initialised biases included)
        delta, start = (torch.cat([t[i].flatten() for t in pairs]) for i in (0, 1))
        return float(delta.norm() / start.norm())

    return {**{k: relative(v) for k, v in groups.items()}, "gem_p": float(model.encoder.pool.p.detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.steps} steps, batch {args.batch}, {args.size} px; relative change of each parameter group")
    print("| optimiser | lr | conv weights | BatchNorm / bias | GeM p |")
    print("|---|---|---|---|---|")
    for optimizer, lr in (("lars", 0.05), ("lars", 4.8), ("sgd", 0.05)):
        r = relative_change(optimizer, lr, args.steps, args.size, args.batch)
        print(f"| {optimizer} | {lr} | {r['conv']:.2e} | {r['bn_bias']:.2e} | {r['gem_p']:.4f} |")


if __name__ == "__main__":
    main()
