"""Augmented views for self-supervised methods, as a MONAI dictionary transform."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torchvision.transforms.v2 as v2
from monai.transforms import MapTransform

from datamodules.transforms.hounsfield import hounsfield_window

Window = Tuple[float, float]


class ContrastiveViewsd(MapTransform):
    """Writes ``views``: one independently augmented copy of the source image per entry of ``windows``.

    With ``windows`` the source is a slice in Hounsfield units (key ``hu``) and view i is first clipped to
    ``windows[i]`` (the CT-liver SimSiam of Wickstrøm et al. 2022: wide [-200, 300] and narrow [50, 150]
    HU windows). ``window_scaling="paper"`` maps each window to [0, 1]; ``"reference"`` maps every window
    with the first window's affine, as the authors' code does (the narrow view lands in ~[0.5, 0.7]).
    Without windows the source (key ``image``, already in [0, 1]) is used ``n_views`` times.

    Each view then gets its own augmentation (SimSiam/SimCLR recipe): random resized crop to the input
    size with ``crop_scale``, horizontal flip ``flip_p``, colour jitter ``jitter`` (brightness, contrast,
    saturation, hue) with probability ``jitter_p``, random grayscale ``grayscale_p``, and Gaussian blur with
    probability ``blur_p`` (SimCLR, Chen et al. 2020: sigma uniform in ``blur_sigma``, kernel ~10% of the
    image side, odd, >= 3; off by default); grey slices are stacked to ``channels`` channels.
    """

    def __init__(self, windows: Optional[Sequence[Window]] = None, window_scaling: str = "paper",
                 n_views: int = 2, crop_scale: Window = (0.2, 1.0), flip_p: float = 0.5,
                 jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, channels: int = 3, source_key: Optional[str] = None,
                 blur_p: float = 0.0, blur_sigma: Window = (0.1, 2.0)):
        if window_scaling not in ("paper", "reference"):
            raise ValueError(f"window_scaling={window_scaling!r}: expected 'paper' or 'reference'")
        self.windows = [tuple(map(float, w)) for w in windows] if windows else None
        for i, w in enumerate(self.windows or []):
            if len(w) != 2 or w[0] >= w[1]:
                raise ValueError(f"hu_windows[{i}]={list(w)}: expected an HU window [low, high] with low < high")
        self.source_key = source_key or ("hu" if self.windows else "image")
        super().__init__(keys=[self.source_key])
        self.window_scaling = window_scaling
        self.n_views = len(self.windows) if self.windows else n_views
        self.channels = channels
        self.augment_args = dict(crop_scale=tuple(crop_scale), flip_p=flip_p, jitter=tuple(jitter),
                                 jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p,
                                 blur_sigma=tuple(blur_sigma))
        self._augment: Dict[Tuple[int, int], v2.Compose] = {}

    def augmentation(self, size: Tuple[int, int]) -> v2.Compose:
        """The per-view random augmentation for images of spatial ``size`` (built once per size)."""
        if size not in self._augment:
            a = self.augment_args
            steps = [
                v2.RandomResizedCrop(size, scale=a["crop_scale"], antialias=True),
                v2.RandomHorizontalFlip(a["flip_p"]),
                v2.RandomApply([v2.ColorJitter(*a["jitter"])], p=a["jitter_p"]),
                v2.RandomGrayscale(a["grayscale_p"]),
            ]
            if a["blur_p"] > 0:
                kernel = max(3, int(0.1 * min(size)) // 2 * 2 + 1)
                steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=a["blur_sigma"])], p=a["blur_p"]))
            self._augment[size] = v2.Compose(steps)
        return self._augment[size]

    def __call__(self, data: dict) -> dict:
        if self.source_key not in data:
            raise KeyError(f"views need the sample key {self.source_key!r} (HU windows need a CT dataset "
                           f"providing 'hu'); the sample has {sorted(data)}")
        src = torch.as_tensor(data[self.source_key], dtype=torch.float32)
        augment = self.augmentation(tuple(src.shape[-2:]))
        views = []
        for i in range(self.n_views):
            img = src
            if self.windows:
                scale = self.windows[0] if self.window_scaling == "reference" else None
                img = hounsfield_window(src, self.windows[i], scale_window=scale)
            if img.shape[0] == 1 and self.channels == 3:
                img = img.expand(3, -1, -1)
            views.append(augment(img.contiguous()))
        out = dict(data)
        out["views"] = views
        return out
