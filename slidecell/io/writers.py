"""Output formats of the cell table, in one registry serving ``slidecell run`` and ``export``.

A format is an :class:`OutputFormat`: a name, a file name and ``open(tmp_path, context)``
returning a :class:`PartWriter` that receives the cells part by part (a :class:`Part`: an Arrow
table with outlines as WKB, as the engine's chunks hold them) and is closed once, saying whether
every part came. :class:`CellFiles` writes several formats at once from the same parts, each under
a temporary name renamed into place only when every file is complete. A new format is one module
(its writer) and one :func:`register_format` call; the run writes it when ``output.formats``
names it, and ``slidecell export --to NAME`` converts a finished run to it.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .geojson import GeoJSONWriter
from .h5ad import H5adWriter
from .parquet import GeoParquetWriter


@dataclass(frozen=True)
class WriteContext:
    """What a format may need besides the cells: their schema, the slide's offset and
    GeoJSON precision (QuPath), the run's AnnData ``uns``/``var``, the slide id, whether the
    objects are whole cells, the tissue images (squidpy)."""

    schema: object  # slidecell.table.CellSchema
    offset: tuple = (0, 0)
    precision: int = 3
    uns: dict | None = None
    var: object = None
    slide_id: str | None = None
    whole_cells: bool | None = None
    spatial: dict | None = None

    def empty(self) -> pd.DataFrame:
        """The table of a run without cells (every column, no row)."""
        from ..table import empty_table

        table = empty_table(self.schema)
        if self.slide_id is not None:
            table.insert(1, "slide_id", pd.Series(dtype="object"))
        return table


class Part:
    """One part of the cells, in the forms the formats take, each made once when first asked."""

    def __init__(self, arrow, slide: str | None):
        self.arrow = arrow  # as the chunk holds it (with the ready-made ``feature`` column, if any)
        self.slide = slide

    @cached_property
    def cells(self):
        """The Arrow cells without ``feature``, with ``slide_id`` (as in the AnnData's obs)."""
        import pyarrow as pa

        at = self.arrow
        cells = at.drop_columns([c for c in ("feature",) if c in at.column_names])
        if self.slide is not None and "slide_id" not in cells.column_names:
            cells = cells.add_column(1, "slide_id", pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(cells.num_rows, np.int32)), pa.array([self.slide])))
        return cells

    @cached_property
    def plain(self):
        """:attr:`cells` without outlines (Arrow)."""
        return self.cells.drop_columns([c for c in ("geometry", "nucleus_geometry") if c in self.cells.column_names])

    @cached_property
    def plain_frame(self) -> pd.DataFrame:
        return self.plain.to_pandas()


class PartWriter(Protocol):
    def write(self, part: Part) -> None: ...

    def close(self, complete: bool) -> None:
        """Called once, also after a failure (``complete`` False: the file is discarded)."""


@dataclass(frozen=True)
class OutputFormat:
    name: str
    #: the file (or store) name in a run folder
    filename: str
    #: opens a writer on the temporary path; None for a format converted from a finished run
    open: Callable[[Path, WriteContext], PartWriter] | None = None
    #: ``convert(run_dir, out) -> Path`` for a format made from a finished run (not streamed)
    convert: Callable | None = None
    description: str = ""


FORMATS: dict[str, OutputFormat] = {}


def register_format(fmt: OutputFormat) -> OutputFormat:
    FORMATS[fmt.name] = fmt
    return fmt


# -- the built-in streamed formats ------------------------------------------------------------
class _GeoJSON:
    def __init__(self, path: Path, ctx: WriteContext, gzip: bool = False):
        import gzip as gz

        self.fh = gz.open(path, "wb", compresslevel=1) if gzip else open(path, "wb")
        self.writer = GeoJSONWriter(self.fh, ctx.offset, ctx.precision, cells=ctx.whole_cells)

    def write(self, part: Part) -> None:
        at = part.arrow
        if "feature" in at.column_names:  # the features' bytes as they lie, no Python strings
            feats = at.column("feature").combine_chunks()
            offsets = np.frombuffer(feats.buffers()[1], np.int32, len(feats) + 1, feats.offset * 4)
            self.writer.write_joined(memoryview(feats.buffers()[2])[offsets[0]:offsets[-1]], len(feats))
        else:
            from ..table import from_arrow

            self.writer.write(from_arrow(part.cells))

    def close(self, complete: bool) -> None:
        try:
            if complete:
                self.writer.close()
        finally:
            self.fh.close()


