"""Lightning ``fit`` vs a hand-written PyTorch loop: same model, data, steps; training images per second.

Both runs train SimSiam-HU (ResNet-18, 64 px) on the CT phantom with the same DataLoader settings. Time is
measured in steady state, from the end of the warm-up steps to the end of the last step (data loading
included), alternating the two loops ``--repeats`` times; the ratio of medians is printed (goal >= 0.95).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import write_liver_phantom
from lightning_modules.simsiam import SimSiam


class SteadyStateTimer(pl.Callback):
    """Records wall time between the end of step ``warmup`` and the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def make(args, root):
    pl.seed_everything(0, verbose=False)
    model = SimSiam(backbone=args.backbone, proj_hidden_dim=512, proj_dim=512, pred_hidden_dim=128)
    dm = DecathlonLiverDataModule(str(root), image_size=args.image_size, train_volumes=46,
                                  batch_size=args.batch_size, num_workers=args.workers)
    dm.train_views = model.view_transform()
    dm.setup("fit")
    return model, dm


def plain_loop(args, root) -> float:
    model, dm = make(args, root)
    model.train()
    opt = model.configure_optimizers()
    start = None
    for step, batch in enumerate(dm.train_dataloader()):
        loss, _ = model.simsiam_loss(batch["views"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == args.warmup - 1:
            start = time.perf_counter()
        if step + 1 == args.steps:
            break
    return (args.steps - args.warmup) * args.batch_size / (time.perf_counter() - start)


def lightning_loop(args, root) -> float:
    model, dm = make(args, root)
    timer = SteadyStateTimer(args.warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=True, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    return (args.steps - args.warmup) * args.batch_size / (timer.end - timer.start)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=14, help="steps per run (<= one epoch of the phantom)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_liver_phantom(Path(tmp) / "Task03_Liver", n_volumes=48, n_test_volumes=0, seed=0)
        plain, light = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(args, root))
            light.append(lightning_loop(args, root))
    mp, ml = statistics.median(plain), statistics.median(light)
    print(f"\nthreads={torch.get_num_threads()} backbone={args.backbone} {args.image_size}px "
          f"batch={args.batch_size} measured steps={args.steps - args.warmup} x {args.repeats} repeats")
    print("| loop | img/s (median) | runs |\n|---|---|---|")
    print(f"| plain PyTorch | {mp:.1f} | {', '.join(f'{x:.1f}' for x in plain)} |")
    print(f"| Lightning fit | {ml:.1f} | {', '.join(f'{x:.1f}' for x in light)} |")
    print(f"Lightning / plain img/s ratio: {ml / mp:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
