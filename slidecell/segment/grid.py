"""A network run on blocks anchored to the slide, so that its output at a pixel does not depend on
the read window it came in.

Cellpose's networks (a style vector pooled over each 224-px block in cellpose 3, attention over
each 256-px block in Cellpose-SAM) see a pixel differently depending on which block it falls in,
and cellpose places its blocks by the size of the image it is given: two windows of one slide put
them differently, and the cells of neighbouring tiles disagree (issue 21: 40 % of cells the same
with 256- and 1024-px tiles). Here the image is resampled to the network's scale on a pixel grid
anchored to the slide's origin, the blocks sit at multiples of a fixed stride on that grid, their
outputs are blended with cellpose's taper weights, and the result is resampled back on the same
grid. A pixel whose every covering block lies inside the window (:func:`context_px` from the
window's edge) then gets exactly what it would get in any other window, the whole slide included.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def context_px(block: int, scale: float, object_px: float) -> int:
    """Working pixels of context a window needs around its core for the network's output over the
    core's objects to be the window's own: one block (in working pixels) plus an object's
    diameter twice (the pixels of a cell owned by the core reach one diameter past it, and
    cellpose's flow dynamics move pixels within their cell)."""
    return int(math.ceil(block / scale + 2 * object_px))


def _axis(origin: int, n: int, scale: float) -> tuple[int, np.ndarray]:
    """The network-scale pixels whose centres lie in working pixels ``[origin, origin + n)``:
    the first one's global index and each one's position in window pixels. Network pixel ``X``
    (global) has its centre at working coordinate ``(X + 0.5) / scale - 0.5``."""
    lo = math.ceil(origin * scale - 0.5 - 1e-9)
    hi = math.floor((origin + n) * scale - 0.5 - 1e-9)
    idx = np.arange(lo, max(hi, lo - 1) + 1, dtype=np.float64)
    return lo, (idx + 0.5) / scale - 0.5 - origin


def _resample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``img`` (H, W, C) sampled bilinearly at rows ``ys`` and columns ``xs`` (edge values beyond)."""
    from scipy.ndimage import map_coordinates

    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([map_coordinates(img[:, :, c], [gy, gx], order=1, mode="nearest")
                     for c in range(img.shape[2])], axis=-1).astype(np.float32)


def taper(block: int, sigma: float = 7.5) -> np.ndarray:
    """Cellpose's blending weight for a block (``transforms._taper_mask``: ~1 inside, falling to
    ~0.07 at the block's edge over the last 20 px)."""
    d = np.abs(np.arange(block) - (block - 1) / 2)
    w = 1 / (1 + np.exp((d - (block / 2 - 20)) / sigma))
    return (w[:, None] * w[None, :]).astype(np.float32)


def run_anchored(forward: Callable[[np.ndarray], np.ndarray], image: np.ndarray, origin: tuple[int, int],
                 scale: float, block: int, stride: int, batch_size: int = 8) -> np.ndarray:
    """The network's outputs (H, W, K) over a window ``image`` (H, W, C) whose top-left pixel is
    slide pixel ``origin`` (x, y) at the working resolution. ``forward`` maps blocks
    (N, C, block, block) to outputs (N, K, block, block); the image is resampled by ``scale``
    (network pixels per working pixel) on the slide-anchored grid, cut into blocks starting at
    multiples of ``stride`` of that grid (those that reach into the window; nothing before the
    slide's origin), padded with zeros beyond the window, and the blended outputs resampled back."""
    h, w, c = image.shape
    y0, ys = _axis(origin[1], h, scale)
    x0, xs = _axis(origin[0], w, scale)
    small = _resample(image, ys, xs) if scale != 1 else image.astype(np.float32)
    ny, nx = small.shape[:2]
    # blocks on the anchored grid that reach into [x0, x0 + nx): k * stride, k >= 0
    ky = range(max(0, -(-(y0 - block + 1) // stride)), (y0 + ny - 1) // stride + 1)
    kx = range(max(0, -(-(x0 - block + 1) // stride)), (x0 + nx - 1) // stride + 1)
    cy0, cx0 = ky.start * stride, kx.start * stride  # the canvas's global origin
    ch = (ky.stop - 1) * stride + block - cy0
    cw = (kx.stop - 1) * stride + block - cx0
    canvas = np.zeros((c, ch, cw), np.float32)
    canvas[:, y0 - cy0:y0 - cy0 + ny, x0 - cx0:x0 - cx0 + nx] = small.transpose(2, 0, 1)
    starts = [(j * stride - cy0, i * stride - cx0) for j in ky for i in kx]
    weight = taper(block)
    out = acc = None
    for b in range(0, len(starts), batch_size):
        part = starts[b:b + batch_size]
        y = np.asarray(forward(np.stack([canvas[:, sy:sy + block, sx:sx + block] for sy, sx in part])), np.float32)
        if out is None:
            out = np.zeros((y.shape[1], ch, cw), np.float32)
            acc = np.zeros((ch, cw), np.float32)
        for (sy, sx), yb in zip(part, y):
            out[:, sy:sy + block, sx:sx + block] += yb * weight
            acc[sy:sy + block, sx:sx + block] += weight
    out = (out / np.maximum(acc, 1e-12))[:, y0 - cy0:y0 - cy0 + ny, x0 - cx0:x0 - cx0 + nx].transpose(1, 2, 0)
    if scale == 1:
        return np.ascontiguousarray(out)
    # back to working pixels: window pixel i has network coordinate (origin + i + 0.5) * scale - 0.5
    back_y = (origin[1] + np.arange(h) + 0.5) * scale - 0.5 - y0
    back_x = (origin[0] + np.arange(w) + 0.5) * scale - 0.5 - x0
    return _resample(out, back_y, back_x)
