"""Stitching: the cells of all tiles into one set with no duplicates.

The ownership rule (:meth:`slidecell.tiling.Tile.owns`) keeps each cell in the one tile whose core
holds its centroid. A backend that is exactly tile-invariant (the built-in model, the watershed,
a label image) then gives every cell once. A backend that is not (Cellpose, whose network mixes a
whole internal tile into every output pixel) can draw the same cell a little differently in two
tiles, with the two centroids in different cores: both tiles would keep it. :class:`SeamResolver`
is the guard behind the rule, run as the outputs are written:

* a cell lying wholly inside its own tile's core is always kept (no other tile's cell can
  claim that area: cores do not overlap);
* for a cell reaching across its core's boundary, once every chunk is in: for each pair of
  cells from different tiles overlapping by more than ``fraction`` of the smaller one,
  the tile whose core holds the centroid of their intersection keeps its cell and the other is
  dropped (neither core: the larger cell is kept). A dropped cell is counted in run.json
  (``duplicates_dropped``) and left out of every output, the label image included.

It runs only for backends that do not declare themselves tile-exact
(:attr:`slidecell.segment.Segmenter.tile_exact`), after the last chunk and before the outputs
are written (in plan order, less the dropped cells). It keeps a compact box per cell and the
crossing cells' outlines; those of the cells they may overlap are read back from the chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiling import TilePlan


class SeamResolver:
    def __init__(self, plan: TilePlan, fraction: float = 0.05):
        self.fraction = fraction
        idx = np.array([t.index for t in plan.tiles], np.int64)
        order = np.argsort(idx)
        self.tile_index = idx[order]  # sorted, for a vectorised look-up of each cell's core
        self.tile_core = np.array([t.core for t in plan.tiles], np.float64).reshape(-1, 4)[order] * plan.scale
        self.dropped = 0

    def _cores(self, tiles: np.ndarray) -> np.ndarray:
        """Level-0 core boxes (x0, y0, x1, y1) of the tiles with these indices."""
        return self.tile_core[np.searchsorted(self.tile_index, tiles)]

    def resolve(self, chunks: list[Path]) -> set:
        """The ``cell_id`` s to leave out of the outputs, read from the finished chunk files
        (their outlines, tiles and ids; a compact box per cell is kept, and the crossing cells'
        outlines)."""
        import pyarrow.parquet as pq
        import shapely

        boxes, tiles, cross_geom, cross_id, cross_at = [], [], [], [], []
        start = 0
        for path in chunks:
            t = pq.read_table(path, columns=["geometry", "tile", "cell_id"])
            geoms = shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False))
            box = shapely.bounds(geoms).reshape(-1, 4)
            tile = t.column("tile").to_numpy().astype(np.int64)
            core = self._cores(tile)
            inside = (box[:, 0] >= core[:, 0]) & (box[:, 1] >= core[:, 1]) & (box[:, 2] <= core[:, 2]) & \
                (box[:, 3] <= core[:, 3])
            c = np.flatnonzero(~inside)
            cross_geom.append(geoms[c])
            cross_id.extend(t.column("cell_id").take(c).to_pylist())
            cross_at.append(start + c)
            boxes.append(box.astype(np.float32))
            tiles.append(tile)
            start += len(tile)
        if not start:
            return set()
        hg = np.concatenate(cross_geom)
        if not len(hg):
            return set()
        hpos = np.concatenate(cross_at)  # global row of each crossing cell
        starts = np.concatenate([[0], np.cumsum([len(b) for b in boxes])])
        allbox, alltile = np.concatenate(boxes), np.concatenate(tiles)
        htile = alltile[hpos]
        tree = shapely.STRtree(shapely.box(*allbox.T.astype(np.float64)))
        hi, cand = tree.query(hg, predicate="intersects")
        keep = alltile[cand] != htile[hi]
        hi, cand = hi[keep], cand[keep]
        if not len(hi):
            return set()
        # the candidates' outlines: crossing ones from memory, the others from their chunk files
        held_pos = {int(g): i for i, g in enumerate(hpos)}
        geom, need = {}, {}
        for g in np.unique(cand):
            if int(g) in held_pos:
                geom[int(g)] = hg[held_pos[int(g)]]
            else:
                need.setdefault(int(np.searchsorted(starts, g, side="right") - 1), []).append(int(g))
        for c, gs in need.items():
            col = pq.read_table(chunks[c], columns=["geometry"]).column("geometry").to_numpy(zero_copy_only=False)
            for g in gs:
                geom[g] = shapely.from_wkb(col[g - starts[c]])
        other = np.array([geom[int(g)] for g in cand], object)
        inter = shapely.intersection(hg[hi], other)
        small = np.minimum(shapely.area(hg[hi]), shapely.area(other))
        dup = shapely.area(inter) > self.fraction * np.maximum(small, 1e-12)
        hi, cand, inter, other = hi[dup], cand[dup], inter[dup], other[dup]
        lose = np.zeros(len(hg), bool)
        if len(hi):
            cx, cy = shapely.get_coordinates(shapely.centroid(inter)).T
            mine, theirs = self._cores(htile[hi]), self._cores(alltile[cand])
            in_mine = (cx >= mine[:, 0]) & (cx < mine[:, 2]) & (cy >= mine[:, 1]) & (cy < mine[:, 3])
            in_theirs = (cx >= theirs[:, 0]) & (cx < theirs[:, 2]) & (cy >= theirs[:, 1]) & (cy < theirs[:, 3])
            a_mine, a_theirs = shapely.area(hg[hi]), shapely.area(other)
            bigger = (a_mine > a_theirs) | ((a_mine == a_theirs) & (htile[hi] < alltile[cand]))
            np.logical_or.at(lose, hi, ~(in_mine | (~in_theirs & bigger)))
        self.dropped = int(lose.sum())
        return {cross_id[i] for i in np.flatnonzero(lose)}


def without(at, dropped):
    """An Arrow cell table less the cells whose ``cell_id`` is in ``dropped`` (an Arrow array)."""
    import pyarrow.compute as pc

    return at.filter(pc.invert(pc.is_in(at.column("cell_id"), dropped))) if len(dropped) else at


__all__ = ["SeamResolver", "without"]
