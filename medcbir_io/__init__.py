"""Small file helpers shared by data and evaluation (neither imports the other: data -> methods -> evaluation).

Everything here writes so that a crash never leaves a half-written file in place of a good one: a temporary
file in the same folder, then ``os.replace`` (atomic on POSIX and Windows for files on one file system).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "merge_metrics", "rewrite_json", "update_json"]


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w", suffix: str = "") -> None:
    """Write through ``write(file_object)`` into a temporary file next to ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rewrite_json(path: Path, change: Callable[[dict], None]) -> dict:
    """Read the JSON object at ``path`` (empty if absent), apply ``change`` in place, write it atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    change(data)
    atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=True))
    return data


def update_json(path: Path, section: str, values: dict) -> dict:
    """Set ``section`` of the JSON file at ``path`` (created if absent), atomically."""
    return rewrite_json(path, lambda data: data.__setitem__(section, values))


def merge_metrics(path: Path, stage: str, values: dict) -> dict:
    """Add ``values`` to ``[stage]["metrics"]`` of the metrics JSON at ``path`` (written by the retrieval
    callback earlier in the same epoch), atomically."""
    return rewrite_json(path, lambda data: data.setdefault(stage, {}).setdefault("metrics", {}).update(values))
