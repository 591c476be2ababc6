"""Reading checkpoints safely and saying what is wrong with a bad one.

Every checkpoint the project reads goes through :func:`read_checkpoint`: ``torch.load(weights_only=True)``
(only tensors and plain Python values are unpickled, so a file cannot run code). The project's own
checkpoints (Lightning ``.ckpt`` files of a ``RetrievalModule``) hold nothing else, so this never needs
``weights_only=False``. A file that is not a checkpoint, a truncated one, one with foreign Python objects,
one written by another method or with other hyper-parameters, and one from a newer format each give one
error naming the file and the problem (see docs/errors.md).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

#: Version of the project's checkpoint contents (``checkpoint["medcbir_format"]``, written by RetrievalModule).
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def read_checkpoint(path, key: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one clear error per kind of bad file."""
    file = Path(path)
    where = f"{key}={str(path)!r}"
    if not file.exists():
        raise FileNotFoundError(f"{where}: file not found")
    if file.is_dir():
        raise CheckpointError(f"{where}: is a folder; expected a checkpoint file (e.g. checkpoints/last.ckpt)")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{where}: the file is empty (0 bytes): the write was cut short; use an earlier "
                              f"checkpoint")
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # cheap: mapped lazily
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (e.g. {found.group(1)})" if found else ""
            raise CheckpointError(f"{where}: holds Python objects other than tensors and plain values{what}; it "
                                  f"was not written by this project's training, and loading it could run code "
                                  f"(refused: weights_only=True). If you trust it, re-save its state_dict with "
                                  f"torch.save") from None
        raise CheckpointError(f"{where}: not a PyTorch checkpoint ({_kind(file)}; cannot unpickle: "
                              f"{text.splitlines()[0][:120]})") from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a damaged file; all mean the same here
        first = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else ""
        raise CheckpointError(f"{where}: {_damage(file, size)} ({type(err).__name__}: {first})") from None


def _kind(file: Path) -> str:
    head = file.open("rb").read(8)
    if head.startswith(b"PK"):
        return "a zip archive"
    if head[:1] == b"\x80":
        return "a pickle file"
    if head[:1] in (b"{", b"["):
        return "looks like JSON text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"looks like text starting {head.decode(errors='replace')!r}"
    return f"starts with bytes {head.hex()}"


def _damage(file: Path, size: int) -> str:
    """Truncated zip (a cut-short copy or write) vs not a checkpoint at all."""
    if file.open("rb").read(2) == b"PK":
        return (f"truncated or damaged ({size} bytes; the zip archive of the checkpoint is incomplete: a copy or "
                f"a write was cut short); re-copy it or use an earlier checkpoint")
    return f"not a PyTorch checkpoint ({_kind(file)})"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:2])


def check_format(checkpoint: dict, where: str) -> None:
    """Newer project checkpoint format or newer Lightning than the installed one: refuse with the versions."""
    fmt = checkpoint.get("medcbir_format", 1)
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: written in checkpoint format {fmt} by a newer version of this project; "
                              f"this version reads format {CHECKPOINT_FORMAT} or older: update the project")
    import pytorch_lightning as pl

    written = checkpoint.get("pytorch-lightning_version")
    if written and _version(written) > _version(pl.__version__):
        raise CheckpointError(f"{where}: written by pytorch_lightning {written}, newer than the installed "
                              f"{pl.__version__}; upgrade pytorch_lightning to load it")


def describe_mismatch(saved: dict, expected: dict, limit: int = 3) -> str | None:
    """Missing / unexpected / differently shaped weights of ``saved`` vs ``expected`` (None: they match)."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [(k, tuple(saved[k].shape), tuple(expected[k].shape)) for k in expected
              if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights of this model are not in it (e.g. {missing[:limit]})")
    if unexpected:
        parts.append(f"{len(unexpected)} of its weights are not in this model (e.g. {unexpected[:limit]})")
    if shapes:
        k, a, b = shapes[0]
        parts.append(f"{len(shapes)} weights have another shape (e.g. {k}: {list(a)} in the file, {list(b)} here)")
    return "; ".join(parts) or None


def _hparam_diff(saved: dict, model) -> str:
    mine = dict(getattr(model, "hparams", {}) or {})
    diffs = [f"{k}={saved[k]!r} in the file, {mine[k]!r} here" for k in mine
             if k in saved and not k.startswith("_") and _plain(saved[k]) != _plain(mine[k])]
    return f"; hyper-parameters that differ: {', '.join(diffs[:4])}" if diffs else ""


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def check_lightning_checkpoint(path, key: str = "--ckpt_path") -> dict:
    """A readable Lightning checkpoint (``state_dict`` inside) of a format this version reads."""
    where = f"{key}={str(path)!r}"
    checkpoint = read_checkpoint(path, key)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        kind = type(checkpoint).__name__ if not isinstance(checkpoint, dict) else "a dict without 'state_dict'"
        raise CheckpointError(f"{where}: not a Lightning checkpoint (it holds {kind}); expected a .ckpt written by "
                              f"`fit` (plain backbone weights go to model.init_args.pretrained)")
    check_format(checkpoint, where)
    return checkpoint


def check_checkpoint(path, model, key: str = "--ckpt_path") -> dict:
    """A Lightning checkpoint that ``model`` can load: readable, not newer, same method, same shapes."""
    where = f"{key}={str(path)!r}"
    checkpoint = check_lightning_checkpoint(path, key)
    saved_hp = checkpoint.get("hyper_parameters") or {}
    written_by = saved_hp.get("_class_path") if isinstance(saved_hp, dict) else None
    mine = f"{type(model).__module__}.{type(model).__name__}"
    if written_by and written_by != mine:
        raise CheckpointError(f"{where}: written by {written_by}, but model.class_path is {mine}; evaluate it with "
                              f"that method's config")
    problem = describe_mismatch(checkpoint["state_dict"], model.state_dict())
    if problem:
        raise CheckpointError(f"{where}: does not fit this {type(model).__name__}: {problem}"
                              f"{_hparam_diff(saved_hp, model) if isinstance(saved_hp, dict) else ''} (written by "
                              f"another method, or with other hyper-parameters: use the config it was trained "
                              f"with)")
    return checkpoint
