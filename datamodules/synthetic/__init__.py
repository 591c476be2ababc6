"""Writers of tiny synthetic datasets in the real on-disk formats (see DATASETS.md), for tests and demos.

Imported lazily, so ``python -m datamodules.synthetic.ct_liver_phantom`` runs without a runpy warning.
"""
from importlib import import_module

_WRITERS = {"liver_phantom": "ct_liver_phantom", "write_liver_phantom": "ct_liver_phantom"}
__all__ = ["liver_phantom", "write_liver_phantom"]


def __getattr__(name: str):
    if name in _WRITERS:
        return getattr(import_module(f"{__name__}.{_WRITERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