class _Parquet:
    def __init__(self, path: Path, ctx: WriteContext):
        self.path, self.ctx, self.writer = path, ctx, None

    def write(self, part: Part) -> None:
        if self.writer is None:  # the schema of the cells as they come
            self.writer = GeoParquetWriter(self.path, part.cells.schema)
        self.writer.write(part.cells)

    def close(self, complete: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        elif complete:  # no cells at all
            from ..table import to_arrow

            w = GeoParquetWriter(self.path, to_arrow(self.ctx.empty()).schema)
            w.close()


class _H5ad:
    def __init__(self, path: Path, ctx: WriteContext):
        self.writer = H5adWriter(path, ctx.schema, ctx.uns, var=ctx.var, slide_id=ctx.slide_id, spatial=ctx.spatial)

    def write(self, part: Part) -> None:
        self.writer.write(part.plain_frame)

    def close(self, complete: bool) -> None:
        self.writer.close()


class _CSV:
    def __init__(self, path: Path, ctx: WriteContext):
        self.path, self.ctx, self.writer = path, ctx, None

    def write(self, part: Part) -> None:
        import pyarrow.csv as pcsv

        if self.writer is None:
            self.schema = part.plain.schema
            self.writer = pcsv.CSVWriter(self.path, self.schema)
        self.writer.write_table(part.plain.cast(self.schema))

    def close(self, complete: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        elif complete:  # no cells: the header
            self.ctx.empty().drop(columns=["geometry", "nucleus_geometry"], errors="ignore").to_csv(
                self.path, index=False)


register_format(OutputFormat("geojson", "cells.geojson", _GeoJSON, description="QuPath GeoJSON"))
register_format(OutputFormat("geojson.gz", "cells.geojson.gz", lambda p, c: _GeoJSON(p, c, gzip=True),
                             description="QuPath GeoJSON, gzipped"))
register_format(OutputFormat("parquet", "cells.parquet", _Parquet, description="GeoParquet"))
register_format(OutputFormat("h5ad", "cells.h5ad", _H5ad, description="AnnData"))
register_format(OutputFormat("csv", "cells.csv", _CSV, description="the table without outlines"))
register_format(OutputFormat("zarr", "cells.zarr", description="AnnData as zarr, from the h5ad"))

#: the cell-table formats' file names (the label image and SpatialData: see slidecell.export)
OUTPUT_NAMES = {name: fmt.filename for name, fmt in FORMATS.items()}


class CellFiles:
    """The output files of a run, written together part by part from Arrow cell tables (as the
    engine's chunks hold them: geometry as WKB, optionally a ``feature`` column with each cell's
    QuPath GeoJSON ready-made, followed by a comma). Each file is written under a temporary name
    and renamed into place when the ``with`` block ends without error; on error none is."""

    def __init__(self, paths: dict[str, Path], schema, offset=(0, 0), precision: int = 3, uns: dict | None = None,
                 var=None, slide_id: str | None = None, whole_cells: bool | None = None, spatial: dict | None = None):
        from ..table import as_schema

        unknown = [f for f in paths if f not in FORMATS or FORMATS[f].open is None]
        if unknown:
            raise ValueError(f"not streamed output formats: {unknown}")
        self.paths = paths
        self.ctx = WriteContext(as_schema(schema), offset, precision, uns, var, slide_id, whole_cells, spatial)
        self.n = self.n_touch = 0

    def __enter__(self):
        self.stack = contextlib.ExitStack().__enter__()
        self.writers: list = []
        self.complete = False
        try:
            for fmt, path in self.paths.items():
                tmp = self.stack.enter_context(atomic_path(path))
                writer = FORMATS[fmt].open(tmp, self.ctx)
                self.writers.append(writer)
                self.stack.callback(lambda w=writer: w.close(self.complete))
        except BaseException:
            self.stack.__exit__(*sys.exc_info())  # as a failure: nothing renamed into place
            raise
        return self

    def __exit__(self, *exc):
        self.complete = exc[0] is None
        return self.stack.__exit__(*exc)

    def write(self, at) -> None:
        """One part, as an Arrow table."""
        import pyarrow.compute as pc

        if not at.num_rows:
            return
        self.n += at.num_rows
        self.n_touch += int(pc.sum(at.column("touches_tile_edge")).as_py() or 0)
        part = Part(at, self.ctx.slide_id)
        for w in self.writers:
            w.write(part)
