"""``slidecell export``: a finished run's cells into another format, streamed (bounded memory).

The source is the run's GeoParquet (``cells.parquet``) or, when the run did not write one, its
chunk files; the GeoJSON keeps the run's coordinates convention (bounds origin, decimals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, OutputError
from .io.label_image import LABELS_NAME, write_run_labels
from .io.spatialdata import SPATIALDATA_NAME
from .io.writers import FORMATS, OUTPUT_NAMES, CellFiles, OutputFormat, register_format
from .io.atomic import atomic_path
from .io.h5ad import run_uns, run_var, write_zarr_from_h5ad
from .plugins import load_plugins
from .records import RunDir
from .table import schema_from_columns


def _read_schema(path: Path):
    """The Arrow schema of a cell table file; a damaged file is an input error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file (truncated or damaged: {str(err)[:120]})") from None


@dataclass(frozen=True)
class RunCells:
    """A finished run, as a converted format gets it: its folder, run.json, config and its cells
    (``parts()``: Arrow tables in plan order)."""

    run_dir: Path
    record: object  # slidecell.records.RunRecord
    config: dict
    parts: object


def _parts(run_dir: Path, source: Path):
    """The run's cells as a factory of Arrow parts, and their schema: from cells.parquet, else from
    the chunk files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks = sorted((run_dir / ".slidecell" / "chunks").glob("chunk-*.parquet"))
    if source.exists():
        def parts_factory():
            return (pa.Table.from_batches([b]) for b in pq.ParquetFile(source).iter_batches(batch_size=65536))
        return parts_factory, _read_schema(source)
    if chunks:
        def parts_factory():
            return (pq.read_table(p) for p in chunks)
        return parts_factory, _read_schema(chunks[0])
    raise InputError(f"{run_dir}: neither cells.parquet nor chunk files to export from")


def _labels(run: RunCells, out: Path, **_) -> Path:
    return write_run_labels(out, run.parts, run.record.plan, run.config.get("tiling") or {})


def _zarr(run: RunCells, out: Path, **_) -> Path:
    h5ad = run.run_dir / OUTPUT_NAMES["h5ad"]
    if h5ad.exists():
        return write_zarr_from_h5ad(h5ad, out)
    with atomic_path(out.with_name(out.name + ".h5ad")) as tmp:  # removed when done
        export(run.run_dir, "h5ad", tmp, overwrite=True)
        return write_zarr_from_h5ad(tmp, out)


def export(run_dir, fmt: str, out=None, overwrite: bool = False, image: bool = True, extra=None) -> Path:
    """Write the cells of the finished run in ``run_dir`` as ``fmt`` (a registered format,
    :data:`slidecell.io.writers.FORMATS`: geojson, geojson.gz, parquet, h5ad, csv, zarr; labels (OME-TIFF
    label pyramid) or spatialdata (image + shapes + table; ``image=False`` leaves the image out)) to ``out`` (default: the
    format's file name in ``run_dir``). ``extra``: columns to add to the table files, a DataFrame
    indexed by cell id (e.g. ``class``, which GeoJSON writes as the QuPath classification).
    Returns the path written."""
    import pyarrow as pa

    run_dir = Path(run_dir)
    load_plugins()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run = RunDir(run_dir)
    record, cfg = run.record(), run.config()
    precision = (cfg.get("output") or {}).get("geojson_precision", 3)
    offset = tuple(record.reader.get("bounds_offset") or (0, 0))
    out = Path(out) if out is not None else run_dir / FORMATS[fmt].filename
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")
    source = run_dir / OUTPUT_NAMES["parquet"]
    if source.exists() and source.resolve() == out.resolve():
        raise OutputError(f"{out}: is the source of the export")
    parts_factory, schema = _parts(run_dir, source)
    if FORMATS[fmt].open is None:  # made from the finished run, not streamed
        return FORMATS[fmt].convert(RunCells(run_dir, record, cfg, parts_factory), out, image=image)
    uns = run_uns(record, cfg, record.slidecell_version)
    spatial = None
    if fmt == "h5ad" and ((cfg.get("output") or {}).get("tissue_image", True)):
        from .io.tissue_image import from_run

        spatial = from_run(record)  # the tissue images, as the run writes them
    with CellFiles({fmt: out}, schema_from_columns(schema.names), offset, precision, uns, run_var(record),
                   record.slide_id, record.whole_cells, spatial=spatial) as files:
        for part in parts_factory():
            if extra is not None:
                ids = part.column("cell_id").to_pandas()
                for col in extra.columns:
                    part = part.append_column(col, pa.array(extra[col].reindex(ids).to_numpy()))
            files.write(part)
    return out


def _spatialdata(run: RunCells, out: Path, image: bool = True) -> Path:
    """The run's h5ad and GeoParquet (exported to temporary files when the run did not write
    them) into a SpatialData store."""
    from .io.spatialdata import write_spatialdata

    run_dir = run.run_dir
    made = []
    try:
        sources = []
        for fmt in ("h5ad", "parquet"):
            path = run_dir / OUTPUT_NAMES[fmt]
            if not path.exists():
                path = out.with_name(f".tmp-{out.name}.{fmt}")
                made.append(path)
                export(run_dir, fmt, path, overwrite=True)
            sources.append(path)
        return write_spatialdata(run_dir, out, *sources, image=image)
    finally:
        for p in made:
            p.unlink(missing_ok=True)


register_format(OutputFormat("zarr", OUTPUT_NAMES["zarr"], convert=_zarr, description="AnnData as zarr"))
register_format(OutputFormat("labels", LABELS_NAME, convert=_labels, description="label image (OME-TIFF pyramid)"))
register_format(OutputFormat("spatialdata", SPATIALDATA_NAME, convert=_spatialdata, description="SpatialData store"))

__all__ = ["export", "RunCells"]
