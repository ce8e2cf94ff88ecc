"""Chunk files: the cells of ``tiling.chunk_tiles`` consecutive tiles, one Parquet file each in
``OUT/.slidecell/chunks`` (the unit of resumption and of Dask tasks), written atomically. Each
row carries its cell's QuPath GeoJSON feature ready-made when the run writes GeoJSON."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io.geojson import geojson_features
from ..table import to_arrow
from .cells import TileContext


def chunk_part(table: pd.DataFrame, ctx: TileContext):
    import pyarrow as pa

    at = to_arrow(table)
    if ctx.geojson is not None:
        ox, oy, prec = ctx.geojson
        feats = [f + "," for f in geojson_features(table, (ox, oy), prec, cells=ctx.spec.whole_cells)]
        at = at.append_column("feature", pa.array(feats, type=pa.string()))
    return at


def chunk_rows(path: Path) -> int:
    """Cells in a chunk file (from its footer)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def write_chunk(parts: list, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(parts, promote_options="default")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    # unique strings and WKB: dictionary encoding would only cost time
    pq.write_table(table, tmp, compression="lz4", use_dictionary=["tile"])
    os.replace(tmp, path)
