"""Writers of tiny synthetic datasets in the real on-disk formats, for tests and demos,
and the drawing helpers they share (:mod:`datamodules.synthetic.shapes`).

Imported lazily, so ``python -m datamodules.synthetic.ct_liver_phantom`` runs without a runpy warning.
"""
from datamodules._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "chexpert": ("draw_radiograph", "sample_labels", "write_chexpert_phantom"),
    "ct_liver_phantom": ("liver_phantom", "write_liver_phantom"),
    "deeplesion": ("format_list", "write_deeplesion_phantom", "write_hu_png"),
    "shapes": ("blur", "ellipse", "smooth_field"),
})
