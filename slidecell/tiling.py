"""Tile planning, tissue detection and bounded prefetching tile streams.

The ownership rule: the slide at the working resolution is cut into non-overlapping *cores*
of ``tile_size`` pixels; each tile is read with ``overlap`` pixels of context on every side
(clipped at the slide edge). A cell belongs to the one tile whose core contains its centroid, so
every cell is reported exactly once, and whole, as long as cells are smaller than the overlap.
With a region of interest the cores are cut to its bounding box (a cell counts when its centroid
lies in the region).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import shapely
from scipy import ndimage as ndi

from .io import ReaderSpec, SlideReader, open_spec

#: read windows start and end on multiples of this many working pixels, whatever the backend (a
#: backend whose network needs a coarser period declares it: ``Segmenter.align``); 16 = 2**4, the
#: built-in network's four poolings, kept for every backend so that plans do not change with it
WINDOW_ALIGN = 16

@dataclass(frozen=True)
class Tile:
    """One tile at the working resolution. All coordinates are global working-resolution pixels."""

    index: int
    row: int
    col: int
    #: read window (core + overlap, clipped to the slide)
    x: int
    y: int
    w: int
    h: int
    #: owned core [x0, x1) × [y0, y1)
    core: tuple[int, int, int, int]

    def owns(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Which of the global working-resolution points (centroids) this tile owns."""
        x0, y0, x1, y1 = self.core
        return (gx >= x0) & (gx < x1) & (gy >= y0) & (gy < y1)


