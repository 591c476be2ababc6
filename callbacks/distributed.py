"""Exact evaluation under DDP: embed a split on every rank, gather, de-duplicate by dataset index."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def gather_by_index(trainer: pl.Trainer, local: dict[str, Tensor], expected: int | None = None
                    ) -> dict[str, Tensor]:
    """All-gather per-sample tensors from every rank and de-duplicate them by ``local['index']``.

    Ranks may hold different counts (tensors are padded for the collective, then trimmed). The
    DistributedSampler pads the last batch with repeated samples; keeping one row per dataset index makes
    the result identical to a single-process run. With ``expected``, asserts the indices are exactly
    ``0..expected-1``. Returns tensors on CPU sorted by index, identical on every rank.
    """
    if trainer.world_size > 1:
        n_local = torch.tensor([local["index"].shape[0]], device=trainer.strategy.root_device)
        counts = trainer.strategy.all_gather(n_local).flatten().tolist()
        width = max(counts)
        gathered = {}
        for key, t in local.items():
            padded = t.new_zeros((width,) + tuple(t.shape[1:]))
            padded[: t.shape[0]] = t
            all_t = trainer.strategy.all_gather(padded.to(trainer.strategy.root_device)).cpu()
            gathered[key] = torch.cat([all_t[r, :c] for r, c in enumerate(counts)])
        local = gathered
    local = {k: v.cpu() for k, v in local.items()}
    order = torch.argsort(local["index"], stable=True)
    idx = local["index"][order]
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[1:] = idx[1:] != idx[:-1]
    out = {k: v[order][keep] for k, v in local.items()}
    if expected is not None and not torch.equal(out["index"], torch.arange(expected)):
        raise RuntimeError(f"gathered {out['index'].numel()} unique samples, expected indices 0..{expected - 1} "
                           f"(world size {trainer.world_size}); the dataset must return 'index' = its position")
    return out


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluation mode (BatchNorm running stats, no dropout) for the block, then the previous mode back."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def embed_dataset(trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Dataset,
                  batch_size: int, num_workers: int = 0,
                  keys: Iterable[str] = ("label", "patient_id")) -> dict[str, Tensor]:
    """``pl_module.embed`` every sample of ``dataset`` (sharded over ranks), gathered on every rank.

    Returns ``embedding`` [N, D] float32 plus ``index`` and the requested per-sample ``keys`` that the
    samples carry, sorted by index.
    """
    sampler = None
    if trainer.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                     shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers)
    was_training = pl_module.training
    pl_module.eval()
    parts: dict[str, list] = {}
    try:
        for batch in loader:
            images = batch["image"].to(pl_module.device)
            # Methods with extra embeddings (e.g. relaxed float codes of a hashing method) return them all
            # from one forward pass: {"embedding": ..., "<variant>": ...}.
            variants = getattr(pl_module, "embed_variants", None)
            out = variants(images) if callable(variants) else {"embedding": pl_module.embed(images)}
            for name, emb in out.items():
                parts.setdefault(name, []).append(emb.float().cpu())
            for key in ("index", *keys):
                if key in batch:
                    parts.setdefault(key, []).append(torch.as_tensor(batch[key]).cpu())
    finally:
        pl_module.train(was_training)
    local = {k: torch.cat(v) for k, v in parts.items()}
    return gather_by_index(trainer, local, expected=len(dataset))
