"""Lazy package exports (PEP 562): names resolve to their submodule's attribute on first access."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` exporting ``{submodule: names}``: a submodule is imported
    only when one of its names is first used."""
    modules = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in modules:
            return getattr(import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(modules)
