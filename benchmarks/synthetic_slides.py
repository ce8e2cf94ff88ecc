"""Large test slides built from real H&E content, for the engine benchmarks.

The content is CMU-1-Small-Region (Aperio H&E, 0.499 µm/px, CC0) extended by mirroring to a
4096×4096 canvas at 0.5 µm/px, repeated periodically. :func:`write_sparse_slide` writes a 40×
(0.25 µm/px) JPEG-compressed tiled pyramidal TIFF of any size, streaming tile by tile (memory
does not grow with the slide), with that tissue in elliptical islands ("biopsy fragments") on
glass-coloured background.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
CMU1 = HERE.parent.parent / "shared" / "data" / "slides" / "cmu-1-small-region" / "CMU-1-Small-Region.svs"
CANVAS = 4096  # period of the content at 0.5 µm/px
BACKGROUND = (236, 234, 238)
#: content offset (0.5 µm/px pixels) that puts the middle of CMU-1-Small-Region at each island's
#: centre (the islands sit on multiples of the canvas period)
SHIFT = (1110, 1480)


def he_canvas() -> np.ndarray:
    """4096×4096 RGB of real H&E at 0.5 µm/px (CMU-1-Small-Region mirrored at its edges)."""
    from slidecell import open_slide

    src = CMU1 if CMU1.exists() else HERE.parent / ".cache" / "CMU-1-Small-Region.svs"
    with open_slide(src) as r:
        img = r.read(0, 0, *r.dimensions, r.mpp)
    return np.pad(img, ((0, CANVAS - img.shape[0]), (0, CANVAS - img.shape[1]), (0, 0)), mode="symmetric")


def periodic_crop(canvas: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    p = canvas.shape[0]
    return canvas[np.ix_((y + np.arange(h)) % p, (x + np.arange(w)) % p)]


class Islands:
    """Elliptical tissue islands on a square grid: one per ``pitch`` level-0 pixels, semi-axes
    ``a`` × ``b`` level-0 pixels (tissue fraction π·a·b / pitch²)."""

    def __init__(self, size0: int, pitch: int = 16384, a: int = 2400, b: int = 1500):
        self.size0, self.pitch, self.a, self.b = size0, pitch, a, b
        n = max(1, size0 // pitch)
        self.centres = [((i + 0.5) * pitch, (j + 0.5) * pitch) for j in range(n) for i in range(n)]

    def mask(self, x0: float, y0: float, w: int, h: int, down: float) -> np.ndarray:
        """Tissue mask of a window at downsample ``down`` (level-0 pixels per pixel)."""
        xs = x0 + (np.arange(w) + 0.5) * down
        ys = y0 + (np.arange(h) + 0.5) * down
        m = np.zeros((h, w), bool)
        for cx, cy in self.centres:
            if abs(cx - (x0 + w * down / 2)) > self.a + w * down or abs(cy - (y0 + h * down / 2)) > self.b + h * down:
                continue
            m |= ((xs[None, :] - cx) / self.a) ** 2 + ((ys[:, None] - cy) / self.b) ** 2 <= 1
        return m

    @property
    def fraction(self) -> float:
        return len(self.centres) * np.pi * self.a * self.b / self.size0**2


def write_sparse_slide(path: Path, size0: int, canvas: np.ndarray | None = None, quality: int = 85,
                       tile: int = 256, islands: Islands | None = None) -> Path:
    """A ``size0``×``size0`` 0.25 µm/px pyramidal JPEG TIFF (levels 2× down to < 2048 px)."""
    import tifffile

    if path.exists():
        return path
    canvas = he_canvas() if canvas is None else canvas
    islands = islands or Islands(size0)
    # content per level: level 0 is the 0.5 µm/px canvas upsampled 2×, level k≥1 is it
    # downsampled 2^(k-1)×; the period in pixels follows
    levels = []
    d = 1
    while True:
        size = size0 // d
        levels.append((d, size))
        if size < 2048:
            break
        d *= 2
    contents = {}
    for d, _ in levels:
        if d == 1:
            contents[d] = None  # upsampled per tile
        else:
            f = d // 2
            contents[d] = canvas if f == 1 else cv2.resize(canvas, (CANVAS // f, CANVAS // f), interpolation=cv2.INTER_AREA)
    blank = np.empty((tile, tile, 3), np.uint8)
    blank[:] = BACKGROUND

    def tiles(d: int, size: int):
        for ty in range(0, size, tile):
            for tx in range(0, size, tile):
                m = islands.mask(tx * d, ty * d, tile, tile, d)
                if not m.any():
                    yield blank
                    continue
                if d == 1:
                    src = periodic_crop(canvas, tx // 2 + SHIFT[0], ty // 2 + SHIFT[1], tile // 2 + 1, tile // 2 + 1)
                    src = cv2.resize(src, ((tile // 2 + 1) * 2, (tile // 2 + 1) * 2), interpolation=cv2.INTER_LINEAR)
                    px = src[:tile, :tile]
                else:
                    f = d // 2
                    px = periodic_crop(contents[d], tx + SHIFT[0] // f, ty + SHIFT[1] // f, tile, tile)
                out = blank.copy()
                out[m] = px[m]
                yield out

    tmp = path.with_name(path.name + ".part")
    res = 1e4 / 0.25  # pixels per cm at level 0
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, (d, size) in enumerate(levels):
            tif.write(tiles(d, size), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                      compression="jpeg", compressionargs={"level": quality}, photometric="rgb",
                      subfiletype=1 if i else 0, resolution=(res / d, res / d), resolutionunit="CENTIMETER",
                      maxworkers=2)
    os.replace(tmp, path)
    return path
