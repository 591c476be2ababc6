"""Chest X-ray preprocessing of Öztürk et al. 2021 (attention hashing, eq. 2): intensity inversion.

im_p = uint8(255 * (1 - normalize01(im))): min-max normalisation to [0, 1], inversion, 8-bit quantisation
(rounded). Bone and soft tissue become dark, the air-filled lungs bright.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import Tensor


def invert_xray(image: Tensor) -> Tensor:
    """Paper eq. 2 on one image (any shape, any numeric dtype): uint8(255 (1 - normalize01(im))) as a
    float32 tensor in [0, 1] (the uint8 value / 255). A constant image normalises to 0 (-> all ones)."""
    x = torch.as_tensor(image).float()
    lo, hi = x.min(), x.max()
    norm = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return torch.round(255.0 * (1.0 - norm)) / 255.0


class XrayInversiond(MapTransform):
    """MONAI dictionary transform: :func:`invert_xray` (paper eq. 2) on ``keys``, grey stacked to
    ``channels`` channels (3 for ImageNet-style backbones; input [1, H, W] or [H, W])."""

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if channels < 1:
            raise ValueError(f"channels={channels}: expected a positive number of output channels")
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Tensor | object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = invert_xray(d[key])
            if img.ndim == 2:
                img = img.unsqueeze(0)
            if img.shape[0] != 1:
                raise ValueError(f"XrayInversiond: key {key!r} has shape {tuple(img.shape)}; expected a grey "
                                 f"image [1, H, W] or [H, W]")
            d[key] = img.repeat(self.channels, 1, 1) if self.channels != 1 else img
        return d
