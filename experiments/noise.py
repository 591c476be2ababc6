"""The one place where third-party console noise is filtered (installed by ``python -m experiments`` / ``medcbir``).

Only messages that say nothing about the user's run and that the project cannot fix are hidden. Everything
the project causes is fixed at its source instead (configs' ``log_every_n_steps`` fit the phantom loaders;
``validate`` / ``test`` / ``predict`` drop the training-only ModelCheckpoint callbacks, so no "dirpath has
changed" warning; package data is declared in setup.cfg). Set ``MEDCBIR_SHOW_ALL_WARNINGS=1`` to see all.

Filtered:
- Lightning's advertisement for its cloud logger (``💡 Tip: ... litlogger``), printed on every trainer.
- ``isinstance(treespec, LeafSpec) is deprecated``: raised by torch inside Lightning's own ``_pytree``
  helper at every loop start (pytorch_lightning 2.6 with torch >= 2.10); nothing to change on our side.
"""
from __future__ import annotations

import logging
import os
import warnings

THIRD_PARTY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
THIRD_PARTY_LOG_LINES = {"pytorch_lightning.utilities.rank_zero": ("litlogger",)}


class _DropMessages(logging.Filter):
    def __init__(self, fragments):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def install() -> None:
    """Hide the third-party messages listed above (idempotent)."""
    if os.environ.get("MEDCBIR_SHOW_ALL_WARNINGS"):
        return
    for pattern in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, fragments in THIRD_PARTY_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
