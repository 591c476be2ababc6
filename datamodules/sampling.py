"""Reproducible, resumable training order: the same samples and augmentations after a restart.

* :class:`EpochSeededSampler` shuffles with (seed, epoch), shards over DDP ranks like
  ``DistributedSampler`` and yields ``(epoch, index)`` keys, so the dataset can seed every sample's
  augmentation from (seed, epoch, index) instead of from worker RNG state.
* :class:`ResumableDataLoader` is "stateful" for Lightning: its ``state_dict()`` (saved in every checkpoint,
  mid-epoch ones included) holds the epoch and the number of batches the trainer has finished in it;
  ``load_state_dict()`` makes the next iterator skip exactly those batches.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

SampleKey = Tuple[int, int]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation in one epoch (independent of workers, ranks and restarts)."""
    return (((seed * 1_000_003) ^ epoch) * 1_000_003 ^ index) % (2**63 - 1)


class EpochSeededSampler(DistributedSampler):
    """``DistributedSampler`` (so Lightning does not re-wrap it) yielding ``(epoch, index)`` keys.

    Works without an initialised process group (one replica). ``skip_samples`` are dropped from the start of
    the next iteration only (mid-epoch resume); ``len()`` stays the full epoch, as Lightning counts batches.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None):
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip_samples = 0

    def __iter__(self) -> Iterator[SampleKey]:
        indices = list(super().__iter__())
        skip, self.skip_samples = self.skip_samples, 0
        return iter([(self.epoch, i) for i in indices[skip:]])


class ResumableDataLoader(DataLoader):
    """DataLoader over an :class:`EpochSeededSampler` whose position is saved in Lightning checkpoints.

    ``batches_done()`` returns how many batches of the current epoch the trainer has finished (its batch
    progress), which is exact at any checkpoint, unlike counting fetched batches (Lightning prefetches).
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochSeededSampler,
                 batches_done: Callable[[], int], **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": int(self._batches_done())}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip_samples = done * (self.batch_size or 1)  # batch_size None: the sampler yields batches
