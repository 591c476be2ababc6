"""MONAI dictionary transforms for medical images (written like MONAI's own ``MapTransform``s)."""
from datamodules.transforms.frangi import PAPER_SIGMAS, Frangid, frangi_sigmas, frangi_vesselness
from datamodules.transforms.hounsfield import (
    LIVER_WINDOW,
    WIDE_WINDOW,
    HounsfieldWindowd,
    Window,
    check_window,
    hounsfield_window,
)
from datamodules.transforms.xray import XrayInversiond, invert_xray

__all__ = ["LIVER_WINDOW", "PAPER_SIGMAS", "WIDE_WINDOW", "Frangid", "HounsfieldWindowd", "Window", "check_window",
           "frangi_sigmas", "frangi_vesselness", "hounsfield_window",
           "invert_xray", "XrayInversiond"]
