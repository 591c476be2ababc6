"""Methods for search: instantiated from the manifest, weights loaded with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from search.index import IndexMismatch, sha256_file


def load_state_dict(ckpt_path: str | Path) -> dict:
    """The ``state_dict`` of a Lightning checkpoint (or a plain state dict), read without unpickling code."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(err).__name__}: "
                         f"{str(err)[:300]}); refusing to unpickle arbitrary objects from a checkpoint") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    return state


def import_class(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"method {class_path!r} in the manifest cannot be imported ({err})") from None


def build_method(class_path: str, init_args: dict):
    """``class_path(**init_args)`` in eval mode; ``pretrained`` weights files are not read (the checkpoint's
    weights replace them)."""
    args = dict(init_args)
    if "pretrained" in args:
        args["pretrained"] = None
    return import_class(class_path)(**args).eval()


def load_method(manifest: dict, folder: str | Path, ckpt_path: str | Path | None = None):
    """The manifest's method with its checkpoint's weights; the checkpoint (``ckpt_path``, else the one
    recorded in the manifest, relative to the index ``folder`` if not absolute) must hash to the manifest's
    sha256, so a query is always embedded by the model that embedded the archive."""
    expected = manifest["checkpoint_sha256"]
    path = Path(ckpt_path or manifest["checkpoint"])
    if not path.is_absolute() and not path.is_file():
        path = Path(folder) / path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} of this index not found; pass --ckpt_path")
    digest = sha256_file(path)
    if digest != expected:
        raise IndexMismatch(f"{path}: sha256 {digest[:12]}... differs from the checkpoint this index was built "
                            f"with ({expected[:12]}...); queries would be embedded by another model")
    model = build_method(manifest["method"], manifest.get("model_init_args") or {})
    missing, _ = model.load_state_dict(load_state_dict(path), strict=False)
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} weights of {manifest['method']} "
                         f"(e.g. {missing[:3]}); is it a checkpoint of this method?")
    return model
