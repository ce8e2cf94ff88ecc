"""The whole-slide engine: plan → stream tiles → segment → keep owned cells → measure → write
per-chunk results → merge into the outputs.

The unit of work, :func:`process_tiles`, is a pure function of tiles, their pixels, a calibrated
segmenter and a :class:`TileContext` (tiles in, one cell table per tile out), so it can run in
any worker; tiles of equal size go through the model as one batch.
Finished chunks are kept in ``OUT/.slidecell/chunks``; a run started again with the same slide
and config continues after the last finished chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from . import __version__
from .config import Config, load_config
from .errors import OutputError
from .io import SlideReader, open_slide
from .io.writers import GeoJSONWriter, GeoParquetWriter, H5adWriter, atomic_path, write_geoparquet, write_text_atomic
from .measure import channel_means, ellipse_axes, label_moments, polygon_shape
from .polygons import label_polygons
from .segment import Segmenter, get_segmenter
from .table import BASE_COLUMNS, MEAN_PREFIX, empty_table, from_arrow, to_arrow
from .tiling import Tile, TilePlan, TileStream, detect_tissue, guess_modality, plan_tiles

WORK_DIR = ".slidecell"
#: tile windows start on multiples of this (the built-in network pools 4 times: 2**4)
TILE_ALIGN = 16
RUN_FILE = "run.json"
OUTPUT_FILES = {"geojson": "cells.geojson", "parquet": "cells.parquet", "h5ad": "cells.h5ad"}
_ID_NAMESPACE = uuid.UUID("8a1f3c52-6d0e-4f4e-9d1a-5c11dece11ed")


@dataclass(frozen=True)
class TileContext:
    """What the work unit needs to know about the slide and the plan."""

    slide_key: str  # fingerprint of the slide, seeds the cell ids
    scale: float  # level-0 pixels per working pixel
    mpp0: float  # level-0 µm per pixel
    width: int  # slide size at the working resolution
    height: int
    channel_names: tuple[str, ...]
    roi_wkb: bytes | None = None

    @property
    def mpp(self) -> float:
        return self.mpp0 * self.scale


def process_tiles(tiles: list[Tile], images: list[np.ndarray], segmenter: Segmenter,
                  ctx: TileContext) -> list[pd.DataFrame]:
    """The unit of work: a batch of tiles in (segmented together, so a model sees a batch), one
    cell table per tile out."""
    raws = segmenter.predict(images)
    return [finish_tile(t, im, r, segmenter, ctx) for t, im, r in zip(tiles, images, raws)]


def finish_tile(tile: Tile, image: np.ndarray, raw, segmenter: Segmenter, ctx: TileContext) -> pd.DataFrame:
    """Second half of the unit of work, for one tile: the model's output → labels → the cells
    the tile owns. Thread-safe; the engine runs it in a pool while the model runs on the next
    batch."""
    return cells_from_labels(tile, image, segmenter.finish(raw, image), ctx)


def process_tile(tile: Tile, image: np.ndarray, segmenter: Segmenter, ctx: TileContext) -> pd.DataFrame:
    """Segment one tile and return the cells it owns (centroid in its core, and in the ROI),
    measured, with polygons in level-0 pixels."""
    return process_tiles([tile], [image], segmenter, ctx)[0]


def cells_from_labels(tile: Tile, image: np.ndarray, labels: np.ndarray, ctx: TileContext) -> pd.DataFrame:
    """The cells a tile owns, from its label image: ownership, outlines and measurements."""
    ids, area, cx, cy, mu20, mu02, mu11 = label_moments(labels)
    gx, gy = cx + tile.x, cy + tile.y
    keep = tile.owns(gx, gy)
    if ctx.roi_wkb is not None and keep.any():
        roi = shapely.from_wkb(ctx.roi_wkb)
        keep &= shapely.contains_xy(roi, gx * ctx.scale, gy * ctx.scale)
    if not keep.any():
        return empty_table(ctx.channel_names)
    ids, area, cx, cy, gx, gy = ids[keep], area[keep], cx[keep], cy[keep], gx[keep], gy[keep]
    mu20, mu02, mu11 = mu20[keep], mu02[keep], mu11[keep]

    polys = label_polygons(labels, ids)
    minx, miny, maxx, maxy = shapely.bounds(polys).T
    touches = (
        ((minx <= 0) & (tile.x > 0)) | ((miny <= 0) & (tile.y > 0))
        | ((maxx >= tile.w) & (tile.x + tile.w < ctx.width))
        | ((maxy >= tile.h) & (tile.y + tile.h < ctx.height))
    )
    perim_px, solidity = polygon_shape(polys)
    major, minor, ecc = ellipse_axes(mu20, mu02, mu11)
    means = channel_means(labels, image, ids, area)
    mpp = ctx.mpp
    x0, y0 = gx * ctx.scale, gy * ctx.scale
    offset = np.array([tile.x, tile.y], dtype=np.float64)
    polys0 = shapely.transform(polys, lambda c: (c + offset) * ctx.scale)
    table = pd.DataFrame({
        "cell_id": cell_ids(ctx.slide_key, x0, y0),
        "tile": np.full(len(ids), tile.index, np.int64),
        "x": x0, "y": y0, "x_um": x0 * ctx.mpp0, "y_um": y0 * ctx.mpp0,
        "area_um2": area * mpp**2,
        "perimeter_um": perim_px * mpp,
        "eccentricity": ecc,
        "solidity": solidity,
        "major_axis_um": major * mpp,
        "minor_axis_um": minor * mpp,
        "touches_tile_edge": touches,
    })
    for c, name in enumerate(ctx.channel_names):
        table[MEAN_PREFIX + name] = means[:, c]
    table["geometry"] = polys0
    return table


def cell_ids(slide_key: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Deterministic UUIDs from the slide and the level-0 centroid: the same cell gets the same id
    in every run, whatever the tiling."""
    return [str(uuid.uuid5(_ID_NAMESPACE, f"{slide_key}:{a:.2f}:{b:.2f}")) for a, b in zip(x, y)]


