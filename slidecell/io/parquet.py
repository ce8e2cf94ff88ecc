"""GeoParquet: every cell with every measurement, outlines as WKB (level-0 pixels)."""

from __future__ import annotations

import json


def geoparquet_metadata(columns=("geometry",)) -> bytes:
    """GeoParquet 1.1 file metadata for the WKB geometry columns (level-0 pixels, no CRS);
    ``geometry`` is the primary one."""
    return json.dumps({
        "version": "1.1.0", "primary_column": "geometry",
        "columns": {c: {"encoding": "WKB", "crs": None, "geometry_types": ["Polygon"]} for c in columns},
        "creator": {"library": "slidecell"},
    }).encode()


class GeoParquetWriter:
    """Streams cell tables (as Arrow, geometry as WKB) into one GeoParquet file, a row group per
    part; geopandas reads it back as a GeoDataFrame."""

    def __init__(self, path, schema):
        import pyarrow.parquet as pq

        meta = dict(schema.metadata or {})
        meta[b"geo"] = geoparquet_metadata([c for c in ("geometry", "nucleus_geometry") if c in schema.names])
        self.schema = schema.with_metadata(meta)
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd", use_dictionary=["tile"])

    def write(self, arrow_table) -> None:
        if arrow_table.num_rows:
            self.writer.write_table(arrow_table.cast(self.schema))

    def close(self) -> None:
        self.writer.close()
