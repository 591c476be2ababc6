"""Where evaluated weights came from: the checkpoint's path, SHA-256, epoch and step, for every output file.

``validate`` / ``test`` / ``predict`` record :func:`checkpoint_provenance` in ``metrics.json`` and in the
predictions files, so a number can always be traced to the exact checkpoint file (or to untrained weights).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

_HASHES: dict[tuple, dict] = {}  # (path, size, mtime) -> provenance: a file is hashed once per process


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_checkpoint(path: Any) -> dict:
    """``{"path", "sha256", "epoch", "global_step", "size_bytes", "weights_only"}`` of a checkpoint file."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        _HASHES[key] = {"path": str(path), "sha256": file_sha256(path), "epoch": ckpt.get("epoch"),
                        "global_step": ckpt.get("global_step"), "size_bytes": stat.st_size,
                        "weights_only": "optimizer_states" not in ckpt}
    return dict(_HASHES[key])


def checkpoint_provenance(trainer: pl.Trainer) -> dict:
    """The checkpoint the current ``validate`` / ``test`` / ``predict`` loaded, or an explicit untrained mark."""
    ckpt: Optional[str] = trainer.ckpt_path
    if not ckpt or not Path(ckpt).is_file():
        return {"path": None, "untrained": True,
                "note": "no checkpoint loaded: the model's initial weights (random or `pretrained`) were evaluated"}
    return describe_checkpoint(ckpt)


def evaluation_section(trainer: pl.Trainer) -> dict:
    """Extra ``metrics.json`` fields of a stage evaluated outside ``fit``: the checkpoint, and the epoch and step
    it was saved at (the trainer's own counters are 0 there). Empty during ``fit``."""
    if trainer.state.fn == "fit":
        return {}
    prov = checkpoint_provenance(trainer)
    section = {"checkpoint": prov}
    if not prov.get("untrained"):
        section.update(epoch=prov["epoch"], global_step=prov["global_step"])
    return section


def model_epoch(trainer: pl.Trainer) -> int:
    """Epoch of the weights being evaluated: the current one in ``fit``, the checkpoint's elsewhere (0 when
    untrained), so figures of ``test --ckpt_path`` are named after the epoch that produced the weights."""
    if trainer.state.fn == "fit":
        return trainer.current_epoch
    return int(evaluation_section(trainer).get("epoch") or 0)
