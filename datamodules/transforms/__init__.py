"""MONAI dictionary transforms for medical images (written like MONAI's own ``MapTransform``s)."""
from datamodules.transforms.hounsfield import (
    LIVER_WINDOW,
    WIDE_WINDOW,
    HounsfieldWindowd,
    hounsfield_window,
)

__all__ = ["LIVER_WINDOW", "WIDE_WINDOW", "HounsfieldWindowd", "hounsfield_window"]
