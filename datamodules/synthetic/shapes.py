"""Drawing helpers shared by the phantom writers: ellipse levels, smooth random texture, scanner blur.

Pure numpy and deterministic (the random texture draws from the generator it is given), so the phantoms
stay byte-identical for the same seed.
"""
from __future__ import annotations

import numpy as np

__all__ = ["blur", "ellipse", "smooth_field"]


def ellipse(x, y, cx, cy, a, b):
    """Ellipse level ((x-cx)/a)^2 + ((y-cy)/b)^2 (< 1 inside); per-slice parameters broadcast over z."""
    return ((x - cx) / np.maximum(a, 1e-6)) ** 2 + ((y - cy) / np.maximum(b, 1e-6)) ** 2


def smooth_field(rng, shape, cells=(4, 6, 6)):
    """Low-frequency random texture in [-1, 1] of ``shape`` (Z, H, W): a coarse grid, linearly upsampled."""
    mats = []
    for n, c in zip(shape, cells, strict=True):  # linear interpolation matrix (n x c) per axis
        pos = np.linspace(0, c - 1, n)
        i0 = np.minimum(np.floor(pos).astype(int), c - 2)
        m = np.zeros((n, c))
        m[np.arange(n), i0], m[np.arange(n), i0 + 1] = 1 - (pos - i0), pos - i0
        mats.append(m)
    return np.einsum("zi,yj,xk,ijk->zyx", *mats, rng.uniform(-1, 1, size=cells), optimize=True)


def blur(vol):
    """Slight in-plane blur (separable [1, 2, 1] / 4 kernel), the scanner's point spread."""
    for axis in (1, 2):
        pad = np.pad(vol, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(pad, range(vol.shape[axis]), axis=axis)
        hi = np.take(pad, range(2, vol.shape[axis] + 2), axis=axis)
        vol = 0.25 * lo + 0.5 * vol + 0.25 * hi
    return vol
