"""SimCLR-GeM stage 2: fine-tuning for retrieval with a margin loss (Qi, Cheng & Haehn 2023).

The stage-1 encoder (:class:`lightning_modules.simclr_gem.SimCLRGeM`, projection head dropped) is trained
on labelled lesion crops with L = 1/2 max(0, m + d(a, p) - d(a, n)), m = 0.8, d = cosine distance, over
(anchor, positive of the same lesion type, negative of another type) triplets.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.checkpoints import check_format, describe_mismatch, read_checkpoint
from lightning_modules.components.gem_encoder import GeMEncoder
from lightning_modules.components.losses import MarginTripletLoss, has_triplet
from lightning_modules.components.optim import check_optimizer, optimizer_with_schedule
from lightning_modules.components.views import ContrastiveViewsd

CHECKPOINT_KEY = "model.init_args.stage1_checkpoint"


def load_encoder_state(path: str, prefix: str = "encoder.") -> dict:
    """The ``prefix`` entries of a Lightning checkpoint's (or a plain) state dict, prefix removed."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{CHECKPOINT_KEY}={path!r}: file not found (expected a Lightning .ckpt "
                                f"written by SimCLRGeM stage-1 training)")
    checkpoint = read_checkpoint(file, CHECKPOINT_KEY)   # weights_only=True; one message per bad file
    if isinstance(checkpoint, dict):
        check_format(checkpoint, f"{CHECKPOINT_KEY}={path!r}")
        written_by = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        if written_by and written_by.rsplit(".", 1)[-1] not in ("SimCLRGeM", "SimCLRGeMFinetune"):
            raise ValueError(f"{CHECKPOINT_KEY}={path!r}: written by {written_by}; expected a SimCLRGeM stage-1 "
                             f"checkpoint")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder:
        raise ValueError(f"{CHECKPOINT_KEY}={path!r}: no '{prefix}*' weights in it (not a SimCLRGeM "
                         f"checkpoint?)")
    return encoder


def training_labels(datamodule) -> Tensor:
    """Labels of the training split: from ``datamodule.rows['train']`` (DeepLesion) or the samples."""
    rows = getattr(datamodule, "rows", {}).get("train")
    if rows is not None:
        return torch.tensor([r.lesion_type for r in rows], dtype=torch.int64)
    dataset = datamodule.retrieval_dataset("train")
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=torch.int64)


class SimCLRGeMFinetune(RetrievalModule):
    """Stage 2 of SimCLR-GeM: margin-loss fine-tuning of the stage-1 encoder (same embedding, cosine search).

    Triplets: every valid (a, p, n) of the batch among labelled rows (label >= 0; unlabelled rows are
    dropped before the forward pass), loss averaged over them. A batch without a triplet (fewer than two
    lesion types, or no type seen twice) gives a zero loss connected to every parameter, so DDP stays in
    step; a class-balanced sampler (m crops per type) keeps such batches rare.

    Input: one lightly augmented view (``views[0]``, random resized crop ``crop_scale`` + flip) of ``image``
    when ``augment`` (the paper does not say; light augmentation against over-fitting the few labelled
    crops), else ``image`` itself. Validation / test use the un-augmented ``image``.

    Args:
        stage1_checkpoint: SimCLRGeM Lightning checkpoint whose encoder weights initialise this encoder
            (strict: the architecture arguments below must match stage 1); None = random init (warned).
        backbone, pretrained, extra_channels, gem_p, learn_gem_p, small_stem: encoder, as in stage 1.
        margin: m (paper 0.8); distance: ``cosine`` (paper, d = 1 - cos) or ``euclidean``.
        optimizer, lr, momentum, weight_decay, lr_schedule: paper SGD, lr 0.01, momentum 0.9 (no weight decay
            given, constant lr).
        augment, crop_scale, flip_p: training view (see above).
    """

    search_space = "cosine"

    def __init__(self, stage1_checkpoint: Optional[str] = None, backbone: str = "resnet18",
                 pretrained: Optional[str] = None, extra_channels: Sequence[int] = (512, 512),
                 gem_p: float = 3.0, learn_gem_p: bool = True, small_stem: bool = False, margin: float = 0.8,
                 distance: str = "cosine",
                 optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 lr_schedule: str = "constant", augment: bool = True,
                 crop_scale: Tuple[float, float] = (0.8, 1.0), flip_p: float = 0.5):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer(optimizer)
        self.encoder = GeMEncoder(backbone, pretrained, extra_channels, gem_p, learn_gem_p, small_stem=small_stem)
        self.criterion = MarginTripletLoss(margin, distance)
        self._views = ContrastiveViewsd(n_views=1, crop_scale=crop_scale, flip_p=flip_p, jitter_p=0.0,
                                        grayscale_p=0.0) if augment else None
        if stage1_checkpoint is None:
            warnings.warn(f"{CHECKPOINT_KEY} is None: the encoder starts from random (or model.pretrained) "
                          f"weights, not from SimCLR pre-training (expected when reloading a stage-2 "
                          f"checkpoint)", stacklevel=2)
        else:
            self.load_stage1(stage1_checkpoint)

    def load_stage1(self, path: str) -> None:
        """Copy the encoder weights (backbone, extra convs, GeM p) of a stage-1 checkpoint."""
        state = load_encoder_state(path)
        problem = describe_mismatch(state, self.encoder.state_dict())
        if problem:
            raise ValueError(f"{CHECKPOINT_KEY}={path!r}: its encoder does not match this one ({problem}); set "
                             f"model.init_args.backbone / extra_channels as in stage 1")
        self.encoder.load_state_dict(state)

    def on_fit_start(self) -> None:
        """Refuse to train when the training split cannot hold a single labelled triplet (real DeepLesion's
        train split is unlabelled): every batch would give a zero loss and nothing would be learnt."""
        labels = training_labels(self.trainer.datamodule)
        if not has_triplet(labels):
            labelled = labels[labels >= 0]
            raise ValueError(
                f"stage 2 (margin loss) needs labelled triplets (anchor, positive of the same lesion type, negative "
                f"of another) but the training split has {len(labelled)} labelled of {len(labels)} crops "
                f"({len(torch.unique(labelled))} types). On DeepLesion only val / test carry lesion types: set "
                f"data.init_args.train_splits=[val] (a held-out part of the val patients stays for validation) "
                f"and data.init_args.include_unlabelled=false")

    def view_transform(self) -> Optional[ContrastiveViewsd]:
        return self._views

    def embed(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def margin_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Margin loss over the labelled rows; zero (with a graph) when they hold no triplet."""
        labels = labels.reshape(-1)
        labelled = labels >= 0
        if not has_triplet(labels):
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return self.criterion(self.encoder(images[labelled]), labels[labelled])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        images = batch["views"][0] if "views" in batch else batch["image"]
        loss = self.margin_loss(images, batch["label"])
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/labelled", (batch["label"] >= 0).float().mean(), batch_size=bs)
        self.log("train/has_triplet", float(has_triplet(batch["label"].reshape(-1))), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        """Margin loss on un-augmented held-out crops (retrieval metrics come from the callback)."""
        loss = self.margin_loss(batch["image"], batch["label"])
        self.log(f"{stage}/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        h = self.hparams
        return optimizer_with_schedule(self, h.optimizer, h.lr, h.momentum, h.weight_decay, h.lr_schedule)
