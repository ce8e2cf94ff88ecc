"""The whole-slide engine: plan → stream tiles → segment → keep owned cells → measure → write
per-chunk results → merge into the outputs.

The unit of work, :func:`process_tiles`, is a pure function of tiles, their pixels, a calibrated
segmenter and a :class:`TileContext` (tiles in, one cell table per tile out), so it can run in
any worker; tiles of equal size go through the model as one batch.
Finished chunks are kept in ``OUT/.slidecell/chunks``; a run started again with the same slide
and config continues after the last finished chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import shapely
from scipy import ndimage as ndi

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, OutputError, StorageError, storage_problem
from .io import SlideReader, open_slide
from .io.label_image import LABELS_NAME
from .io.writers import (OUTPUT_NAMES, CellFiles, geojson_features, run_uns, slide_id, write_text_atomic,
                         write_zarr_from_h5ad)
from .measure import (MeasureSpec, calipers, circularity, ellipse_axes, estimate_stains, expand_nuclei,
                      label_moments)
from .polygons import outline_labels
from .progress import RunProgress
from .runfolder import RUN_FILE, WORK_DIR, RunFolder, file_digests, provenance
from .segment import Scored, Segmenter, get_segmenter
from .table import BASE_COLUMNS, empty_table, from_arrow, to_arrow
from .tiling import Tile, TilePlan, TileStream, detect_tissue, plan_tiles, slide_modality

#: tile windows start on multiples of this (the built-in network pools 4 times: 2**4)
TILE_ALIGN = 16


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
    #: (x offset, y offset, decimals) of the GeoJSON output: each chunk carries the cells'
    #: QuPath features ready-made, so the final file is a concatenation; None: no GeoJSON
    geojson: tuple[float, float, int] | None = None
    #: what is measured (whole cells, compartments, statistics); None: every channel's mean
    #: over each object
    measure: MeasureSpec | None = None

    @property
    def mpp(self) -> float:
        return self.mpp0 * self.scale

    @property
    def spec(self) -> MeasureSpec:
        return self.measure if self.measure is not None else MeasureSpec.means(self.channel_names)


def process_tiles(tiles: list[Tile], images: list[np.ndarray], segmenter: Segmenter,
                  ctx: TileContext) -> list[pd.DataFrame]:
    """The unit of work: a batch of tiles in (segmented together, so a model sees a batch), one
    cell table per tile out."""
    raws = segmenter.predict_tiles(tiles, images)
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
    """The cells a tile owns, from its label image of nuclei (grown into whole cells when the
    measure spec says so): ownership, outlines and measurements."""
    spec = ctx.spec
    scores = None
    if isinstance(labels, Scored):
        labels, scores = labels.labels, labels.scores
    if isinstance(labels, tuple):  # (nuclei, cells): a cell's nucleus = the nuclear pixels inside it
        nuclear, cells = labels
        nuclei = np.where(nuclear > 0, cells, 0).astype(cells.dtype)
    else:
        nuclei = labels
        cells = expand_nuclei(nuclei, spec.expand_px) if spec.expand_px > 0 else nuclei
    ids, area, cx, cy, mu20, mu02, mu11 = label_moments(cells)
    gx, gy = cx + tile.x, cy + tile.y
    keep = tile.owns(gx, gy)
    if ctx.roi_wkb is not None and keep.any():
        roi = shapely.from_wkb(ctx.roi_wkb)
        keep &= shapely.contains_xy(roi, gx * ctx.scale, gy * ctx.scale)
    if not keep.any():
        return empty_table(spec.schema())
    ids, area, cx, cy, gx, gy = ids[keep], area[keep], cx[keep], cy[keep], gx[keep], gy[keep]
    mu20, mu02, mu11 = mu20[keep], mu02[keep], mu11[keep]

    # outlines straight in level-0 pixels, with their bounds in the window: which cells reach
    # the window's edge (inside the slide)
    polys0, perim_px, hull, (minx, miny, maxx, maxy) = _outline(cells, ids, tile, ctx)
    touches = (
        ((minx <= 0) & (tile.x > 0)) | ((miny <= 0) & (tile.y > 0))
        | ((maxx >= tile.w) & (tile.x + tile.w < ctx.width))
        | ((maxy >= tile.h) & (tile.y + tile.h < ctx.height))
    )
    solidity = np.clip(area / np.maximum(hull, 1e-12), 0, 1)
    major, minor, ecc = ellipse_axes(mu20, mu02, mu11)
    mpp = ctx.mpp
    max_cal, min_cal = calipers(polys0)  # level-0 pixels
    x0, y0 = gx * ctx.scale, gy * ctx.scale
    columns = {
        "cell_id": cell_ids(ctx.slide_key, x0, y0),
        "tile": np.full(len(ids), tile.index, np.int64),
        "x": x0, "y": y0, "x_um": x0 * ctx.mpp0, "y_um": y0 * ctx.mpp0,
        "area_um2": area * mpp**2,
        "perimeter_um": perim_px * mpp,
        "eccentricity": ecc,
        "solidity": solidity,
        "major_axis_um": major * mpp,
        "minor_axis_um": minor * mpp,
        "circularity": circularity(area * mpp**2, perim_px * mpp),
        "max_caliper_um": max_cal * ctx.mpp0,
        "min_caliper_um": min_cal * ctx.mpp0,
        "touches_tile_edge": touches,
    }
    if spec.source_labels:
        columns["mask_label"] = ids.astype(np.int64)
    if spec.confidence:
        columns["confidence"] = (scores[ids] if scores is not None else np.full(len(ids), np.nan)).astype(np.float32)
    nuc = None
    if spec.with_nuclei:  # the nucleus' own shape (a segmented cell may hold no nucleus: an empty outline)
        n_area = np.bincount(nuclei.ravel(), minlength=int(ids.max()) + 1)[ids] * mpp**2
        has = n_area > 0
        nuc = np.array([shapely.Polygon()] * len(ids), dtype=object)
        n_perim = np.zeros(len(ids))
        if has.any():
            nuc[has], n_perim[has] = _outline(nuclei, ids[has], tile, ctx)[:2]
        n_perim = n_perim * mpp
        n_max, n_min = calipers(nuc)
        columns.update({"nucleus_area_um2": n_area, "nucleus_perimeter_um": n_perim,
                        "nucleus_circularity": circularity(n_area, n_perim),
                        "nucleus_max_caliper_um": n_max * ctx.mpp0, "nucleus_min_caliper_um": n_min * ctx.mpp0,
                        "nucleus_cell_area_ratio": n_area / np.maximum(area * mpp**2, 1e-12)})
    columns.update(spec.measure(nuclei, cells, image, ids))
    columns["geometry"] = polys0
    if nuc is not None:
        columns["nucleus_geometry"] = nuc
    return pd.DataFrame(columns)


def _outline(labels, ids, tile: Tile, ctx: TileContext):
    """Outlines of the owned cells over the part of the window they cover; bounds in the window."""
    boxes = ndi.find_objects(labels, max_label=int(ids.max()))
    r0 = min(boxes[i - 1][0].start for i in ids)
    r1 = max(boxes[i - 1][0].stop for i in ids)
    c0 = min(boxes[i - 1][1].start for i in ids)
    c1 = max(boxes[i - 1][1].stop for i in ids)
    polys, perim, hull, bounds = outline_labels(labels[r0:r1, c0:c1], ids, (tile.x + c0, tile.y + r0), ctx.scale)
    return polys, perim, hull, (bounds + (c0, r0, c0, r0)).T


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit mix."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def cell_ids(slide_key: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Deterministic UUIDs (RFC 9562 version 8) hashed from the slide and the level-0 centroid
    (to 0.01 px): the same cell gets the same id in every run, whatever the tiling. Vectorized."""
    n = len(x)
    if n == 0:
        return []
    key = np.uint64(int(hashlib.sha256(slide_key.encode()).hexdigest()[:16], 16))
    qx = np.round(np.asarray(x, np.float64) * 100).astype(np.int64).view(np.uint64)
    qy = np.round(np.asarray(y, np.float64) * 100).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        hi = _mix64(key ^ _mix64(qx ^ _mix64(qy)))
        lo = _mix64(hi ^ _mix64(qy + np.uint64(0x9E3779B97F4A7C15)) ^ key)
    hi = (hi & ~np.uint64(0xF000)) | np.uint64(0x8000)  # version 8
    lo = (lo & ~(np.uint64(3) << np.uint64(62))) | (np.uint64(2) << np.uint64(62))  # RFC variant
    b = np.stack([hi, lo], axis=1).astype(">u8").view(np.uint8).reshape(n, 16)
    hexed = np.empty((n, 32), np.uint8)
    hexed[:, 0::2] = _HEX[b >> 4]
    hexed[:, 1::2] = _HEX[b & 15]
    out = np.full((n, 36), ord("-"), np.uint8)
    for src, dst in ((slice(0, 8), slice(0, 8)), (slice(8, 12), slice(9, 13)), (slice(12, 16), slice(14, 18)),
                     (slice(16, 20), slice(19, 23)), (slice(20, 32), slice(24, 36))):
        out[:, dst] = hexed[:, src]
    return out.view("S36").ravel().astype("U36").tolist()


