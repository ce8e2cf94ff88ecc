"""Stitching: the cells of all tiles into one set with no duplicates.

The ownership rule (:meth:`slidecell.tiling.Tile.owns`) keeps each cell in the one tile whose core
holds its centroid. A backend that is exactly tile-invariant (the built-in model, the watershed,
a label image) then gives every cell once. A backend that is not (Cellpose, whose network mixes a
whole internal tile into every output pixel) can draw the same cell a little differently in two
tiles, with the two centroids in different cores: both tiles would keep it. :class:`SeamResolver`
is the guard behind the rule, run as the outputs are written:

* a cell lying wholly inside its own tile's core is always kept (no other tile's cell can
  claim that area: cores do not overlap);
* a cell reaching across its core's boundary is held until every chunk is in; then, for each
  pair of cells from different tiles overlapping by more than ``fraction`` of the smaller one,
  the tile whose core holds the centroid of their intersection keeps its cell and the other is
  dropped (neither core: the larger cell is kept). A dropped cell is counted in run.json
  (``duplicates_dropped``) and left out of every output, the label image included.

Only the crossing cells' rows are held, and a compact box per cell (24 bytes); the geometries
of the cells a crossing cell may overlap are read back from their chunk files at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiling import TilePlan


class SeamResolver:
    def __init__(self, plan: TilePlan, chunks: list[Path], fraction: float = 0.05):
        self.fraction = fraction
        self.chunks = chunks
        idx = np.array([t.index for t in plan.tiles], np.int64)
        cores = np.array([t.core for t in plan.tiles], np.float64).reshape(-1, 4) * plan.scale
        self.core_of = {int(i): c for i, c in zip(idx, cores)}
        self.boxes: list[np.ndarray] = []  # per chunk: xmin, ymin, xmax, ymax of every cell
        self.tiles: list[np.ndarray] = []
        self.held: list = []  # Arrow tables of crossing cells, in chunk order
        self.held_rows: list[np.ndarray] = []
        self.dropped = 0

    def _cores(self, tiles: np.ndarray) -> np.ndarray:
        return np.array([self.core_of[int(t)] for t in tiles], np.float64).reshape(-1, 4)

    def split(self, k: int, at):
        """Chunk ``k``'s Arrow table → the rows to write now (cells inside their core); the
        crossing ones are held for :meth:`finish`."""
        import pyarrow as pa
        import shapely

        n = at.num_rows
        geoms = shapely.from_wkb(at.column("geometry").to_numpy(zero_copy_only=False)) if n else np.zeros(0, object)
        box = shapely.bounds(geoms).reshape(-1, 4) if n else np.zeros((0, 4))
        tiles = at.column("tile").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        core = self._cores(tiles)
        inside = (box[:, 0] >= core[:, 0]) & (box[:, 1] >= core[:, 1]) & (box[:, 2] <= core[:, 2]) & \
            (box[:, 3] <= core[:, 3])
        assert len(self.boxes) == k, "chunks must be split in order"
        self.boxes.append(box.astype(np.float32))
        self.tiles.append(tiles)
        cross = np.flatnonzero(~inside)
        if len(cross):
            self.held.append(at.take(pa.array(cross)))
            self.held_rows.append(np.stack([np.full(len(cross), k), cross], 1))
        return at.filter(pa.array(inside)) if len(cross) else at

    def finish(self):
        """The held cells that survive (one Arrow table, or None) and the ``cell_id`` s dropped."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        import shapely

        if not self.held:
            return None, set()
        held = pa.concat_tables(self.held, promote_options="default")
        where = np.concatenate(self.held_rows)  # (chunk, row) of each held cell
        hg = shapely.from_wkb(held.column("geometry").to_numpy(zero_copy_only=False))
        htile = held.column("tile").to_numpy().astype(np.int64)
        # every cell (held or not) whose box meets a held cell's box, by chunk
        sizes = [len(b) for b in self.boxes]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        allbox = np.concatenate(self.boxes) if sizes else np.zeros((0, 4), np.float32)
        alltile = np.concatenate(self.tiles) if sizes else np.zeros(0, np.int64)
        tree = shapely.STRtree(shapely.box(*allbox.T.astype(np.float64)))
        hi, cand = tree.query(hg, predicate="intersects")
        keep = alltile[cand] != htile[hi]
        hi, cand = hi[keep], cand[keep]
        if not len(hi):
            return held, set()
        # the candidates' outlines: held ones from memory, the others from their chunk files
        held_pos = {int(starts[c] + r): i for i, (c, r) in enumerate(where)}
        geom = {}
        need: dict[int, list[int]] = {}
        for g in np.unique(cand):
            if int(g) in held_pos:
                geom[int(g)] = hg[held_pos[int(g)]]
            else:
                c = int(np.searchsorted(starts, g, side="right") - 1)
                need.setdefault(c, []).append(int(g))
        for c, gs in need.items():
            col = pq.read_table(self.chunks[c], columns=["geometry"]).column("geometry").to_numpy(zero_copy_only=False)
            for g in gs:
                geom[g] = shapely.from_wkb(col[g - starts[c]])
        other = np.array([geom[int(g)] for g in cand], object)
        inter = shapely.intersection(hg[hi], other)
        area = shapely.area(inter)
        small = np.minimum(shapely.area(hg[hi]), shapely.area(other))
        dup = area > self.fraction * np.maximum(small, 1e-12)
        hi, cand, inter, other = hi[dup], cand[dup], inter[dup], other[dup]
        lose = np.zeros(len(held), bool)
        if len(hi):
            cx, cy = shapely.get_coordinates(shapely.centroid(inter)).T
            mine = self._cores(htile[hi])
            theirs = self._cores(alltile[cand])
            in_mine = (cx >= mine[:, 0]) & (cx < mine[:, 2]) & (cy >= mine[:, 1]) & (cy < mine[:, 3])
            in_theirs = (cx >= theirs[:, 0]) & (cx < theirs[:, 2]) & (cy >= theirs[:, 1]) & (cy < theirs[:, 3])
            a_mine, a_theirs = shapely.area(hg[hi]), shapely.area(other)
            bigger = (a_mine > a_theirs) | ((a_mine == a_theirs) & (htile[hi] < alltile[cand]))
            wins = in_mine | (~in_theirs & bigger)
            np.logical_or.at(lose, hi, ~wins)
        self.dropped = int(lose.sum())
        dropped_ids = set(held.column("cell_id").filter(pa.array(lose)).to_pylist())
        return held.filter(pa.array(~lose)), dropped_ids


__all__ = ["SeamResolver"]
