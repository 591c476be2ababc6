"""PF0 / PF1 / PF2 / plain ResNet-18 hashing side by side on the chest X-ray phantom, with controls.

For each variant (the four ``*hashing*_phantom`` configs' models, at a CPU size) and seed: test P@10 of the
untrained network, of the equal-steps control (same batches and steps, weights frozen, BatchNorm statistics
updated: ``callbacks.learning_curve.evaluate_after_steps``) and of the trained network, for the binary codes
(Hamming, ``test/P@10``) and the relaxed codes (``test/float/P@10``). Also prints the chance level (the
expected P@10 of a random ranking: the mean share of gallery items that share a finding with the query), so a
degenerate code (every image the same code: ties ranked by gallery index) can be read against it.

    python benchmarks/hashing_ablation.py                          # 4 variants x 2 seeds, 32 px, 8 epochs
    python benchmarks/hashing_ablation.py --variants PF2 --seeds 0 --epochs 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbacks import RetrievalEvaluation  # noqa: E402
from callbacks.learning_curve import evaluate_after_steps  # noqa: E402
from datamodules.chestxray14 import ChestXray14DataModule  # noqa: E402
from datamodules.synthetic.chestxray14 import write_chestxray14_phantom  # noqa: E402
from lightning_modules.attention_hashing import AttentionHashing  # noqa: E402

VARIANTS = {  # name: (attention_blocks, fc_dim) as in the phantom configs
    "PF2": (2, 512), "PF1": (1, 512), "PF0": (0, 512), "ResNet-18": (0, None)}
KEYS = ("test/P@10", "test/float/P@10")


def chance_p10(dm: ChestXray14DataModule) -> float:
    """Expected P@10 of a random ranking: mean over test queries of the share of relevant gallery items."""
    dm.setup("test")
    q = torch.stack([torch.as_tensor(s["label"]) for s in dm.datasets["test"]]).float()
    g = torch.stack([torch.as_tensor(s["label"]) for s in dm.datasets["train"]]).float()
    return float(((q @ g.T) > 0).float().mean())


def distinct_codes(model: AttentionHashing, dm: ChestXray14DataModule) -> int:
    """Number of different binary codes the model gives the test images (1 = a degenerate code)."""
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.embed(b["image"]) for b in dm.test_dataloader()])
    return len(torch.unique(codes, dim=0))


def scores(variant: str, bits: int, root: Path, size: int, epochs: int, seed: int, mode: str, tmp: Path) -> dict:
    blocks, fc = VARIANTS[variant]
    pl.seed_everything(seed)
    model = AttentionHashing(hash_bits=bits, attention_blocks=blocks, fc_dim=fc, attention_channels=(4, 4, 8, 8, 8),
                             lr=1e-3)
    dm = ChestXray14DataModule(str(root), image_size=size, num_workers=0, sampler="shuffle")
    evaluation = RetrievalEvaluation(relevance="label_overlap", k_values=[10], metrics=["P"])
    out = evaluate_after_steps(model, dm, [evaluation], 0 if mode == "untrained" else epochs, mode == "control", tmp)
    return {**{k: float(out[k]) for k in KEYS}, "codes": distinct_codes(model, dm)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patients", type=int, default=260)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hashing_ablation_"))
    root = write_chestxray14_phantom(tmp / "ChestX-ray14", n_patients=a.patients, image_size=a.size, seed=0)
    chance = chance_p10(ChestXray14DataModule(str(root), image_size=a.size, num_workers=0))
    print(f"chest X-ray phantom, {a.patients} patients, {a.size} px, {a.bits}-bit codes, {a.epochs} epochs; "
          f"chance P@10 (random ranking) = {chance:.3f}")
    rows = []
    for variant in a.variants:
        for seed in a.seeds:
            start = time.perf_counter()
            res = {mode: scores(variant, a.bits, root, a.size, a.epochs, seed, mode, tmp)
                   for mode in ("untrained", "control", "trained")}
            rows.append((variant, seed, res))
            print(f"{variant} seed {seed} ({time.perf_counter() - start:.0f} s): "
                  + "; ".join(f"{k} " + " / ".join(f"{res[m][k]:.3f}" for m in res) for k in KEYS)
                  + "; distinct test codes " + " / ".join(str(res[m]["codes"]) for m in res), flush=True)
    print("\n| variant | seed | binary P@10 untrained / control / trained | float P@10 untrained / "
          "control / trained | distinct test codes |\n|---|---|---|---|---|")
    for variant, seed, res in rows:
        cells = [" / ".join(f"{res[m][k]:.3f}" for m in ("untrained", "control", "trained")) for k in KEYS]
        n = " / ".join(str(res[m]["codes"]) for m in ("untrained", "control", "trained"))
        print(f"| {variant} | {seed} | {cells[0]} | {cells[1]} | {n} |")
    print(f"\nchance P@10 = {chance:.3f}")


if __name__ == "__main__":
    main()