def slide_fingerprint(path: Path) -> dict:
    """Identity of a slide: size and a hash of the first and last MiB of its file, or of every
    image file of a channel folder (names, sizes, heads and tails, in name order)."""
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        size = 0
        for f in files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            size += _hash_head_tail(f, h)
    else:
        size = _hash_head_tail(path, h)
    return {"name": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


def memory_estimate(plan: TilePlan, reader: SlideReader, segmenter: Segmenter, cfg: Config) -> int:
    """Bytes the run will hold at its peak, from the plan before any tile is read: the largest
    read window × channels × bytes per sample, for every tile in flight (read ahead, in the
    model's batch, in post-processing, being written), plus the model's input and activations for
    a batch. An estimate, meant to refuse what cannot fit (``--mpp`` far too fine, a huge
    ``tiling.tile_size`` or ``reader.prefetch`` on many channels), not to predict RSS."""
    window = max((t.w * t.h for t in plan.tiles), default=0)
    held = cfg.reader.prefetch + segmenter.batch_size + max(cfg.engine.post_workers, 1) + 1
    per_tile = window * len(reader.channel_names) * np.dtype(reader.dtype).itemsize
    model = window * segmenter.batch_size * (12 + segmenter.model_bytes_per_pixel)
    return int(per_tile * held + model)


def check_memory(plan: TilePlan, reader: SlideReader, segmenter: Segmenter, cfg: Config) -> int:
    """:func:`memory_estimate`, refused with one line when it exceeds the memory available now."""
    need = memory_estimate(plan, reader, segmenter, cfg)
    free = available_memory()
    if need > free:
        gib = 2**30
        raise ConfigError(
            f"the plan needs about {need / gib:.1f} GiB of memory ({len(plan.tiles)} tiles; read windows up to "
            f"{max(t.w for t in plan.tiles)}×{max(t.h for t in plan.tiles)} px × {len(reader.channel_names)} "
            f"channels, reader.prefetch {cfg.reader.prefetch}, batch {segmenter.batch_size}) but "
            f"{free / gib:.1f} GiB are available: lower tiling.tile_size or reader.prefetch (or check --mpp)")
    return need


def available_memory() -> int:
    """Bytes of memory available to this run now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def input_digests(segmenter: Segmenter, reader: SlideReader, annotations=None) -> dict[str, str]:
    """Content hashes of the files besides the slide that decide the cells: the segmentation's
    weights or label image, the markers file naming the channels, the annotations choosing the
    region."""
    files = {f"segmentation:{p}": p for p in map(Path, segmenter.input_files())}
    if reader.markers_file:
        files[f"markers:{reader.markers_file}"] = Path(reader.markers_file)
    if annotations is not None:
        files[f"annotations:{annotations}"] = Path(annotations)
    return file_digests(files)


def _hash_head_tail(path: Path, h) -> int:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return size


@dataclass
class RunResult:
    out_dir: Path
    n_cells: int
    n_tiles: int
    outputs: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)
    resumed_chunks: int = 0
    info: dict = field(default_factory=dict)


def output_paths(cfg: Config, out: Path) -> dict[str, Path]:
    """The files a run writes, by format, as the config's ``output`` section asks."""
    o = cfg.output
    fmts = [f for f, on in (("geojson.gz" if o.geojson_gzip else "geojson", o.geojson), ("parquet", o.parquet),
                            ("h5ad", o.h5ad), ("csv", o.csv)) if on]
    paths = {f: out / OUTPUT_NAMES[f] for f in fmts}
    if o.zarr and not o.h5ad:  # the zarr store is converted from an h5ad kept in the work folder
        paths["h5ad"] = out / WORK_DIR / OUTPUT_NAMES["h5ad"]
    return paths


def calibration_windows(plan: TilePlan, tissue, roi=None, n: int = 8, size: int = 512,
                        min_fraction: float = 0.01) -> list[Tile]:
    """Windows on which the segmenter fits its slide-level values: ``n`` windows of ``size``
    working pixels spread over the tissue, on a grid that does not depend on the tile size, so a
    different tiling of the same slide is segmented identically."""
    cands, sparse = [], []  # windows with >= 5 % tissue; those with less (fallback)
    for y in range(0, plan.height, size):
        for x in range(0, plan.width, size):
            w, h = min(size, plan.width - x), min(size, plan.height - y)
            x0, y0, x1, y1 = x * plan.scale, y * plan.scale, (x + w) * plan.scale, (y + h) * plan.scale
            if roi is not None and not roi.intersects(shapely.box(x0, y0, x1, y1)):
                continue
            frac = tissue.fraction(x0, y0, x1, y1) if tissue is not None else 1.0
            if frac >= max(min_fraction, 0.05):
                cands.append((x, y, w, h))
            elif frac >= min_fraction:
                sparse.append((x, y, w, h))
    # a slide whose tissue is sparse everywhere is still calibrated on the windows it segments
    cands = [Tile(i, 0, 0, x, y, w, h, (x, y, x + w, y + h)) for i, (x, y, w, h) in enumerate(cands or sparse)]
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
    annotations: str | Path | None = None,
    annotation_classes=None,
    progress: bool = True,
) -> RunResult:
    """Segment and measure every cell of ``slide`` and write the outputs to ``out``.

    ``config`` is a :class:`Config`, a YAML path or a preset name (``None``: defaults). ``mpp``
    supplies/overrides the slide's pixel size. ``roi`` (a shapely geometry in level-0 pixels)
    restricts the run; ``config.roi`` gives a box; ``annotations`` (a QuPath GeoJSON file, in
    QuPath's coordinates) restricts it to the union of its annotations, or of those of
    ``annotation_classes``. Raises :class:`slidecell.errors.SlidecellError` subclasses for every
    problem with the inputs."""
    t_start = time.perf_counter()
    cfg = config if isinstance(config, Config) else load_config(config)
    slide = Path(slide)
    out = Path(out)
    with open_slide(slide, mpp=mpp, reader=cfg.reader.backend, markers=cfg.reader.markers) as reader:
        if annotations is not None:
            from .io.qupath import annotation_region

            region = annotation_region(annotations, reader.bounds_offset, annotation_classes)
            roi = region if roi is None else roi.intersection(region)
        _ = reader.mpp  # a missing pixel size is reported before the output folder is touched
        if roi is None and cfg.roi is not None:
            x, y, w, h = cfg.roi
            roi = shapely.box(x, y, x + w, y + h)
        check_region(roi, reader, slide)
        if not overwrite and analysis_pending(out, cfg):
            # a finished run whose analysis stage is not complete: only that stage runs (again)
            with RunFolder(out, finished_ok=True):
                summary = json.loads((out / RUN_FILE).read_text())
                outputs = {k: out / v for k, v in summary["outputs"].items()}
                result = RunResult(out, summary["n_cells"], summary["n_tiles"], outputs,
                                   summary.get("timings_s", {}), 0, summary)
                result.outputs.update(_analysis_stage(out, cfg, outputs))
                drop_chunks(out, cfg)
            return result
        try:
            with RunFolder(out, overwrite) as folder:
                result = _run(reader, slide, cfg, out, mpp, roi, progress, t_start, annotations)
                folder.commit()
                if cfg.analysis is not None:
                    result.outputs.update(_analysis_stage(out, cfg, result.outputs))
                drop_chunks(out, cfg)
        except OSError as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            raise StorageError(f"{out}: {problem} while writing the run; the finished chunks are kept: make room "
                               "and run the same command again to resume") from exc
        return result


