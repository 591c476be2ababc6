"""IG-CBIR: interpretability-guided content-based image retrieval (Silva et al. 2020), both steps in one module.

Step 1: a DenseNet-121 with one sigmoid output learns the target finding (pleural effusion vs not) with
binary cross-entropy. Step 2: the Deep Taylor saliency map of each image under the *frozen* step-1 model
(:mod:`lightning_modules.components.saliency`) is the input of a copy of the classifier, fine-tuned with the
same loss. Retrieval: image -> saliency map -> fine-tuned copy -> 1024-d pooled features, Euclidean distance.
The "CNN" baseline is the step-1 classifier's pooled features of the raw image (``embedding: cnn``).

One module with two phases (epochs ``0 .. classifier_epochs - 1`` train step 1, later epochs step 2), so that
one ``fit`` command runs the paper's two steps and one checkpoint holds both networks (the CNN baseline and
IG-CBIR are evaluated from the same file). A step-1 checkpoint from elsewhere can start step 2 directly
(``stage1_checkpoint`` with ``classifier_epochs: 0``).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.base import RetrievalModule
from lightning_modules.components.saliency import (
    OUTPUT_RELEVANCE,
    RULE_MAPS,
    DenseNetClassifier,
    normalise,
    relevance,
    saliency_image,
)

EMBEDDINGS = ("auto", "cnn", "ig_cbir")
CHECKPOINT_KEY = "model.init_args.stage1_checkpoint"


class IGCBIR(RetrievalModule):
    """IG-CBIR (Silva et al. 2020): classifier (step 1), saliency-trained copy (step 2), Euclidean retrieval.

    Inputs are images in [0, 1] (3 grey channels); the "torch" preprocessing (ImageNet mean / std) is applied
    here, to images and to saliency maps alike (the reference code scales maps to [-255, 255] and then
    preprocesses them like images).

    Args:
        architecture: ``densenet121`` (paper) or ``densenet_tiny`` (tests).
        pretrained: local torchvision densenet121 weights file (paper: ImageNet init); None = random init.
        classifier_epochs: epochs of step 1 (paper 10); later epochs of the run fine-tune the copy (step 2,
            paper: 10 more, so ``trainer.max_epochs: 20``).
        embedding: ``auto`` (IG-CBIR once step 2 has started, else the CNN), ``cnn`` or ``ig_cbir``.
        rule_map: ``reference`` (iNNvestigate deep_taylor on DenseNet) or ``deep_taylor`` (textbook), see
            :func:`lightning_modules.components.saliency.composite`.
        output_relevance: relevance of the output neuron, ``probability`` (sigmoid, reference) or ``logit``.
        lr, rho, eps: Adadelta with the Keras defaults (1.0, 0.95, 1e-7; PyTorch's are 1.0, 0.9, 1e-6).
        saliency_cache_size: saliency maps of the frozen step-1 model kept in memory (keyed by image content;
            they do not change during step 2); 0 = no cache.
        stage1_checkpoint: an IGCBIR checkpoint whose classifier initialises this one (optional).
    """

    search_space = "euclidean"

    def __init__(self, architecture: str = "densenet121", pretrained: Optional[str] = None,
                 classifier_epochs: int = 10, embedding: str = "auto", rule_map: str = "reference",
                 output_relevance: str = "probability", lr: float = 1.0, rho: float = 0.95, eps: float = 1e-7,
                 saliency_cache_size: int = 100_000, stage1_checkpoint: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters()
        for key, value, valid in (("embedding", embedding, EMBEDDINGS), ("rule_map", rule_map, RULE_MAPS),
                                  ("output_relevance", output_relevance, OUTPUT_RELEVANCE)):
            if value not in valid:
                raise ValueError(f"model.init_args.{key}={value!r}: expected one of {', '.join(valid)}")
        if classifier_epochs < 0:
            raise ValueError(f"classifier_epochs={classifier_epochs}: expected >= 0")
        self.classifier = DenseNetClassifier(architecture, 1, pretrained)
        self.finetuned = DenseNetClassifier(architecture, 1)
        self.register_buffer("step2_started", torch.zeros((), dtype=torch.long))
        self._cache: dict[bytes, Tensor] = {}
        if stage1_checkpoint is not None:
            self.load_stage1(stage1_checkpoint)

    # -- steps ----------------------------------------------------------------------------------------
    def load_stage1(self, path: str) -> None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{CHECKPOINT_KEY}={path!r}: file not found (expected an IGCBIR .ckpt)")
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        weights = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
        if not weights:
            raise ValueError(f"{CHECKPOINT_KEY}={path!r}: no 'classifier.*' weights (not an IGCBIR checkpoint?)")
        self.classifier.load_state_dict(weights)

    @property
    def in_step2(self) -> bool:
        return bool(self.step2_started)

    def start_step2(self) -> None:
        """Freeze the step-1 classifier (eval mode) and copy it into the network fine-tuned on saliency maps."""
        self.finetuned.load_state_dict(self.classifier.state_dict())
        self.step2_started.fill_(1)
        self._cache.clear()
        self.classifier.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.in_step2:
            self.classifier.eval()  # frozen: fixed BatchNorm statistics for the saliency maps
        return self

    def on_fit_start(self) -> None:
        check_epochs(self.hparams.classifier_epochs, self.trainer.max_epochs)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.hparams.classifier_epochs and not self.in_step2:
            self.start_step2()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._cache.clear()

    # -- saliency -------------------------------------------------------------------------------------
    def saliency_map(self, images: Tensor) -> Tensor:
        """Deep Taylor maps [B, 1, H, W] in [-1, 1] of the step-1 classifier (summed over channels, divided by
        max |R|); from the cache when the classifier is frozen (step 2)."""
        use_cache = self.in_step2 and self.hparams.saliency_cache_size > 0
        keys = [_image_key(x) for x in images] if use_cache else []
        missing = [i for i, k in enumerate(keys) if k not in self._cache] if use_cache else list(range(len(images)))
        out = torch.empty(images.shape[0], 1, *images.shape[2:], device=images.device)
        if missing:
            was_training = self.classifier.training
            self.classifier.eval()
            try:
                rel = relevance(self.classifier, normalise(images[missing]), self.hparams.rule_map,
                                self.hparams.output_relevance)
            finally:
                self.classifier.train(was_training)
            maps = saliency_image(rel)[:, :1]
            out[missing] = maps
            if use_cache:
                for i, m in zip(missing, maps):
                    if len(self._cache) < self.hparams.saliency_cache_size:
                        self._cache[keys[i]] = m.to(torch.float16).cpu()
        computed = set(missing)
        hits = [i for i in range(len(images)) if i not in computed]
        if hits:
            out[hits] = torch.stack([self._cache[keys[i]] for i in hits]).to(out)
        return out

    def _use_ig_cbir(self) -> bool:
        e = self.hparams.embedding
        return e == "ig_cbir" or (e == "auto" and self.in_step2)

    def embed(self, images: Tensor) -> Tensor:
        """IG-CBIR: image -> saliency map -> fine-tuned copy's pooled features [B, 1024]; CNN: the
        classifier's pooled features of the image."""
        if self._use_ig_cbir():
            return self.finetuned.features(normalise(self.saliency_map(images).expand(-1, 3, -1, -1)))
        return self.classifier.features(normalise(images))

    # -- training -------------------------------------------------------------------------------------
    def _logits(self, images: Tensor) -> tuple[Tensor, torch.nn.Module]:
        if self.in_step2:
            idle, x = self.classifier, normalise(self.saliency_map(images).expand(-1, 3, -1, -1))
            return self.finetuned(x), idle
        return self.classifier(normalise(images)), self.finetuned

    def _loss(self, batch: dict) -> Tensor:
        logits, idle = self._logits(batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), batch["label"].float())
        # The idle network gets zero gradients (no update with Adadelta), so DDP sees every parameter used.
        return loss + 0.0 * sum(p.sum() for p in idle.parameters())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/step", float(self.in_step2) + 1.0, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        with torch.no_grad():
            logits, _ = self._logits(batch["image"])
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), batch["label"].float())
            acc = ((logits.squeeze(1) > 0).long() == batch["label"]).float().mean()
        bs = batch["image"].shape[0]
        self.log(f"{stage}/loss", loss, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/accuracy", acc, batch_size=bs, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.Adadelta(self.parameters(), lr=h.lr, rho=h.rho, eps=h.eps)


def _image_key(image: Tensor) -> bytes:
    """Content key of an image: BLAKE2 of its 8-bit quantised pixels and shape."""
    q = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return hashlib.blake2b(q.tobytes() + str(q.shape).encode(), digest_size=16).digest()


def check_epochs(classifier_epochs: int, max_epochs: Optional[int]) -> None:
    """Warn when the run ends before step 2 (IG-CBIR) starts."""
    if max_epochs is not None and max_epochs <= classifier_epochs:
        warnings.warn(f"trainer.max_epochs={max_epochs} <= classifier_epochs={classifier_epochs}: only step 1 "
                      f"(the CNN baseline) runs", stacklevel=2)
