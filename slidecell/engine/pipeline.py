"""The streaming pipeline of one process: tiles read ahead, batched through the model, post-processed
in a pool while the next batch runs, gathered into chunk files."""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
import pyarrow.compute as pc

from ..config import Config
from ..progress import RunProgress
from ..segment import Segmenter
from ..table import from_arrow
from ..tiling import Tile, TilePlan
from .cells import TileContext, cells_from_labels, process_tiles
from .chunks import chunk_part, write_chunk


class Pipeline:
    """Streams tiles through the model and post-processing, writing finished chunks.

    The reader pool (:class:`TileStream`) reads ahead; this thread batches tiles of one size and
    runs :meth:`Segmenter.predict` (the model); a pool of ``engine.post_workers`` threads runs
    :func:`finish_tile` (post-processing, outlines, measurements) on the previous batches
    meanwhile. At most ``engine.queue`` tiles wait for post-processing, so memory is bounded
    whatever the slide size. Results are taken in plan order; a chunk is written (atomically) as
    soon as all its tiles are done, then forgotten.

    A tile that owns a cell touching the edge of its read window (a cell larger than the overlap)
    is segmented again with twice the overlap, up to ``tiling.max_overlap_um``; every tile whose
    window the cell reaches does the same, so the cell comes out whole, once."""

    def __init__(self, reader, plan: TilePlan, segmenter: Segmenter, ctx: TileContext, cfg: Config,
                 chunk_path, timings: dict, on_chunk=None):
        self.reader, self.plan, self.segmenter, self.ctx = reader, plan, segmenter, ctx
        self.chunk_size = cfg.tiling.chunk_tiles
        self.max_overlap = int(math.ceil(cfg.tiling.max_overlap_um / plan.mpp))
        self.workers = cfg.engine.post_workers
        self.parallel = cfg.engine.post_parallel
        self.queue = cfg.engine.queue
        self.batch_size = segmenter.batch_size
        self.chunk_path = chunk_path
        self.on_chunk = on_chunk
        self.timings = timings
        self.retried = 0
        self.current: dict[int, list] = {}
        self.remaining: dict[int, int] = {}

    def _pool(self):
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        if not self.workers:
            return None
        if self.parallel == "processes":
            import multiprocessing as mp

            return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"), initializer=_init_post,
                                       initargs=(self.segmenter.finisher(), self.ctx))
        return ThreadPoolExecutor(self.workers, thread_name_prefix="slidecell-post")

    def run(self, stream, tiles, bar: RunProgress) -> None:
        from concurrent.futures import Future

        for t in tiles:
            k = t.index // self.chunk_size
            self.remaining[k] = self.remaining.get(k, 0) + 1
        pool = self._pool()
        finisher = self.segmenter.finisher()
        inflight: deque = deque()

        def collect():
            tile, fut, shm = inflight.popleft()
            try:
                part, dt = fut.result()
            finally:
                if shm is not None:
                    shm.close()
                    shm.unlink()
            self.timings["post"] += dt
            bar.advance(1, self._take(tile, part))

        try:
            for batch in self._batches(stream(tiles)):
                t0 = time.perf_counter()
                raws = self.segmenter.predict_tiles([t for t, _ in batch], [im for _, im in batch])
                self.timings["model"] += time.perf_counter() - t0
                for (tile, image), raw in zip(batch, raws):
                    shm = None
                    if pool is None:
                        fut = Future()
                        fut.set_result(_post_tile(tile, image, raw, finisher, self.ctx))
                    elif self.parallel == "processes":
                        # pixels travel through shared memory, not pickles down a pipe
                        shm, specs = _to_shared([image, raw])
                        fut = pool.submit(_post_tile_shared, tile, shm.name, specs)
                    else:
                        fut = pool.submit(_post_tile, tile, image, raw, finisher, self.ctx)
                    inflight.append((tile, fut, shm))
                del batch, raws
                while len(inflight) > self.queue:
                    collect()
            while inflight:
                collect()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            for _, _, shm in inflight:
                if shm is not None:
                    shm.close()
                    shm.unlink()

    def _batches(self, items):
        """Tiles of one size (edge tiles are smaller), ``batch_size`` at a time, timing the wait
        for the readers."""
        def timed(it):
            it = iter(it)
            while True:
                t0 = time.perf_counter()
                item = next(it, None)
                self.timings["read_wait"] += time.perf_counter() - t0
                if item is None:
                    return
                yield item

        return same_size_batches(timed(items), self.batch_size, lambda item: item[1].shape)

    def _take(self, tile: Tile, part) -> int:
        """Keep a tile's cells for its chunk (written once complete); returns their number."""
        part = self._more_context(tile, part)
        n = len(part)
        k = tile.index // self.chunk_size
        self.current.setdefault(k, []).append(part)
        self.remaining[k] -= 1
        if self.remaining[k] == 0:
            t0 = time.perf_counter()
            write_chunk(self.current.pop(k), self.chunk_path(k))
            self.timings["write_chunks"] += time.perf_counter() - t0
            if self.on_chunk is not None:
                self.on_chunk(k)
        return n

    def _more_context(self, tile: Tile, part):
        t0 = time.perf_counter()
        part, n = more_context(tile, part, self.reader, self.plan, self.segmenter, self.ctx, self.max_overlap)
        self.retried += n
        self.timings["retry"] += time.perf_counter() - t0
        return part