def drop_chunks(out: Path, cfg: Config) -> None:
    """A finished run's chunk cache goes (unless ``output.keep_chunks``) once ``cells.parquet``
    holds every cell: nothing reads it any more (``export`` reads the parquet)."""
    import shutil

    if not cfg.output.keep_chunks and (out / OUTPUT_NAMES["parquet"]).is_file() and (out / RUN_FILE).is_file():
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def analysis_pending(out: Path, cfg: Config) -> bool:
    """``out`` holds a finished run of this config (the same cells) whose analysis stage is not
    complete: it failed, was killed while running, or was never run."""
    if cfg.analysis is None:
        return False
    try:
        summary = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (summary.get("status") == "complete" and summary.get("config_fingerprint") == cfg.fingerprint()
            and (summary.get("analysis_stage") or {}).get("status") != "complete")


def check_region(roi, reader: SlideReader, slide: Path) -> None:
    """A region (ROI box or annotations, level-0 pixels) must overlap the slide."""
    if roi is None:
        return
    W, H = reader.dimensions
    if roi.is_empty:
        raise ConfigError(f"{slide}: the region (ROI or annotations) is empty")
    if not roi.intersects(shapely.box(0, 0, W, H)):
        raise ConfigError(f"{slide}: the region (ROI or annotations, bounds {tuple(round(v) for v in roi.bounds)} "
                          f"in level-0 pixels) lies outside the slide ({W} x {H} pixels)")


