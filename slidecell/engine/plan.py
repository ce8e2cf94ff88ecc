"""Before any tile is segmented: the region checked against the slide, the windows the
segmenter calibrates on, and the memory the plan will need."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import shapely

from ..config import Config
from ..errors import ConfigError
from ..io import SlideReader
from ..segment import Segmenter
from ..tiling import Tile, TilePlan


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


def growth_context(seg, mpp: float) -> int:
    """Working pixels of context growing a cell needs beyond its nucleus: its own growth and its
    neighbour's (they compete for the pixels between them), a large nucleus, and the smoothing of
    the membrane signal."""
    if seg.cell_expansion_um <= 0:
        return 0
    smooth = 3 * seg.cell_growth.smooth_um if seg.cell_growth.method == "membrane" else 0.0
    return int(math.ceil((2 * seg.cell_expansion_um + 20.0 + smooth) / mpp))
