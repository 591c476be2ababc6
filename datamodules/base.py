"""Shared LightningDataModule contract for retrieval datasets.

Every dataset family subclasses :class:`RetrievalDataModule` and only builds ``self.datasets``, a mapping
``split name -> Dataset`` of *evaluation* samples (no random augmentation). Samples are dicts with the keys
of the batch contract (README, Architecture): ``image`` (float tensor C x H x W), ``label`` (int, or multi-hot),
``patient_id`` (int), ``index`` (position of the sample in its split's dataset), optional ``mask``
(organ segmentation, 1 x H x W) and dataset extras (e.g. ``hu``, the slice in Hounsfield units).

Training samples additionally carry ``views``: a method's view transform (``LightningModule.view_transform()``,
a MONAI-style dict transform) is applied on top of the evaluation sample. The module owns its views (they
are part of the method); the DataModule asks the attached module for them in :meth:`setup`.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import EpochSeededSampler, ResumableDataLoader, sample_seed

SPLITS = ("train", "val", "test")


class TransformedDataset(Dataset):
    """Applies a random dict transform (a method's views) on top of another dataset's samples.

    The transform's randomness is seeded per sample from (seed, epoch, index): keys are ``(epoch, index)``
    pairs from :class:`EpochSeededSampler`, or plain indices (epoch -1, so held-out views are the same every
    epoch). Results do not depend on worker count, DDP rank or restarts; the caller's RNG is left untouched.
    """

    def __init__(self, base: Dataset, transform: Optional[Callable[[dict], dict]], seed: int = 0):
        self.base = base
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> dict:
        epoch, index = key if isinstance(key, (tuple, list)) else (-1, key)
        sample = dict(self.base[index])
        if self.transform is None:
            return sample
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, int(index)))
            return self.transform(sample)


class RetrievalDataModule(pl.LightningDataModule):
    """Base class: loaders for train (with views), val/test/predict (evaluation samples) and retrieval.

    Args:
        batch_size: samples per batch and per process.
        num_workers: DataLoader worker processes.
        predict_split: which split ``predict`` embeds.
        train_views: explicit view transform; when None the attached LightningModule's
            ``view_transform()`` is used (the usual case).
        seed: seed of the training order and of every sample's augmentation; None = the run's
            ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0.
    """

    #: label value (or multi-hot position) -> readable name, for figures; empty = show the numbers
    class_names: Dict[int, str] = {}

    def __init__(self, batch_size: int = 32, num_workers: int = 2, predict_split: str = "test",
                 train_views: Optional[Callable[[dict], dict]] = None, seed: Optional[int] = None):
        super().__init__()
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split={predict_split!r}: expected one of {SPLITS}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.predict_split = predict_split
        self.train_views = train_views
        self.seed = seed
        self.datasets: Dict[str, Dataset] = {}

    # -- to implement in subclasses -------------------------------------------------------------
    def build_datasets(self) -> Dict[str, Dataset]:
        """Return ``{"train": ..., "val": ..., "test": ...}`` evaluation datasets (deterministic samples)."""
        raise NotImplementedError

    # -- Lightning hooks --------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if not self.datasets:
            self.datasets = self.build_datasets()
        if self.train_views is None and self.trainer is not None:
            view_fn = getattr(self.trainer.lightning_module, "view_transform", None)
            self.train_views = view_fn() if callable(view_fn) else None

    def retrieval_dataset(self, split: str) -> Dataset:
        """Evaluation dataset of ``split`` (no augmentation); ``sample['index']`` is the position in it."""
        if not self.datasets:
            self.setup()
        if split not in self.datasets:
            raise KeyError(f"split {split!r} not available; this DataModule has {sorted(self.datasets)}")
        return self.datasets[split]

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    @property
    def run_seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _views_dataset(self, split: str) -> TransformedDataset:
        return TransformedDataset(self.retrieval_dataset(split), self.train_views, seed=self.run_seed)

    def _batches_done(self) -> int:
        """Batches of the current epoch the trainer has finished (exact at any checkpoint)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seed, epoch) order with seeded views; resumes mid-epoch from any checkpoint."""
        ds = self._views_dataset("train")
        sampler = EpochSeededSampler(ds, seed=self.run_seed, shuffle=True)
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=sampler,
                                   batches_done=self._batches_done, drop_last=len(sampler) > self.batch_size,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._views_dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._views_dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.retrieval_dataset(self.predict_split))