def same_size_batches(items, size: int, shape_of):
    """``items`` in order, in lists of at most ``size`` whose ``shape_of`` is the same (a model
    batches tiles of one size; edge tiles are smaller)."""
    pending: list = []
    for item in items:
        if pending and (len(pending) == size or shape_of(item) != shape_of(pending[0])):
            yield pending
            pending = []
        pending.append(item)
    if pending:
        yield pending


def more_context(tile: Tile, part, reader, plan: TilePlan, segmenter: Segmenter, ctx: TileContext,
                 max_overlap: int):
    """A tile part whose owned cells touch the read window's edge (cells larger than the
    overlap), segmented again with twice the overlap until none does or ``max_overlap``
    (working px) is reached; other parts as they are. Returns the part and how many times the
    tile was read again."""
    if not part.num_rows or not pc.any(part.column("touches_tile_edge")).as_py():
        return part, 0
    table = from_arrow(part)
    overlap, retried = plan.overlap, 0
    while table["touches_tile_edge"].any() and overlap < max_overlap:
        overlap = min(2 * overlap, max_overlap)
        big = plan.enlarge(tile, overlap)
        if (big.x, big.y, big.w, big.h) == (tile.x, tile.y, tile.w, tile.h):
            continue  # aligned or clipped to the same window: ask for more
        x0, y0 = plan.level0_origin(big)
        image = reader.read(x0, y0, big.w, big.h, plan.mpp)
        table = process_tiles([big], [image], segmenter, ctx)[0]
        tile = big
        retried += 1
    return chunk_part(table, ctx), retried


# -- post-processing workers (threads or processes) -----------------------------------------------
_POST: dict = {}  # in a post-processing process: the run's finisher and context, sent once


def _init_post(finisher, ctx: TileContext) -> None:
    _POST["finisher"], _POST["ctx"] = finisher, ctx


def _post_tile(tile: Tile, image: np.ndarray, raw, finisher=None, ctx: TileContext | None = None):
    """Model output of one tile → its cells as an Arrow chunk part (geometry as WKB, GeoJSON
    features ready-made); returns (part, seconds). ``finisher``/``ctx`` default to the ones
    this process was started with."""
    t0 = time.perf_counter()
    finisher = finisher or _POST["finisher"]
    ctx = ctx or _POST["ctx"]
    table = cells_from_labels(tile, image, finisher(raw, image), ctx)
    return chunk_part(table, ctx), time.perf_counter() - t0


def _to_shared(items: list):
    """Copy the arrays among ``items`` into one shared-memory block; other items (None) travel
    in the spec list as they are."""
    from multiprocessing.shared_memory import SharedMemory

    arrays = [a for a in items if isinstance(a, np.ndarray)]
    shm = SharedMemory(create=True, size=max(1, sum(a.nbytes for a in arrays)))
    specs, offset = [], 0
    for item in items:
        if isinstance(item, np.ndarray):
            np.ndarray(item.shape, item.dtype, buffer=shm.buf, offset=offset)[...] = item
            specs.append(("array", item.shape, item.dtype.str, offset))
            offset += item.nbytes
        else:
            specs.append(("object", item))
    return shm, specs


def _post_tile_shared(tile: Tile, name: str, specs: list):
    from multiprocessing.shared_memory import SharedMemory

    # (the forkserver's children share the parent's resource tracker: the parent's unlink is
    # the one that counts)
    shm = SharedMemory(name=name)
    try:
        items = [np.ndarray(s[1], np.dtype(s[2]), buffer=shm.buf, offset=s[3]) if s[0] == "array" else s[1]
                 for s in specs]
        result = _post_tile(tile, *items)
        del items
        return result
    finally:
        shm.close()
