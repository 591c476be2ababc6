"""Hounsfield-unit windowing of CT images (Wickstrøm et al. 2022, "A clinically motivated self-supervised
approach for content-based image retrieval of CT liver images", Sec. on HU windows).

Radiologists read abdominal CT through intensity windows: the wide window [-200, 300] HU shows all soft
tissue, the narrow liver window [50, 150] HU stretches the contrast of the contrast-enhanced liver
parenchyma and its lesions. SimSiam-HU feeds one view from each window.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import Tensor

Window = tuple[float, float]
WIDE_WINDOW: Window = (-200.0, 300.0)
LIVER_WINDOW: Window = (50.0, 150.0)


def check_window(window: Sequence[float], name: str) -> Window:
    """``window`` as a float (low, high) HU pair; ValueError naming ``name`` unless low < high."""
    lo, hi = (float(v) for v in window)
    if not lo < hi:
        raise ValueError(f"{name}={tuple(window)}: expected (low, high) in HU with low < high")
    return lo, hi


def hounsfield_window(hu: Tensor, window: Window = WIDE_WINDOW,
                      scale_window: Window | None = None) -> Tensor:
    """Clip ``hu`` (Hounsfield units) to ``window`` and map it linearly to intensities.

    The affine sends ``scale_window`` (default: ``window`` itself) to [0, 1], so by default the window
    fills [0, 1] (the paper). The authors' reference code scales the narrow window [50, 150] with the wide
    window's affine (``scale_window=(-200, 300)``), so the narrow view lands in [0.5, 0.7]
    (Wickstrøm et al. 2022, HU windows). Integer input is converted to float32.
    """
    lo, hi = check_window(window, "window")
    slo, shi = check_window(scale_window, "scale_window") if scale_window is not None else (lo, hi)
    hu = torch.as_tensor(hu)
    if not hu.is_floating_point():
        hu = hu.float()
    return (hu.clamp(lo, hi) - slo) / (shi - slo)


class HounsfieldWindowd(MapTransform):
    """MONAI dictionary transform: :func:`hounsfield_window` on ``keys`` (channel-first images in HU).

    Args:
        keys: keys of the HU images to window.
        window: (low, high) HU window (Wickstrøm et al. 2022: wide (-200, 300), narrow (50, 150)).
        scale_window: window whose affine maps intensities to [0, 1]; None = ``window`` itself.
        output_key: write the windowed image under this key instead of overwriting (single key only),
            e.g. ``HounsfieldWindowd("hu", output_key="image")`` keeps the HU slice next to the image.
        channels: 1 keeps the grey channel; 3 stacks a single-channel image to 3 channels (ImageNet-style
            backbones).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, window: Window = WIDE_WINDOW,
                 scale_window: Window | None = None, output_key: Hashable | None = None,
                 channels: int = 1, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError(f"output_key={output_key!r} needs exactly one input key, got {self.keys}")
        if channels < 1:
            raise ValueError(f"channels={channels}: expected a positive number of output channels")
        self.window = check_window(window, "window")
        self.scale_window = check_window(scale_window, "scale_window") if scale_window is not None else None
        self.output_key = output_key
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Tensor | object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = hounsfield_window(d[key], self.window, self.scale_window)
            if self.channels != 1:
                if img.ndim < 2 or img.shape[0] != 1:
                    raise ValueError(f"HounsfieldWindowd: key {key!r} has shape {tuple(img.shape)}; stacking "
                                     f"to {self.channels} channels expects a single-channel image [1, H, W]")
                img = img.repeat(self.channels, *([1] * (img.ndim - 1)))
            d[self.output_key if self.output_key is not None else key] = img
        return d
