"""The archive's preprocessing, recorded in the index manifest and applied to every query.

``hu_window`` (CT families): the slice in HU is padded to a square with air, resized to ``size`` (area
averaging when shrinking, bilinear when enlarging, as the DataModules do), clipped to the HU ``window`` and
scaled to [0, 1] (:func:`datamodules.transforms.hounsfield.hounsfield_window`), grey stacked to ``channels``.
``intensity``: grey in [0, 1] (files: their display values, min..max for raw volumes), same resize.
Pictures already in display units (8-bit PNG / JPEG, MR or X-ray DICOM) enter after the window.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.transforms.hounsfield import check_window, hounsfield_window
from search.query import QueryError, QueryImage

KINDS = ("hu_window", "intensity")
AIR_HU = -1024.0


@dataclass(frozen=True)
class Preprocessing:
    kind: str
    size: int
    channels: int = 3
    window: tuple[float, float] | None = None
    pad_value: float = AIR_HU

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"preprocessing kind {self.kind!r}: expected one of {KINDS}")
        if self.kind == "hu_window":
            object.__setattr__(self, "window", check_window(self.window, "preprocessing.window"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        if d.get("window") is not None:
            d["window"] = tuple(d["window"])
        return cls(**d)


def from_datamodule(dm) -> Preprocessing:
    """The evaluation preprocessing of a DataModule: its ``query_preprocessing()`` when it has one, else
    read from the CT families' settings (HU ``window`` and ``image_size`` / ``crop_size``)."""
    hook = getattr(dm, "query_preprocessing", None)
    if callable(hook):
        return Preprocessing.from_dict(hook())
    size = getattr(dm, "image_size", None) or getattr(dm, "crop_size", None)
    window = getattr(dm, "window", None)
    if size is None or window is None:
        raise ValueError(f"{type(dm).__name__}: cannot tell how its images are preprocessed; give it a "
                         f"query_preprocessing() method returning {{'kind': 'hu_window' | 'intensity', "
                         f"'size': ..., 'channels': ..., 'window': ...}}")
    if getattr(dm, "use_dicom_window", False) or getattr(dm, "frangi_input", False):
        raise ValueError(f"{type(dm).__name__}: per-row DICOM windows or Frangi inputs cannot be applied to a "
                         f"query file; index with the fixed HU window")
    return Preprocessing("hu_window", int(size), 3, tuple(float(v) for v in window))


def crop_fraction(pixels: np.ndarray, crop, min_side: int = 8) -> np.ndarray:
    """``pixels[y0:y1, x0:x1]`` from a box (x0, y0, x1, y1) given as fractions of the width / height."""
    if crop is None:
        return pixels
    x0, y0, x1, y1 = (float(v) for v in crop)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise QueryError(f"crop {tuple(crop)}: expected fractions 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    h, w = pixels.shape
    r0, r1 = int(round(y0 * h)), int(round(y1 * h))
    c0, c1 = int(round(x0 * w)), int(round(x1 * w))
    if min(r1 - r0, c1 - c0) < min_side:
        raise QueryError(f"crop {tuple(crop)} is {c1 - c0} x {r1 - r0} pixels; at least {min_side} x {min_side} "
                         f"needed")
    return pixels[r0:r1, c0:c1]


def square_resize(pixels: np.ndarray, size: int, pad_value: float) -> torch.Tensor:
    """Pad [H, W] to a centred square with ``pad_value``, resize to [size, size] (area / bilinear)."""
    x = torch.as_tensor(np.ascontiguousarray(pixels), dtype=torch.float32)
    h, w = x.shape
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        x = F.pad(x, (left, side - w - left, top, side - h - top), value=pad_value)
    if x.shape[0] == size:
        return x
    x = x[None, None]
    x = F.adaptive_avg_pool2d(x, size) if x.shape[-1] > size else F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0]


def display_of(query: QueryImage, prep: Preprocessing) -> np.ndarray:
    """The slice as grey [0, 1] for the page: through the archive's HU window where it is in HU."""
    p = query.pixels
    if query.unit == "display":
        return p
    if prep.kind == "hu_window":
        return hounsfield_window(torch.from_numpy(p), prep.window).numpy()
    lo, hi = float(p.min()), float(p.max())
    return (p - lo) / max(hi - lo, 1e-12)


def model_input(query: QueryImage, prep: Preprocessing, crop=None, min_side: int = 8) -> torch.Tensor:
    """The query as the model sees the archive: float32 [channels, size, size] in [0, 1]."""
    pixels = crop_fraction(query.pixels, crop, min_side)
    if prep.kind == "hu_window" and query.unit in ("hu", "raw"):
        image = hounsfield_window(square_resize(pixels, prep.size, prep.pad_value), prep.window)
    else:
        if query.unit != "display":
            lo, hi = float(pixels.min()), float(pixels.max())
            pixels = (pixels - lo) / max(hi - lo, 1e-12)
        image = square_resize(pixels, prep.size, 0.0)
    return image[None].expand(prep.channels, -1, -1).contiguous()
