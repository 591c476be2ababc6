"""Augmented views of multi-sequence MRI slices: each sequence image augmented independently."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torchvision.transforms.v2 as v2
from monai.transforms import MapTransform


class SequenceViewsd(MapTransform):
    """Writes ``views`` [C, H, W]: every channel (sequence) of ``image`` gets its own random augmentation.

    Geometry: random resized crop to the input size (``crop_scale``, aspect ratio 3/4..4/3), horizontal
    flip ``flip_p``, rotation up to ``rotate_deg`` degrees. Intensity (on normalised MRI, where colour jitter
    does not apply): multiplied by 1 + U(-``intensity_scale``, +) and, inside the brain (non-zero pixels),
    shifted by U(-``intensity_shift``, +). Independent draws per sequence make the four positives of a slice
    differ in geometry too, as two SimCLR views do.
    """

    def __init__(self, crop_scale: Tuple[float, float] = (0.6, 1.0), flip_p: float = 0.5, rotate_deg: float = 10.0,
                 intensity_scale: float = 0.1, intensity_shift: float = 0.1, key: str = "image"):
        super().__init__(keys=[key])
        lo, hi = (float(c) for c in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"model.crop_scale={crop_scale}: expected 0 < low <= high <= 1")
        if not 0 <= flip_p <= 1 or rotate_deg < 0 or intensity_scale < 0 or intensity_shift < 0:
            raise ValueError("model.flip_p must be in [0, 1]; rotate_deg, intensity_scale and intensity_shift >= 0")
        self.key = key
        self.crop_scale, self.flip_p, self.rotate_deg = (lo, hi), float(flip_p), float(rotate_deg)
        self.intensity_scale, self.intensity_shift = float(intensity_scale), float(intensity_shift)
        self._geometry: Dict[Tuple[int, int], v2.Compose] = {}

    def geometry(self, size: Tuple[int, int]) -> v2.Compose:
        if size not in self._geometry:
            self._geometry[size] = v2.Compose([
                v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                v2.RandomHorizontalFlip(self.flip_p),
                v2.RandomRotation(self.rotate_deg),
            ])
        return self._geometry[size]

    def __call__(self, data: dict) -> dict:
        if self.key not in data:
            raise KeyError(f"views need the sample key {self.key!r}; the sample has {sorted(data)}")
        image = torch.as_tensor(data[self.key], dtype=torch.float32)
        geometry = self.geometry(tuple(image.shape[-2:]))
        views = []
        for channel in image:
            x = geometry(channel[None].contiguous())[0]
            scale = 1.0 + (torch.rand(()) * 2 - 1) * self.intensity_scale
            shift = (torch.rand(()) * 2 - 1) * self.intensity_shift
            views.append(x * scale + shift * (x != 0))
        out = dict(data)
        out["views"] = torch.stack(views)
        return out
