"""Class-balanced batches (Öztürk et al. 2021: 20 images per batch, at most 3 per class), seeded and resumable.

Multi-label data have no single class per image. Here the *class of an image* is its rarest label
(lowest count in the training split; "No Finding" is a label like the others), so every finding, however
rare, is a class of its own and an image of "Effusion|Hernia" fills a Hernia slot. Each batch visits the
classes in a random order and takes ``per_class`` random images of each (fewer when a class has fewer, and
the last class fills the remainder) until ``batch_size`` images are drawn; a batch is smaller only when all
classes together hold fewer than ``batch_size`` images at ``per_class`` each.

Batch b of epoch e depends on (seed, e, b) only, so a resumed run skips the finished batches and continues
with exactly the batches the uninterrupted run would have drawn. Under DDP, rank r takes batches
r, r + W, r + 2W, ... (every rank the same number), and the sampler is a ``DistributedSampler`` so that
Lightning does not re-wrap it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from datamodules.sampling import EpochSeededSampler, SampleKey


def rarest_label_classes(labels: np.ndarray) -> np.ndarray:
    """Class of each image of a multi-hot [N, C] array: its label with the lowest count (ties: the lower
    label index); images without any positive label form class C."""
    labels = np.asarray(labels) > 0
    counts = labels.sum(0).astype(float)
    cost = np.where(labels, counts[None, :], np.inf)
    classes = np.argmin(cost, axis=1)
    classes[~labels.any(1)] = labels.shape[1]
    return classes


class ClassBalancedBatchSampler(EpochSeededSampler):
    """Yields batches (lists of ``(epoch, index)`` keys) of ``batch_size`` images with at most ``per_class``
    per class (see the module docstring). One epoch = ``len(classes) // batch_size`` batches over all ranks
    (about one pass worth of images). ``skip_samples`` counts *batches* here (mid-epoch resume)."""

    def __init__(self, classes: Sequence[int], batch_size: int = 20, per_class: int = 3, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        if batch_size < 1 or per_class < 1:
            raise ValueError(f"batch_size={batch_size}, per_class={per_class}: expected positive integers")
        self.classes = np.asarray(classes, dtype=np.int64)
        super().__init__(range(len(self.classes)), seed=seed, shuffle=True, num_replicas=num_replicas,
                         rank=rank)
        self.batch_size, self.per_class = int(batch_size), int(per_class)
        self.members = [np.flatnonzero(self.classes == c) for c in np.unique(self.classes)]
        self.total_batches = max(1, len(self.classes) // self.batch_size) // self.num_replicas * self.num_replicas
        if self.total_batches == 0:
            raise ValueError(f"{len(self.classes)} images cannot give one batch per process "
                             f"({self.num_replicas} processes)")

    def __len__(self) -> int:
        return self.total_batches // self.num_replicas

    def batch(self, epoch: int, b: int) -> list[int]:
        """Dataset indices of batch ``b`` of ``epoch`` (deterministic in (seed, epoch, b))."""
        rng = np.random.default_rng([self.seed, epoch, b])
        out: list[int] = []
        for c in rng.permutation(len(self.members)):
            if len(out) == self.batch_size:
                break
            take = min(self.per_class, self.batch_size - len(out), len(self.members[c]))
            out += rng.choice(self.members[c], take, replace=False).tolist()
        return out

    def __iter__(self) -> Iterator[list[SampleKey]]:
        skip, self.skip_samples = self.skip_samples, 0
        mine = range(self.rank, self.total_batches, self.num_replicas)
        return iter([[(self.epoch, i) for i in self.batch(self.epoch, b)] for b in list(mine)[skip:]])


class BatchKeysDataset(Dataset):
    """``dataset[list of keys]`` -> one collated batch: lets a batch sampler be a DataLoader's ``sampler``
    (``batch_size=None``), so Lightning sees a ``DistributedSampler`` and keeps it."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, keys: list[SampleKey]) -> dict:
        return default_collate([self.base[tuple(k) if isinstance(k, (list, tuple)) else k] for k in keys])
