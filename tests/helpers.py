"""Test-only callbacks used by subprocess tests (importable as ``tests.helpers`` with the repo on PYTHONPATH)."""
import hashlib
import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAtStep(pl.Callback):
    """At global step ``step`` write ``marker`` and wait to be killed (the test sends SIGKILL)."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).write_text(f"{trainer.current_epoch} {batch_idx}")
            time.sleep(600)


class WeightsDigest(pl.Callback):
    """Writes a digest of the model's parameters per rank at the end of fit (DDP synchronisation check)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        Path(self.folder, f"rank{trainer.global_rank}.sha256").write_text(digest.hexdigest())


class NaNEmbeddingsFrom(pl.Callback):
    """From epoch ``epoch`` on, every second embedding is NaN (a model that diverged mid-fit)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch and not getattr(pl_module, "_nan_patched", False):
            embed = pl_module.embed

            def nan_embed(images):
                out = embed(images).clone()
                out[1::2] = float("nan")
                return out

            pl_module.embed, pl_module._nan_patched = nan_embed, True