@dataclass
class TilePlan:
    mpp: float  # working resolution actually used (µm/px)
    scale: float  # level-0 pixels per working pixel
    width: int  # slide size at the working resolution
    height: int
    tile_size: int
    overlap: int  # pixels at the working resolution
    level: int  # pyramid level read
    tiles: list[Tile]
    n_grid: int  # tiles in the full grid before tissue/ROI selection
    requested_mpp: float
    align: int = 1  # read windows start and end on multiples of this

    def window(self, index: int, row: int, col: int, core: tuple[int, int, int, int], overlap: int) -> Tile:
        """The tile of ``core`` read with at least ``overlap`` pixels of context on every side,
        its window aligned to ``align`` and clipped to the slide."""
        a = self.align
        x0, y0, x1, y1 = core
        rx0, ry0 = max(0, (x0 - overlap) // a * a), max(0, (y0 - overlap) // a * a)
        rx1, ry1 = min(self.width, -(-(x1 + overlap) // a) * a), min(self.height, -(-(y1 + overlap) // a) * a)
        return Tile(index, row, col, rx0, ry0, rx1 - rx0, ry1 - ry0, core)

    def enlarge(self, tile: Tile, overlap: int) -> Tile:
        """The same tile (same core and index) read with more context."""
        return self.window(tile.index, tile.row, tile.col, tile.core, overlap)

    def level0_origin(self, tile: Tile) -> tuple[int, int]:
        return int(round(tile.x * self.scale)), int(round(tile.y * self.scale))

    def summary(self) -> dict:
        return {
            "mpp": self.mpp, "requested_mpp": self.requested_mpp, "scale": self.scale,
            "width": self.width, "height": self.height, "tile_size": self.tile_size,
            "overlap_px": self.overlap, "level": self.level, "tiles": len(self.tiles),
            "grid_tiles": self.n_grid, "align": self.align,
            "window_pixels": int(sum(t.w * t.h for t in self.tiles)),
        }


def working_mpp(reader: SlideReader, mpp: float, snap_tolerance: float = 0.05) -> float:
    """The working resolution: a pyramid level's own µm/px when one is within ``snap_tolerance``
    of the request (no resampling), else the requested value."""
    best = None
    for level in range(reader.level_count):
        lm = reader.level_mpp(level)
        rel = abs(lm - mpp) / mpp
        if rel <= snap_tolerance and (best is None or rel < best[0]):
            best = (rel, lm)
    return best[1] if best else float(mpp)


def plan_tiles(
    reader: SlideReader,
    mpp: float,
    tile_size: int = 1024,
    overlap_um: float = 24.0,
    snap_tolerance: float = 0.05,
    tissue: "TissueMask | None" = None,
    min_tissue_fraction: float = 0.01,
    roi=None,
    align: int = 1,
    offset: tuple[int, int] = (0, 0),
    min_overlap: int = 0,
) -> TilePlan:
    """Cut the slide at ``mpp`` µm/px into tiles. ``tissue`` (a :class:`TissueMask`) skips
    tiles whose core holds less than ``min_tissue_fraction`` tissue; ``roi`` (a shapely geometry
    in level-0 pixels) skips tiles whose core does not touch it and cuts the others' cores to its
    bounding box.

    Core boundaries lie at ``offset + k × tile_size``. Read windows (core + at least the overlap)
    start and end on multiples of ``align`` in slide coordinates, whatever the cores: a network
    with ``log2(align)`` poolings then sees every pixel at the same phase in every tile, so its
    output in a core does not depend on the tiling. ``min_overlap``: working pixels of context
    the backend needs (:attr:`Segmenter.context`), when more than ``overlap_um``."""
    use_mpp = working_mpp(reader, mpp, snap_tolerance)
    scale = use_mpp / reader.mpp
    w0, h0 = reader.dimensions
    width, height = max(1, int(math.floor(w0 / scale + 1e-9))), max(1, int(math.floor(h0 / scale + 1e-9)))
    overlap = max(int(math.ceil(overlap_um / use_mpp)), int(min_overlap))
    xs = _grid_lines(width, tile_size, offset[0])
    ys = _grid_lines(height, tile_size, offset[1])
    # with a region, cores are cut to its bounding box: a cell whose centroid lies outside the
    # region is dropped anyway, and the model then sees the region and its context, not whole tiles
    bx0, by0, bx1, by1 = 0, 0, width, height
    if roi is not None:
        shapely.prepare(roi)
        minx, miny, maxx, maxy = roi.bounds
        bx0, by0 = max(0, int(math.floor(minx / scale))), max(0, int(math.floor(miny / scale)))
        bx1, by1 = min(width, int(math.floor(maxx / scale)) + 1), min(height, int(math.floor(maxy / scale)) + 1)
    plan = TilePlan(use_mpp, scale, width, height, tile_size, overlap, reader.best_level(use_mpp),
                    [], (len(xs) - 1) * (len(ys) - 1), float(mpp), align)
    for r in range(len(ys) - 1):
        for c in range(len(xs) - 1):
            x0, y0, x1, y1 = max(xs[c], bx0), max(ys[r], by0), min(xs[c + 1], bx1), min(ys[r + 1], by1)
            if x0 >= x1 or y0 >= y1:
                continue
            if tissue is not None and tissue.fraction(x0 * scale, y0 * scale, x1 * scale, y1 * scale) < min_tissue_fraction:
                continue
            if roi is not None and not roi.intersects(shapely.box(x0 * scale, y0 * scale, x1 * scale, y1 * scale)):
                continue
            plan.tiles.append(plan.window(len(plan.tiles), r, c, (x0, y0, x1, y1), overlap))
    return plan


def _grid_lines(size: int, step: int, offset: int) -> list[int]:
    first = offset % step
    lines = [0] + list(range(first if first else step, size, step)) + [size]
    return sorted(set(lines))


# -- tissue detection ---------------------------------------------------------------------------
@dataclass
class TissueMask:
    mask: np.ndarray  # bool (H, W) at ``mpp``
    mpp: float
    level0_mpp: float
    modality: str
    threshold: float

    def fraction(self, x0, y0, x1, y1) -> float:
        """Tissue fraction of a level-0 box."""
        f = self.level0_mpp / self.mpp
        h, w = self.mask.shape
        c0, r0 = int(math.floor(x0 * f)), int(math.floor(y0 * f))
        c1, r1 = max(c0 + 1, int(math.ceil(x1 * f))), max(r0 + 1, int(math.ceil(y1 * f)))
        sub = self.mask[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)]
        return float(sub.mean()) if sub.size else 0.0

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean())


def guess_modality(thumb, channel_names) -> str:
    """Brightfield (light background) or fluorescence (dark background), from a thumbnail (an
    array, or a function giving one: only RGB images need their pixels looked at)."""
    if tuple(channel_names) != ("Red", "Green", "Blue"):
        return "fluorescence"
    thumb = thumb() if callable(thumb) else thumb
    gray = thumb[:, :, :3].astype(np.float32).mean(axis=2)
    return "fluorescence" if np.median(gray) < 100 else "brightfield"


def slide_modality(reader, thumbnail_mpp: float = 8.0, thumb=None) -> str:
    """The one modality decision ``slidecell info``, ``slidecell run`` and the tissue detection
    share: what the file says (a reader that knows sets ``modality_known``), else
    :func:`guess_modality` on the thumbnail the tissue detection reads (``thumb`` if it has been
    read already; the reader's own default while the pixel size is unknown: ``run`` needs
    ``--mpp`` then, and ``info`` given the same agrees)."""
    if reader.modality_known or not reader.mpp_known:
        return reader.modality
    read = thumb if thumb is not None else (lambda: reader.thumbnail(max(thumbnail_mpp, reader.mpp)))
    return guess_modality(read, reader.channel_names)


def tissue_signal(thumb: np.ndarray, modality: str) -> np.ndarray:
    """A per-pixel tissue score: optical density for brightfield, normalised log intensity
    (max over channels) for fluorescence."""
    img = thumb.astype(np.float32)
    if modality == "brightfield":
        od = -np.log10(np.maximum(img[:, :, :3], 1.0) / 255.0)
        return od.mean(axis=2)
    chans = []
    for c in range(img.shape[2]):
        ch = np.log1p(np.maximum(img[:, :, c], 0))
        lo, hi = np.percentile(ch, [1, 99.5])
        chans.append(np.clip((ch - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(ch))
    return np.max(chans, axis=0)


def detect_tissue(
    reader: SlideReader,
    thumbnail_mpp: float = 8.0,
    modality: str = "auto",
    min_area_um2: float = 5000.0,
    threshold: float | None = None,
) -> TissueMask:
    """Tissue mask on a thumbnail: Otsu on the tissue score (bounded below so that an all-tissue
    image is not split in two), closing, holes filled, small pieces removed."""
    from skimage.filters import threshold_otsu

    t_mpp = max(thumbnail_mpp, reader.mpp)
    thumb = reader.thumbnail(t_mpp)
    if modality == "auto":
        modality = slide_modality(reader, thumbnail_mpp, thumb)
    score = tissue_signal(thumb, modality)
    if threshold is None:
        thr = float(threshold_otsu(score)) if np.ptp(score) > 0 else float("inf")
        # Otsu splits an all-background or all-tissue thumbnail anyway: keep it in a sane band
        lo, hi = (0.04, 0.25) if modality == "brightfield" else (0.15, 0.6)
        thr = min(max(thr, lo), hi)
    else:
        thr = float(threshold)
    mask = score > thr
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=2, border_value=0)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n:
        sizes = np.bincount(labels.ravel()) * t_mpp**2
        keep = sizes >= min_area_um2
        keep[0] = False
        mask = keep[labels]
    return TissueMask(mask, t_mpp, reader.mpp, modality, thr)


# -- streaming -----------------------------------------------------------------------------------
_WORKER_READER: SlideReader | None = None


def _init_worker(spec: ReaderSpec) -> None:
    global _WORKER_READER
    _WORKER_READER = open_spec(spec)


def _read_in_worker(x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
    assert _WORKER_READER is not None
    return _WORKER_READER.read(x, y, w, h, mpp)


class TileStream:
    """Reads tiles with a pool of ``workers`` (threads or processes) and yields
    ``(tile, array)`` in plan order, keeping at most ``prefetch`` tiles in flight so memory is
    bounded by ``prefetch × tile size`` whatever the slide size."""

    def __init__(self, reader: SlideReader, plan: TilePlan, workers: int = 2, prefetch: int = 4,
                 parallel: str = "auto"):
        self.reader = reader
        self.plan = plan
        self.workers = max(1, workers)
        self.prefetch = max(prefetch, self.workers)
        self.parallel = reader.parallel if parallel == "auto" else parallel
        self._pool: Executor | None = None

    def __enter__(self):
        if self.parallel == "processes":
            ctx = mp.get_context("forkserver")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.reader.spec(),))
        else:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="slidecell-read")
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, tile: Tile):
        x0, y0 = self.plan.level0_origin(tile)
        args = (x0, y0, tile.w, tile.h, self.plan.mpp)
        if self.parallel == "processes":
            return self._pool.submit(_read_in_worker, *args)
        return self._pool.submit(self.reader.read, *args)

    def __call__(self, tiles: Iterable[Tile]) -> Iterator[tuple[Tile, np.ndarray]]:
        if self._pool is None:
            raise RuntimeError("use TileStream as a context manager")
        pending: deque = deque()
        it = iter(tiles)
        for tile in it:
            pending.append((tile, self._submit(tile)))
            if len(pending) >= self.prefetch:
                break
        while pending:
            tile, fut = pending.popleft()
            arr = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, self._submit(nxt)))
            yield tile, arr
