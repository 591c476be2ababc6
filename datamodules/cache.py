"""On-disk helpers shared by the DataModules: cache keys, ``.npz`` caches and the synthetic-phantom fallback.

* :func:`cache_key` / :func:`file_stats`: a short hash of settings and of the (path, size, mtime) of the
  source files, so a cache entry changes when a file is replaced or a setting changes.
* :func:`load_npz` / :func:`save_npz_atomic` / :func:`npz_cached`: cache files that are read tolerantly (an
  unreadable file is rebuilt, not an error) and written atomically (readers never see a partial file).
* :func:`ensure_data_root` / :func:`write_phantom_atomic`: when ``data_root`` is missing, either a clear
  error naming the phantom command, or (``synthesize_if_missing``) the synthetic phantom written atomically
  (into a temporary folder next to it, then renamed), with a warning saying what is written where.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medcbir_io import atomic_write

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # np.load of a corrupt .npz

__all__ = ["cache_key", "ensure_data_root", "file_stats", "load_npz", "npz_cached", "save_npz_atomic",
           "write_phantom_atomic"]


# -- cache keys -------------------------------------------------------------------------------------------
def file_stats(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(resolved path, size, mtime in ns) of each file: cache keys change when a file is replaced."""
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def cache_key(*parts, length: int = 16) -> str:
    """First ``length`` hex digits of the SHA-256 of ``parts`` as JSON (tuples count as lists)."""
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:length]


# -- .npz cache files -------------------------------------------------------------------------------------
def load_npz(path: Path, then: str = "rebuilding it", logger: logging.Logger = log) -> Arrays | None:
    """Arrays of a cache file, or None when it is absent or unreadable (warned on ``logger``: ``cache file ...
    unreadable (error); <then>``, and the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except _UNREADABLE as err:
        logger.warning("cache file %s unreadable (%s); %s", path, err, then)
        return None


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask (read from /proc on Linux, so the
    process umask is not touched while other threads create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a cache file so that readers never see a partial file (:func:`medcbir_io.atomic_write`: a
    temporary file in the same folder, then ``os.replace``), readable as a file ``open`` creates would be."""

    def write(f: BinaryIO) -> None:
        np.savez(f, **arrays)
        if hasattr(os, "fchmod"):  # mkstemp creates 0o600 files
            os.fchmod(f.fileno(), _new_file_mode())

    atomic_write(path, write, mode="wb")


def npz_cached(path: Path | None, compute: Callable[[], Arrays], shapes: Mapping[str, tuple[int, ...]] | None = None,
               then: str = "rebuilding it", logger: logging.Logger = log) -> Arrays:
    """``compute()``, through the cache file ``path``: its arrays when it is readable (and holds the arrays
    named in ``shapes`` with those shapes), else computed and saved atomically. ``path`` None: no cache.
    ``then``, ``logger``: see :func:`load_npz`."""
    if path is None:
        return compute()
    cached = load_npz(path, then, logger)
    if cached is not None and all(k in cached and cached[k].shape == tuple(v) for k, v in (shapes or {}).items()):
        return cached
    arrays = compute()
    save_npz_atomic(path, arrays)
    return arrays


# -- data_root or its synthetic phantom -------------------------------------------------------------------
def write_phantom_atomic(root: Path, write: Callable[[Path], object], description: str, dataset: str,
                         logger: logging.Logger = log) -> None:
    """Write a synthetic phantom at ``root`` with ``write(folder)``: into a temporary folder next to it, then
    renamed (a concurrent writer finishing first wins). Warns on ``logger`` that ``description`` (e.g. "CT
    liver phantom (16 volumes)") is written at ``root`` and that results on it are not results on ``dataset``.
    """
    logger.warning("data_root %s does not exist: writing a SYNTHETIC %s there (synthesize_if_missing=true); "
                   "results on it are not results on %s", root, description, dataset)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    write(tmp)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        if not root.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_data_root(root: Path, synthesize: bool, write_phantom: Callable[[], None], layout: str,
                     command: str) -> None:
    """Make sure ``root`` exists: call ``write_phantom()`` when it is missing and ``synthesize``, else raise
    FileNotFoundError saying to point it at ``layout`` (the dataset folder), to set synthesize_if_missing or
    to run ``command`` (the phantom writer's command line)."""
    if root.exists():
        return
    if not synthesize:
        raise FileNotFoundError(
            f"data_root={root} does not exist. Point it at {layout}, or set `synthesize_if_missing: true` to "
            f"write the synthetic phantom there, or run `{command}`")
    write_phantom()
