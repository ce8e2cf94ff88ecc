"""Tile → cells: the unit of work. A tile's label image becomes the cells the tile owns (centroid
in its core, and in the region), with outlines in level-0 pixels, shape, measurements and ids.

:func:`process_tiles` is a pure function of tiles, their pixels, a calibrated segmenter and a
:class:`TileContext` (tiles in, one cell table per tile out), so it can run in any worker; tiles
of equal size go through the model as one batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi

from ..measure import MeasureSpec, label_moments, nucleus_shape_columns, shape_columns
from ..polygons import outline_labels
from ..segment import Scored, Segmenter
from ..table import empty_table
from ..tiling import Tile


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
        cells = spec.grow(nuclei, image)
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
    mpp = ctx.mpp
    x0, y0 = gx * ctx.scale, gy * ctx.scale
    columns = {
        "cell_id": cell_ids(ctx.slide_key, x0, y0),
        "tile": np.full(len(ids), tile.index, np.int64),
        "x": x0, "y": y0, "x_um": x0 * ctx.mpp0, "y_um": y0 * ctx.mpp0,
        **shape_columns(area, perim_px, hull, (mu20, mu02, mu11), polys0, mpp, ctx.mpp0),
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
        columns.update(nucleus_shape_columns(n_area, n_perim * mpp, nuc, area * mpp**2, ctx.mpp0))
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
