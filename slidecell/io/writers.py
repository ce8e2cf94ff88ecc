"""Writers for the cell table: QuPath GeoJSON (streamed), GeoParquet, AnnData. Every file is
written under a temporary name and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from ..table import MEAN_PREFIX, QUPATH_NAMES, mean_columns, to_anndata


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o644)  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _measurement_names(table: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = [(col, name) for col, name in QUPATH_NAMES.items() if col in table.columns]
    pairs += [(c, f"Nucleus: {c[len(MEAN_PREFIX):]}: Mean") for c in mean_columns(table)]
    return pairs


class GeoJSONWriter:
    """Streams cells into a QuPath-importable GeoJSON FeatureCollection, part by part.

    Each feature: ``id`` (UUID), ``geometry`` in full-resolution pixels as QuPath shows the slide
    (level-0 minus ``offset``, OpenSlide's bounds origin), ``properties.objectType``,
    ``properties.measurements`` as a name→number map (non-finite values omitted)."""

    def __init__(self, fh, offset=(0, 0), precision: int | None = 2, object_type: str = "detection"):
        self.fh = fh
        self.offset = offset
        self.precision = precision
        self.object_type = object_type
        self.n = 0
        fh.write('{"type":"FeatureCollection","features":[')

    def write(self, table: pd.DataFrame) -> None:
        if not len(table):
            return
        pairs = _measurement_names(table)
        values = table[[c for c, _ in pairs]].to_numpy(np.float64)
        # one column of "name":value strings at a time (non-finite values left out)
        parts = []
        for j, (_, name) in enumerate(pairs):
            key = json.dumps(name, ensure_ascii=False) + ":"
            col = values[:, j]
            strs = [key + repr(v) for v in col.tolist()]
            for i in np.flatnonzero(~np.isfinite(col)):
                strs[i] = ""
            parts.append(strs)
        meas = [",".join(filter(None, row)) for row in zip(*parts)] if parts else [""] * len(table)
        geoms = np.asarray(table["geometry"].to_numpy(), dtype=object)
        ox, oy = self.offset
        if ox or oy:
            geoms = shapely.transform(geoms, lambda c: c - (ox, oy))
        if self.precision is not None:
            geoms = shapely.set_precision(geoms, 10.0**-self.precision)
        gj = shapely.to_geojson(geoms)
        head = '{"type":"Feature","id":"'
        mid = '","geometry":'
        tail = ',"properties":{"objectType":"' + self.object_type + '","measurements":{'
        feats = [head + i + mid + g + tail + m + "}}}" for i, g, m in
                 zip(table["cell_id"].astype(str).tolist(), gj.tolist(), meas)]
        self.fh.write(("," if self.n else "") + ",".join(feats))
        self.n += len(feats)

    def close(self) -> None:
        self.fh.write("]}\n")


def write_qupath_geojson(table: pd.DataFrame, path, offset=(0, 0), precision: int = 2,
                         object_type: str = "detection") -> int:
    """Write the cells to a QuPath-importable GeoJSON FeatureCollection (see
    :class:`GeoJSONWriter`). Returns the number of features written."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        w = GeoJSONWriter(fh, offset, precision, object_type)
        w.write(table)
        w.close()
    return w.n


def geoparquet_metadata() -> bytes:
    """GeoParquet 1.1 file metadata for the WKB ``geometry`` column (level-0 pixels, no CRS)."""
    return json.dumps({
        "version": "1.1.0", "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "crs": None, "geometry_types": ["Polygon"]}},
        "creator": {"library": "slidecell"},
    }).encode()


class GeoParquetWriter:
    """Streams cell tables (as Arrow, geometry as WKB) into one GeoParquet file, a row group per
    part; geopandas reads it back as a GeoDataFrame."""

    def __init__(self, path, schema):
        import pyarrow.parquet as pq

        meta = dict(schema.metadata or {})
        meta[b"geo"] = geoparquet_metadata()
        self.schema = schema.with_metadata(meta)
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")

    def write(self, arrow_table) -> None:
        if arrow_table.num_rows:
            self.writer.write_table(arrow_table.cast(self.schema))

    def close(self) -> None:
        self.writer.close()


def write_geoparquet(table: pd.DataFrame, path) -> None:
    from ..table import to_arrow

    at = to_arrow(table)
    with atomic_path(path) as tmp:
        w = GeoParquetWriter(tmp, at.schema)
        w.write(at)
        w.close()


class H5adWriter:
    """Streams cell tables into an AnnData ``.h5ad`` of a known number of cells without holding
    them in memory. anndata writes the file's layout (var, uns, encodings) from an empty AnnData;
    the per-cell arrays (``X``, the ``obs`` columns and index, ``obsm['spatial']``) are then
    sized to ``n`` cells and filled part by part."""

    def __init__(self, path, n: int, channels, uns: dict | None = None):
        import h5py

        from ..table import empty_table

        self.n = n
        to_anndata(empty_table(channels), uns).write_h5ad(path)
        self.f = h5py.File(path, "r+")
        obs = self.f["obs"]
        self.keys = ["X", "obsm/spatial", "obs/" + obs.attrs["_index"]]
        self.keys += ["obs/" + c for c in obs.attrs["column-order"]]
        for key in self.keys:
            old = self.f[key]
            attrs, dtype, shape = dict(old.attrs), old.dtype, old.shape
            del self.f[key]
            new = self.f.create_dataset(key, shape=(n, *shape[1:]), dtype=dtype,
                                        chunks=(min(n, 65536), *shape[1:]) if n else None)
            new.attrs.update(attrs)
        self.pos = 0

    def write(self, table: pd.DataFrame) -> None:
        k = len(table)
        if not k:
            return
        if self.pos + k > self.n:
            raise ValueError(f"more cells than announced ({self.n})")
        a = to_anndata(table)
        sl = slice(self.pos, self.pos + k)
        self.f["X"][sl] = a.X
        self.f["obsm/spatial"][sl] = a.obsm["spatial"]
        index = self.keys[2]
        self.f[index][sl] = a.obs_names.to_numpy().astype(object)
        for key in self.keys[3:]:
            self.f[key][sl] = a.obs[key[4:]].to_numpy()
        self.pos += k

    def close(self) -> None:
        if self.pos != self.n:
            raise ValueError(f"wrote {self.pos} cells, announced {self.n}")
        self.f.close()


def write_h5ad(table: pd.DataFrame, path, uns: dict | None = None) -> None:
    adata = to_anndata(table, uns)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