def slide_fingerprint(path: Path) -> dict:
    """Identity of a slide file: size and a hash of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return {"name": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


@dataclass
class RunResult:
    out_dir: Path
    n_cells: int
    n_tiles: int
    outputs: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)
    resumed_chunks: int = 0
    info: dict = field(default_factory=dict)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    run_file = out / RUN_FILE
    if run_file.exists():
        if not overwrite:
            raise OutputError(
                f"{out}: already holds a finished run ({RUN_FILE}); pass --overwrite to replace it "
                "or choose another --out"
            )
    if overwrite:
        for name in [RUN_FILE, "config.yaml", *OUTPUT_FILES.values()]:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    (out / WORK_DIR / "chunks").mkdir(parents=True, exist_ok=True)


def calibration_windows(plan: TilePlan, tissue, roi=None, n: int = 8, size: int = 512,
                        min_fraction: float = 0.01) -> list[Tile]:
    """Windows on which the segmenter fits its slide-level values: ``n`` windows of ``size``
    working pixels spread over the tissue, on a grid that does not depend on the tile size, so a
    different tiling of the same slide is segmented identically."""
    cands = []
    for y in range(0, plan.height, size):
        for x in range(0, plan.width, size):
            w, h = min(size, plan.width - x), min(size, plan.height - y)
            x0, y0, x1, y1 = x * plan.scale, y * plan.scale, (x + w) * plan.scale, (y + h) * plan.scale
            if tissue is not None and tissue.fraction(x0, y0, x1, y1) < max(min_fraction, 0.05):
                continue
            if roi is not None and not roi.intersects(shapely.box(x0, y0, x1, y1)):
                continue
            cands.append(Tile(len(cands), 0, 0, x, y, w, h, (x, y, x + w, y + h)))
    if not cands:
        return []
    idx = np.unique(np.linspace(0, len(cands) - 1, min(n, len(cands))).round().astype(int))
    return [cands[i] for i in idx]


def run(
    slide,
    config: Config | str | Path | None = None,
    out: str | Path = "slidecell-out",
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    roi=None,
    progress: bool = True,
) -> RunResult:
    """Segment and measure every cell of ``slide`` and write the outputs to ``out``.

    ``config`` is a :class:`Config`, a YAML path or a preset name (``None``: defaults). ``mpp``
    supplies/overrides the slide's pixel size. ``roi`` (a shapely geometry in level-0 pixels)
    restricts the run; ``config.roi`` gives a box. Raises :class:`slidecell.errors.SlidecellError`
    subclasses for every problem with the inputs."""
    t_start = time.perf_counter()
    cfg = config if isinstance(config, Config) else load_config(config)
    slide = Path(slide)
    out = Path(out)
    with open_slide(slide, mpp=mpp, reader=cfg.reader.backend) as reader:  # closed on every path
        return _run(reader, slide, cfg, out, mpp, overwrite, roi, progress, t_start)


def _run(reader: SlideReader, slide: Path, cfg: Config, out: Path, mpp, overwrite, roi, progress,
         t_start) -> RunResult:
    mpp0 = reader.mpp  # raises MissingPixelSizeError with the file name
    _prepare_out(out, overwrite)
    work = out / WORK_DIR
    timings: dict[str, float] = {"read_wait": 0.0, "model": 0.0, "post": 0.0, "write_chunks": 0.0,
                                 "retry": 0.0}

    if roi is None and cfg.roi is not None:
        x, y, w, h = cfg.roi
        roi = shapely.box(x, y, x + w, y + h)

    t0 = time.perf_counter()
    tissue = None
    if cfg.tissue.enabled:
        tissue = detect_tissue(reader, cfg.tissue.thumbnail_mpp, cfg.tissue.modality,
                               cfg.tissue.min_area_um2, cfg.tissue.threshold)
        modality = tissue.modality
    elif cfg.tissue.modality == "auto":
        modality = guess_modality(reader.thumbnail(max(cfg.tissue.thumbnail_mpp, mpp0)), reader.channel_names)
    else:
        modality = cfg.tissue.modality
    plan = plan_tiles(reader, cfg.tiling.mpp, cfg.tiling.tile_size, cfg.tiling.overlap_um,
                      cfg.tiling.snap_tolerance, tissue, cfg.tissue.min_fraction, roi, align=TILE_ALIGN,
                      offset=tuple(cfg.tiling.grid_offset))
    timings["plan"] = time.perf_counter() - t0

    segmenter = get_segmenter(cfg.segmentation.backend, cfg.segmentation.params, reader.channel_names,
                              modality, plan.mpp, cfg.segmentation.nuclear_channels)
    fingerprint = slide_fingerprint(slide)
    manifest = {
        "slidecell_version": __version__,
        "slide": fingerprint,
        "config_fingerprint": cfg.fingerprint(),
        "mpp_override": mpp,
        "roi_wkt": roi.wkt if roi is not None else None,
        "plan": plan.summary(),
    }
    manifest_path = work / "manifest.json"
    resumed = 0
    with TileStream(reader, plan, cfg.reader.workers, cfg.reader.prefetch, cfg.reader.parallel) as stream:
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            same = {k: old.get(k) for k in manifest} == manifest
            if not same:
                diff = [k for k in manifest if old.get(k) != manifest[k]]
                raise OutputError(
                    f"{out}: holds an unfinished run of a different slide or config (differs in: "
                    f"{', '.join(diff)}); refusing to mix results: pass --overwrite or choose another --out"
                )
            segmenter.state = old["segmenter_state"]
        else:
            t0 = time.perf_counter()
            windows = calibration_windows(plan, tissue, roi, min_fraction=cfg.tissue.min_fraction)
            samples = [img for _, img in stream(windows)]
            segmenter.calibrate(samples)
            del samples
            timings["calibrate"] = time.perf_counter() - t0
            manifest["segmenter_state"] = segmenter.state
            manifest["modality"] = modality
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1))

        ctx = TileContext(
            slide_key=fingerprint["sha256_head_tail"][:16], scale=plan.scale, mpp0=mpp0,
            width=plan.width, height=plan.height, channel_names=tuple(reader.channel_names),
            roi_wkb=shapely.to_wkb(roi) if roi is not None else None,
        )
        chunk_size = cfg.tiling.chunk_tiles
        n_chunks = (len(plan.tiles) + chunk_size - 1) // chunk_size
        chunk_path = lambda k: work / "chunks" / f"chunk-{k:06d}.parquet"  # noqa: E731
        pending_tiles = []
        for k in range(n_chunks):
            if chunk_path(k).exists():
                resumed += 1
            else:
                pending_tiles.extend(plan.tiles[k * chunk_size : (k + 1) * chunk_size])
        pipe = _Pipeline(reader, plan, segmenter, ctx, cfg, chunk_path, timings)
        pipe.run(stream, pending_tiles, progress, resumed * chunk_size)

    info = {
        "slide": str(slide.resolve()),
        "reader": reader.describe(),
        "modality": modality,
        "plan": plan.summary(),
        "tissue_fraction": tissue.tissue_fraction if tissue is not None else None,
        "config_name": cfg.name,
        "segmentation_backend": cfg.segmentation.backend,
        "segmentation": segmenter.describe(),
        "segmenter_state": segmenter.state,
    }
    chunks = [chunk_path(k) for k in range(n_chunks)]
    outputs, n_cells, n_touch = _write_outputs(chunks, out, cfg, reader, info, timings)
    timings["total"] = time.perf_counter() - t_start
    summary = {
        "status": "complete",
        "slidecell_version": __version__,
        "n_cells": n_cells,
        "n_tiles": len(plan.tiles),
        "cells_touching_tile_edge": n_touch,
        # tiles (in this invocation) read again with more context: they own a cell larger than the overlap
        "tiles_reread_for_large_cells": pipe.retried,
        "resumed_chunks": resumed,
        "outputs": {k: str(v.name) for k, v in outputs.items()},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **info,
    }
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    write_text_atomic(out / RUN_FILE, json.dumps(summary, indent=1, default=str))  # last: marks complete
    return RunResult(out, n_cells, len(plan.tiles), outputs, timings, resumed, summary)


class _Pipeline:
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
                 chunk_path, timings: dict):
        self.reader, self.plan, self.segmenter, self.ctx = reader, plan, segmenter, ctx
        self.chunk_size = cfg.tiling.chunk_tiles
        self.max_overlap = int(math.ceil(cfg.tiling.max_overlap_um / plan.mpp))
        self.workers = cfg.engine.post_workers
        self.queue = cfg.engine.queue
        self.batch_size = segmenter.batch_size
        self.chunk_path = chunk_path
        self.timings = timings
        self.retried = 0
        self.current: dict[int, list[pd.DataFrame]] = {}
        self.remaining: dict[int, int] = {}

    def _finish(self, tile, image, raw):
        t0 = time.perf_counter()
        table = finish_tile(tile, image, raw, self.segmenter, self.ctx)
        return table, time.perf_counter() - t0

    def run(self, stream, tiles, progress, done) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        for t in tiles:
            k = t.index // self.chunk_size
            self.remaining[k] = self.remaining.get(k, 0) + 1
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="slidecell-post") if self.workers else None
        inflight: deque = deque()
        with Progress(TextColumn("[bold]segmenting"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                      TimeRemainingColumn(), disable=not progress, transient=False) as bar:
            task = bar.add_task("tiles", total=len(self.plan.tiles), completed=done)

            def collect():
                tile, fut = inflight.popleft()
                table, dt = fut.result()
                self.timings["post"] += dt
                self._take(tile, table)
                bar.advance(task)

            try:
                for batch in self._batches(stream(tiles)):
                    t0 = time.perf_counter()
                    raws = self.segmenter.predict([im for _, im in batch])
                    self.timings["model"] += time.perf_counter() - t0
                    for (tile, image), raw in zip(batch, raws):
                        if pool is not None:
                            fut = pool.submit(self._finish, tile, image, raw)
                        else:
                            fut = Future()
                            fut.set_result(self._finish(tile, image, raw))
                        inflight.append((tile, fut))
                    del batch, raws
                    while len(inflight) > self.queue:
                        collect()
                while inflight:
                    collect()
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)

    def _batches(self, items):
        """Tiles of one size (edge tiles are smaller), ``batch_size`` at a time, timing the wait
        for the readers."""
        pending: list = []
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            self.timings["read_wait"] += time.perf_counter() - t0
            if item is None:
                break
            if pending and (len(pending) == self.batch_size or item[1].shape != pending[0][1].shape):
                yield pending
                pending = []
            pending.append(item)
        if pending:
            yield pending

    def _take(self, tile: Tile, table: pd.DataFrame) -> None:
        if len(table) and table["touches_tile_edge"].any():
            table = self._more_context(tile, table)
        k = tile.index // self.chunk_size
        self.current.setdefault(k, []).append(table)
        self.remaining[k] -= 1
        if self.remaining[k] == 0:
            t0 = time.perf_counter()
            _write_chunk(self.current.pop(k), self.chunk_path(k), self.ctx.channel_names)
            self.timings["write_chunks"] += time.perf_counter() - t0

    def _more_context(self, tile: Tile, table: pd.DataFrame) -> pd.DataFrame:
        t0 = time.perf_counter()
        overlap = self.plan.overlap
        while table["touches_tile_edge"].any() and overlap < self.max_overlap:
            overlap = min(2 * overlap, self.max_overlap)
            big = self.plan.enlarge(tile, overlap)
            if (big.x, big.y, big.w, big.h) == (tile.x, tile.y, tile.w, tile.h):
                continue  # aligned or clipped to the same window: ask for more
            x0, y0 = self.plan.level0_origin(big)
            image = self.reader.read(x0, y0, big.w, big.h, self.plan.mpp)
            table = process_tiles([big], [image], self.segmenter, self.ctx)[0]
            tile = big
            self.retried += 1
        self.timings["retry"] += time.perf_counter() - t0
        return table


def _write_chunk(tables: list[pd.DataFrame], path: Path, channels) -> None:
    import pyarrow.parquet as pq

    tables = [t for t in tables if len(t)]
    table = pd.concat(tables, ignore_index=True) if tables else empty_table(channels)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(to_arrow(table), tmp)
    os.replace(tmp, path)


def _write_outputs(chunks: list[Path], out: Path, cfg: Config, reader: SlideReader, info: dict,
                   timings: dict) -> tuple[dict[str, Path], int, int]:
    """Stream the chunk files into the outputs, one chunk in memory at a time: every file is
    written under a temporary name and renamed into place only when all are complete."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    counts = [pq.ParquetFile(p).metadata.num_rows for p in chunks]
    n = int(sum(counts))
    channels = list(reader.channel_names)
    outputs: dict[str, Path] = {p: out / OUTPUT_FILES[p] for p in OUTPUT_FILES if getattr(cfg.output, p)}
    n_touch = 0
    with contextlib.ExitStack() as stack:
        gj = pw = hw = None
        if "geojson" in outputs:
            tmp = stack.enter_context(atomic_path(outputs["geojson"]))
            fh = stack.enter_context(open(tmp, "w", encoding="utf-8"))
            gj = GeoJSONWriter(fh, reader.bounds_offset, cfg.output.geojson_precision)
        if "h5ad" in outputs:
            tmp = stack.enter_context(atomic_path(outputs["h5ad"]))
            uns = {"version": __version__, "slide": info["slide"], "mpp": reader.mpp,
                   "working_mpp": info["plan"]["mpp"], "modality": info["modality"],
                   "reader": info["reader"], "config": cfg.model_dump(mode="json")}
            hw = H5adWriter(tmp, n, channels, uns)
            stack.callback(hw.f.close)
        for p, count in zip(chunks, counts):
            if not count:
                continue
            at = pq.read_table(p)
            if "parquet" in outputs and pw is None:
                tmp = stack.enter_context(atomic_path(outputs["parquet"]))
                pw = GeoParquetWriter(tmp, at.schema)
                stack.callback(pw.close)
            if pw is not None:
                pw.write(at)
            part = from_arrow(at)
            n_touch += int(part["touches_tile_edge"].sum())
            if gj is not None:
                gj.write(part)
            if hw is not None:
                hw.write(part)
        if "parquet" in outputs and pw is None:  # no cells at all
            write_geoparquet(empty_table(channels), outputs["parquet"])
        if gj is not None:
            gj.close()
        if hw is not None:
            hw.close()
    timings["write_outputs"] = time.perf_counter() - t0
    return outputs, n, n_touch


__all__ = ["run", "process_tile", "process_tiles", "cells_from_labels", "TileContext", "RunResult", "BASE_COLUMNS"]