def _run(reader: SlideReader, slide: Path, cfg: Config, out: Path, mpp, roi, progress, t_start,
         annotations=None) -> RunResult:
    mpp0 = reader.mpp
    work = out / WORK_DIR
    timings: dict[str, float] = {"read_wait": 0.0, "model": 0.0, "post": 0.0, "write_chunks": 0.0,
                                 "retry": 0.0}

    warnings: list[str] = []

    t0 = time.perf_counter()
    tissue = None
    if cfg.tissue.enabled:
        tissue = detect_tissue(reader, cfg.tissue.thumbnail_mpp, cfg.tissue.modality,
                               cfg.tissue.min_area_um2, cfg.tissue.threshold)
        modality = tissue.modality
    elif cfg.tissue.modality == "auto":
        modality = slide_modality(reader, cfg.tissue.thumbnail_mpp)
    else:
        modality = cfg.tissue.modality
    plan = plan_tiles(reader, cfg.tiling.mpp, cfg.tiling.tile_size, cfg.tiling.overlap_um,
                      cfg.tiling.snap_tolerance, tissue, cfg.tissue.min_fraction, roi, align=TILE_ALIGN,
                      offset=tuple(cfg.tiling.grid_offset))
    timings["plan"] = time.perf_counter() - t0

    segmenter = get_segmenter(cfg.segmentation.backend, cfg.segmentation.params, reader.channel_names,
                              modality, plan.mpp, cfg.segmentation.nuclear_channels)
    align = math.lcm(TILE_ALIGN, segmenter.align)
    if align != plan.align:  # the backend's network needs coarser window alignment
        plan = plan_tiles(reader, cfg.tiling.mpp, cfg.tiling.tile_size, cfg.tiling.overlap_um,
                          cfg.tiling.snap_tolerance, tissue, cfg.tissue.min_fraction, roi, align=align,
                          offset=tuple(cfg.tiling.grid_offset))
    objects = segmenter.objects
    if cfg.segmentation.objects != "auto":
        if objects == "cells+nuclei":
            raise ConfigError(f"segmentation.objects: {cfg.segmentation.backend} returns cells and nuclei; "
                              "leave it at auto")
        objects = cfg.segmentation.objects
    measure = MeasureSpec.from_config(cfg.measure, reader.channel_names, cfg.segmentation.cell_expansion_um, plan.mpp,
                                      source_labels=segmenter.labels_are_ids, objects=objects,
                                      confidence=segmenter.confidence, modality=modality)
    segmenter.locate(plan, reader.dimensions)
    need_bytes = check_memory(plan, reader, segmenter, cfg)
    fingerprint = slide_fingerprint(slide)
    manifest = {
        "slidecell_version": __version__,
        "slide": fingerprint,
        "config_fingerprint": cfg.fingerprint(),
        "mpp_override": mpp,
        "roi_wkt": roi.wkt if roi is not None else None,
        "plan": plan.summary(),
        # chunks hold GeoJSON features made with these settings
        "geojson": [cfg.output.geojson, cfg.output.geojson_precision],
        # what the files the run reads hold (weights, masks, markers), not just where they are
        "channels": list(reader.channel_names),
        "input_files": input_digests(segmenter, reader, annotations),
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
            stains = old.get("stain_vectors")
        else:
            t0 = time.perf_counter()
            windows = calibration_windows(plan, tissue, roi, min_fraction=cfg.tissue.min_fraction)
            samples = [img for _, img in stream(windows)]
            segmenter.calibrate(samples)
            stains = None
            if cfg.measure.stains == "estimate" and measure.stains:  # the slide's own stain vectors
                stains = estimate_stains(samples, background=measure.stain_background)
                if stains is None:
                    warnings.append("measure.stains: too few stained pixels to estimate the stain vectors; "
                                    "QuPath's default H&E vectors used")
            del samples
            timings["calibrate"] = time.perf_counter() - t0
            manifest["segmenter_state"] = segmenter.state
            manifest["stain_vectors"] = stains
            manifest["modality"] = modality
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
        if stains:
            measure = measure.with_stains(stains)

        ctx = TileContext(
            slide_key=fingerprint["sha256_head_tail"][:16], scale=plan.scale, mpp0=mpp0,
            width=plan.width, height=plan.height, channel_names=tuple(reader.channel_names),
            measure=measure,
            roi_wkb=shapely.to_wkb(roi) if roi is not None else None,
            geojson=(*reader.bounds_offset, cfg.output.geojson_precision) if cfg.output.geojson else None,
        )
        chunk_size = cfg.tiling.chunk_tiles
        n_chunks = (len(plan.tiles) + chunk_size - 1) // chunk_size
        chunk_path = lambda k: work / "chunks" / f"chunk-{k:06d}.parquet"  # noqa: E731
        pending_tiles, done = [], []
        for k in range(n_chunks):
            if chunk_path(k).exists():
                done.append(k)
            else:
                pending_tiles.extend(plan.tiles[k * chunk_size : (k + 1) * chunk_size])
        resumed = len(done)
        info = {
            "slide": str(slide.resolve()),
            "reader": reader.describe(),
            "modality": modality,
            "plan": plan.summary(),
            "tissue_fraction": tissue.tissue_fraction if tissue is not None else None,
            "config_name": cfg.name,
            "config_fingerprint": cfg.fingerprint(),
            "segmentation_backend": cfg.segmentation.backend,
            "segmentation": segmenter.describe(),
            "segmenter_state": segmenter.state,
            # the stains measured (QuPath's "Estimate stain vectors" values: name, unit r, g, b)
            "stain_vectors": [[k, list(v)] for k, v in measure.stain_vectors] or None,
            "input_files": manifest["input_files"],
            "memory_estimate_gib": round(need_bytes / 2**30, 2),
            "warnings": warnings,
            # what the objects are (names the QuPath measurements Cell: / Nucleus:)
            "objects": measure.objects, "whole_cells": measure.whole_cells,
        }
        # the outputs are written from the chunks, in order, while the run goes on
        writer = _OutputStream([chunk_path(k) for k in range(n_chunks)], out, cfg, reader, info, measure.schema(),
                               plan, segmenter.tile_exact)
        pipe = _Pipeline(reader, plan, segmenter, ctx, cfg, chunk_path, timings, on_chunk=writer.feed)
        bar = RunProgress(len(plan.tiles), min(resumed * chunk_size, len(plan.tiles)), enabled=progress,
                          label="segmenting (dask)" if cfg.engine.scheduler else "segmenting",
                          interval=cfg.engine.progress_interval_s, start=t_start)
        bar.cells = sum(_rows(chunk_path(k)) for k in done)
        with writer, bar:
            for k in done:
                writer.feed(k)
            if cfg.engine.scheduler:
                job = {"key": manifest_key(manifest), "reader": reader.spec(), "backend": cfg.segmentation.backend,
                       "params": cfg.segmentation.params, "nuclear_channels": cfg.segmentation.nuclear_channels,
                       "modality": modality, "state": segmenter.state, "plan": plan, "ctx": ctx,
                       "max_overlap": pipe.max_overlap}
                chunks = [(k, plan.tiles[k * chunk_size:(k + 1) * chunk_size]) for k in range(n_chunks) if k not in done]
                pipe.retried = _run_dask(cfg, chunks, job, chunk_path, writer.feed, timings, bar)
            else:
                pipe.run(stream, pending_tiles, bar)
            t0 = time.perf_counter()
            outputs, n_cells, n_touch = writer.finish()
            if cfg.output.zarr:
                outputs["zarr"] = write_zarr_from_h5ad(outputs["h5ad"], out / OUTPUT_NAMES["zarr"])
                if not cfg.output.h5ad:
                    outputs.pop("h5ad").unlink()
            timings["outputs_after_last_tile"] = time.perf_counter() - t0
    if cfg.output.label_image:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .io.label_image import write_run_labels
        from .stitch import without

        t0 = time.perf_counter()
        chunk_files = [chunk_path(k) for k in range(n_chunks)]
        dropped = pa.array(sorted(writer.dropped_ids), pa.string())

        outputs["labels"] = write_run_labels(out / LABELS_NAME,  # the chunks less the duplicates left out
                                             lambda: (without(pq.read_table(c), dropped) for c in chunk_files),
                                             plan.summary(),
                                             cfg.tiling.model_dump(mode="json"))
        timings["label_image"] = time.perf_counter() - t0
    if cfg.output.spatialdata:  # from the h5ad and GeoParquet just written
        from .io.spatialdata import SPATIALDATA_NAME, write_spatialdata

        t0 = time.perf_counter()
        outputs["spatialdata"] = write_spatialdata(out, out / SPATIALDATA_NAME, outputs["h5ad"], outputs["parquet"],
                                                   info={**info, "slide": str(slide)})
        timings["spatialdata"] = time.perf_counter() - t0
    if n_cells == 0:
        where = "the region (ROI or annotations)" if roi is not None else "the slide"
        why = "no tissue was found in it" if not plan.tiles else "the segmentation found none in its tissue"
        warnings.append(f"no cells: {why} ({where}; see tissue.* and segmentation.* in the config)")
    timings["write_outputs"] = writer.busy
    timings["total"] = time.perf_counter() - t_start
    summary = {
        "status": "complete",
        "slidecell_version": __version__,
        "n_cells": n_cells,
        "n_tiles": len(plan.tiles),
        "cells_touching_tile_edge": n_touch,
        # tiles (in this invocation) read again with more context: they own a cell larger than the overlap
        "tiles_reread_for_large_cells": pipe.retried,
        # cells a second tile also drew (overlapping one kept by the tile owning the overlap)
        "duplicates_dropped": writer.seams.dropped if writer.seams is not None else None,
        "resumed_chunks": resumed,
        "outputs": {k: str(v.name) for k, v in outputs.items()},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **info,
        "slide_fingerprint": fingerprint,
        "roi_wkt": manifest["roi_wkt"],
        "provenance": provenance(time.time() - (time.perf_counter() - t_start)),
    }
    if cfg.analysis is not None:  # the cells are complete; the analysis stage comes next
        summary["analysis_stage"] = {"status": "pending"}
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    write_text_atomic(out / RUN_FILE, json.dumps(summary, indent=1, default=str))  # last: marks complete
    return RunResult(out, n_cells, len(plan.tiles), outputs, timings, resumed, summary)


def _analysis_stage(out: Path, cfg: Config, outputs: dict) -> dict:
    """``slidecell analyze`` and ``report`` on the finished run (its h5ad; exported when the
    run wrote none). Its outcome is recorded in run.json (``analysis_stage``): a failed stage
    is run again by the same command, as is one killed while running."""
    summary = json.loads((out / RUN_FILE).read_text())
    summary["analysis_stage"] = {"status": "running"}
    write_text_atomic(out / RUN_FILE, json.dumps(summary, indent=1, default=str))
    try:
        done = _analyze_run(out, cfg, outputs)
    except BaseException as err:
        summary["analysis_stage"] = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
        write_text_atomic(out / RUN_FILE, json.dumps(summary, indent=1, default=str))
        raise
    summary["analysis_stage"] = {"status": "complete", "outputs": {k: str(Path(v).relative_to(out)) for k, v in done.items()}}
    write_text_atomic(out / RUN_FILE, json.dumps(summary, indent=1, default=str))
    return done


def _analyze_run(out: Path, cfg: Config, outputs: dict) -> dict:
    from .analysis.analyze import analyze
    from .analysis.report import build_report

    if "h5ad" not in outputs:
        from .export import export

        export(out, "h5ad", out / WORK_DIR / OUTPUT_NAMES["h5ad"], overwrite=True)
        source = out / WORK_DIR / OUTPUT_NAMES["h5ad"]
    else:
        source = outputs["h5ad"]
    done = analyze(source, out / "analysis", cfg.analysis, overwrite=True)
    return {"analysis": done, "report": build_report(done, run_dir=out)}


def manifest_key(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_dask(cfg: Config, chunks, job: dict, chunk_path, on_chunk, timings: dict, bar: RunProgress) -> int:
    """The pending chunks on a Dask cluster (:mod:`slidecell.distributed`); returns the tiles
    read again for large cells."""
    from .distributed import connect, run_chunks

    t0 = time.perf_counter()
    threads = cfg.engine.dask_threads
    if threads is None and cfg.engine.scheduler == "local":
        threads = max(1, (os.cpu_count() or 1) // cfg.engine.dask_workers)
    job = {**job, "threads": threads}
    client, cluster = connect(cfg.engine.scheduler, cfg.engine.dask_workers)
    try:
        totals = run_chunks(client, chunks, job, chunk_path, on_chunk, bar.advance)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    timings["dask"] = time.perf_counter() - t0
    timings["dask_task_seconds"] = totals["task_seconds"]
    timings["dask_model_threads"] = totals["threads"]
    return totals["retried"]


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
            _write_chunk(self.current.pop(k), self.chunk_path(k))
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
    return _chunk_part(table, ctx), retried


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
    return _chunk_part(table, ctx), time.perf_counter() - t0


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


def _chunk_part(table: pd.DataFrame, ctx: TileContext):
    import pyarrow as pa

    at = to_arrow(table)
    if ctx.geojson is not None:
        ox, oy, prec = ctx.geojson
        feats = [f + "," for f in geojson_features(table, (ox, oy), prec, cells=ctx.spec.whole_cells)]
        at = at.append_column("feature", pa.array(feats, type=pa.string()))
    return at


def _rows(path: Path) -> int:
    """Cells in a chunk file (from its footer)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _write_chunk(parts: list, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(parts, promote_options="default")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    # unique strings and WKB: dictionary encoding would only cost time
    pq.write_table(table, tmp, compression="lz4", use_dictionary=["tile"])
    os.replace(tmp, path)


class _OutputStream:
    """Writes GeoJSON, GeoParquet and h5ad from the chunk files in plan order, in a thread, as
    the chunks are finished (:meth:`feed`), one chunk in memory at a time. For a backend that is
    not tile-exact they wait for the last chunk, and :class:`~slidecell.stitch.SeamResolver`
    names the duplicates to leave out. Every file is written
    under a temporary name and renamed into place only by :meth:`finish` once all chunks are in;
    if the run fails (or is killed) the partial files are removed (or swept at the next start)."""

    def __init__(self, chunks: list[Path], out: Path, cfg: Config, reader: SlideReader, info: dict, schema,
                 plan: TilePlan, tile_exact: bool = True):
        import queue
        import threading

        from .stitch import SeamResolver

        self.chunks, self.out, self.cfg, self.schema = chunks, out, cfg, schema
        self.offset = reader.bounds_offset
        self.var, self.slide_id = reader.channel_table(), slide_id(info)
        self.uns = run_uns(info, cfg.model_dump(mode="json"), __version__)
        self.outputs = output_paths(cfg, out)
        self.spatial = None
        if cfg.output.tissue_image and "h5ad" in self.outputs:  # the tissue under squidpy's plots
            from .io.tissue_image import nuclear_channels, tissue_images

            self.spatial = tissue_images(reader, info["modality"], nuclear_channels(info, reader.channel_names))
        #: the guard behind the ownership rule: no two cells of different tiles on the same spot
        self.seams = None if tile_exact else SeamResolver(plan)
        self.dropped_ids: set = set()
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="slidecell-outputs", daemon=True)
        self.error: BaseException | None = None
        self.result = None
        self.busy = 0.0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.thread.is_alive():  # the run failed: abandon the partial outputs
            self.queue.put("abort")
            self.thread.join()

    def feed(self, k: int) -> None:
        self.queue.put(k)

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def _work(self) -> None:
        try:
            self.result = self._write()
        except BaseException as err:  # noqa: BLE001  (re-raised in the run's thread by finish)
            self.error = err

    def _write(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .stitch import without

        ready, nxt = set(), 0
        with CellFiles(self.outputs, self.schema, self.offset, self.cfg.output.geojson_precision, self.uns, self.var,
                       self.slide_id, spatial=self.spatial) as files:
            while True:
                item = self.queue.get()
                if item == "abort":
                    raise OutputError(f"{self.out}: run stopped before all tiles were done; outputs not written")
                if item is None:
                    break
                ready.add(item)
                if self.seams is not None:  # the outputs wait for every chunk (duplicates resolved first)
                    continue
                while nxt in ready:
                    t0 = time.perf_counter()
                    files.write(pq.read_table(self.chunks[nxt]))
                    nxt += 1
                    self.busy += time.perf_counter() - t0
            if self.seams is not None and len(ready) == len(self.chunks):
                t0 = time.perf_counter()
                self.dropped_ids = self.seams.resolve(self.chunks)
                dropped = pa.array(sorted(self.dropped_ids), pa.string())
                for path in self.chunks:
                    files.write(without(pq.read_table(path), dropped))
                nxt = len(self.chunks)
                self.busy += time.perf_counter() - t0
            if nxt != len(self.chunks):
                raise OutputError(f"{self.out}: chunk {nxt} missing; outputs not written")
        return self.outputs, files.n, files.n_touch


__all__ = ["run", "process_tile", "process_tiles", "cells_from_labels", "TileContext", "RunResult", "BASE_COLUMNS"]
