"""The cells as an instance label image: a tiled, pyramidal OME-TIFF (napari, QuPath overlays),
written tile by tile from the cell outlines with bounded memory.

Label ``k`` is the ``k``-th cell of the run's tables (row ``k - 1`` of cells.parquet, cells.csv
and cells.h5ad); 0 is background. The image is at the run's working resolution (its µm/px is in
the OME metadata); level ``i`` of the pyramid is 2^i times smaller, each rasterized from the
outlines (not resampled), so a small cell never vanishes into a neighbour's label.

Cells stream in plan order (tiles row by row) and a cell never reaches farther than one tile
beyond its own tile's core, so a band of output rows needs only the cells of three tile rows:
memory is bounded by the slide's width, never by its height or cell count.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import cv2
import numpy as np
import shapely

#: file name in a run's folder
LABELS_NAME = "cells_labels.ome.tif"


def _cell_rows(parts, scale: float, tile_size: int, offset_y: int):
    """(plan row, label ids, outlines in working pixels) for each plan row of cells, in order.
    ``parts`` yields Arrow tables in the run's order."""
    current, ids, polys, label = None, [], [], 0
    for at in parts:
        n = at.num_rows
        if not n:
            continue
        y = at.column("y").to_numpy() / scale
        rows = np.floor((y - offset_y % tile_size) / tile_size).astype(np.int64) + (1 if offset_y % tile_size else 0)
        geoms = shapely.from_wkb(at.column("geometry").to_numpy(zero_copy_only=False))
        geoms = shapely.transform(geoms, lambda c: c / scale)
        labels = np.arange(label + 1, label + n + 1)
        label += n
        for r in np.unique(rows):
            m = rows == r
            if current is not None and r != current:
                yield current, np.concatenate(ids), np.concatenate(polys)
                ids, polys = [], []
            current = int(r)
            ids.append(labels[m])
            polys.append(geoms[m])
    if current is not None:
        yield current, np.concatenate(ids), np.concatenate(polys)


def rasterize_outlines(out: np.ndarray, ids, polys, x0: float, y0: float, factor: float) -> None:
    """Fill each outline (working pixels) into ``out`` (origin x0, y0, at 1/factor resolution)
    with its label: exactly the pixels whose centres are inside. OpenCV also fills pixels its
    edges touch, so the outlines are first pulled 1/16 px inwards (its sub-pixel unit)."""
    from ..polygons import offset_rectilinear

    coords, ring = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
    last = np.r_[ring[1:] != ring[:-1], True]  # the closing repeat of each ring
    coords, ring = coords[~last], ring[~last]
    lengths = np.bincount(ring, minlength=len(polys))
    starts = np.cumsum(lengths) - lengths
    inner, _ = offset_rectilinear((coords - (x0, y0)) / factor, starts, lengths, -1 / 16)
    pts = np.round((inner - 0.5) * 16).astype(np.int32)  # pixel i's centre is at i in OpenCV
    for k, lab in enumerate(ids):
        cv2.fillPoly(out, [pts[starts[k]:starts[k] + lengths[k]]], int(lab), lineType=cv2.LINE_8, shift=4)


def write_label_pyramid(path, parts_factory, width: int, height: int, scale: float, mpp: float,
                        tile_size: int, offset_y: int = 0, reach: int = 1024, tile: int = 512) -> Path:
    """Write the label OME-TIFF. ``parts_factory()`` returns a fresh iterator over the run's
    cells as Arrow tables in plan order (read once per pyramid level); ``width``/``height``,
    ``scale`` (level-0 px per working px) and ``mpp`` are the run's working resolution,
    ``tile_size``/``offset_y`` its tile grid and ``reach`` how far (working px) a cell may
    extend beyond its tile's core (the largest overlap a tile was read with)."""
    import tifffile

    from .atomic import atomic_path

    path = Path(path)
    levels = [1]
    while max(width, height) // levels[-1] > 2 * tile and len(levels) < 8:
        levels.append(levels[-1] * 2)
    first = offset_y % tile_size

    def core_top(r: int) -> int:
        return r * tile_size + (first - tile_size if first else 0)

    def level_tiles(f: int):
        w, h = -(-width // f), -(-height // f)
        rows: deque = deque()  # (plan row, ids, outlines, lowest outline edge)
        source = _cell_rows(parts_factory(), scale, tile_size, offset_y)
        pending = next(source, None)
        for b0 in range(0, h, tile):
            y0, y1 = b0 * f, min(h, b0 + tile) * f  # the band in working pixels
            while pending is not None and core_top(pending[0]) - reach < y1:
                r, ids, polys = pending
                rows.append((r, ids, polys, float(shapely.bounds(polys)[:, 3].max())))
                pending = next(source, None)
            while rows and rows[0][3] <= y0:
                rows.popleft()
            out = np.zeros((min(tile, h - b0), w), np.int32)
            for _, ids, polys, _ in rows:
                miny, maxy = shapely.bounds(polys)[:, [1, 3]].T
                m = (maxy > y0) & (miny < y1)
                if m.any():
                    rasterize_outlines(out, ids[m], polys[m], 0.0, y0, f)
            for x in range(0, w, tile):
                t = np.zeros((tile, tile), np.int32)
                part = out[:, x:x + tile]
                t[:part.shape[0], :part.shape[1]] = part
                yield t

    meta = {"axes": "YX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm", "Name": "slidecell cells"}
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for i, f in enumerate(levels):
                w, h = -(-width // f), -(-height // f)
                kw = {"subifds": len(levels) - 1, "metadata": meta} if i == 0 else {"subfiletype": 1}
                tif.write(level_tiles(f), shape=(h, w), dtype=np.int32, tile=(tile, tile), compression="zlib",
                          **kw)
    return path


def write_run_labels(path, parts_factory, plan: dict, tiling: dict) -> Path:
    """:func:`write_label_pyramid` for a run, from its plan summary (run.json's ``plan``) and
    its ``tiling`` config: a cell reaches at most the largest overlap a tile was read with."""
    reach = max(int(plan["overlap_px"]), int(np.ceil(float(tiling.get("max_overlap_um", 160.0)) / plan["mpp"]))) + 16
    offset_y = int((tiling.get("grid_offset") or (0, 0))[1])
    return write_label_pyramid(path, parts_factory, plan["width"], plan["height"], plan["scale"], plan["mpp"],
                               plan["tile_size"], offset_y, reach)


__all__ = ["write_label_pyramid", "write_run_labels", "LABELS_NAME"]
