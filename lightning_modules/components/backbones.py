"""timm backbones by name, with optional local pretrained weights (nothing is downloaded)."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

import timm
import torch.nn as nn

from lightning_modules.components.checkpoints import read_checkpoint


def create_backbone(name: str, pretrained: Optional[str] = None, in_chans: int = 3,
                    pooled: bool = True) -> nn.Module:
    """Create the timm model ``name`` as a feature extractor (``num_classes=0``: pooled features).

    Args:
        name: any timm model name (``timm.list_models()``), e.g. ``resnet50``.
        pretrained: path to a local weights file (``.pth``/``.safetensors``/``.bin``) loaded through
            timm's ``pretrained_cfg_overlay=dict(file=...)``; ``None`` = random initialisation. Nothing is
            ever downloaded.
        in_chans: input channels.
        pooled: True returns pooled features [B, num_features]; False (``global_pool=""``) returns the
            last feature map [B, num_features, h, w] of a CNN, for custom pooling (e.g. GeM).

    The returned module's ``num_features`` is the embedding width (2048 for ResNet-50).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"model.backbone={name!r} is not a timm model name{hint} (see timm.list_models())")
    kwargs = dict(num_classes=0, in_chans=in_chans)
    if not pooled:
        kwargs.update(global_pool="")
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained={pretrained!r}: weights file not found (expected a local .pth/.safetensors "
                f"file for {name}; downloads are not possible here)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    try:
        return timm.create_model(name, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        if not str(pretrained).endswith(".safetensors"):
            read_checkpoint(pretrained, "model.pretrained")  # a bad file: one message naming it
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"model.pretrained={pretrained!r}: cannot be loaded into the {name} backbone "
                         f"({type(err).__name__}: {reason}); expected a state_dict of timm's {name}") from err
