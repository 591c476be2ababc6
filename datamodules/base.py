"""Shared LightningDataModule contract for retrieval datasets.

Every dataset family subclasses :class:`RetrievalDataModule` and only builds ``self.datasets``, a mapping
``split name -> Dataset`` of *evaluation* samples (no random augmentation). Samples are dicts with the keys
of the batch contract (DESIGN.md): ``image`` (float tensor C x H x W), ``label`` (int, or multi-hot),
``patient_id`` (int), ``index`` (position of the sample in its split's dataset), optional ``mask``
(organ segmentation, 1 x H x W) and dataset extras (e.g. ``hu``, the slice in Hounsfield units).

Training samples additionally carry ``views``: a method's view transform (``LightningModule.view_transform()``,
a MONAI-style dict transform) is applied on top of the evaluation sample. The module owns its views (they
are part of the method); the DataModule asks the attached module for them in :meth:`setup`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")


class TransformedDataset(Dataset):
    """Applies a dict transform on top of another dataset's samples (copying the dict first)."""

    def __init__(self, base: Dataset, transform: Optional[Callable[[dict], dict]]):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.base[i])
        return self.transform(sample) if self.transform is not None else sample


class RetrievalDataModule(pl.LightningDataModule):
    """Base class: loaders for train (with views), val/test/predict (evaluation samples) and retrieval.

    Args:
        batch_size: samples per batch and per process.
        num_workers: DataLoader worker processes.
        predict_split: which split ``predict`` embeds.
        train_views: explicit view transform; when None the attached LightningModule's
            ``view_transform()`` is used (the usual case).
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 2, predict_split: str = "test",
                 train_views: Optional[Callable[[dict], dict]] = None):
        super().__init__()
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split={predict_split!r}: expected one of {SPLITS}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.predict_split = predict_split
        self.train_views = train_views
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

    def _loader(self, dataset: Dataset, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        ds = TransformedDataset(self.retrieval_dataset("train"), self.train_views)
        drop_last = len(ds) > self.batch_size
        return self._loader(ds, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(TransformedDataset(self.retrieval_dataset("val"), self.train_views))

    def test_dataloader(self) -> DataLoader:
        return self._loader(TransformedDataset(self.retrieval_dataset("test"), self.train_views))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.retrieval_dataset(self.predict_split))
