"""The output stream: GeoJSON, GeoParquet and h5ad written from the chunk files in plan order,
in a thread, while the run goes on."""

from __future__ import annotations

import time
from pathlib import Path

from .. import __version__
from ..config import Config
from ..errors import ConfigError, OutputError
from ..io import SlideReader
from ..io.h5ad import run_uns
from ..io.writers import FORMATS, OUTPUT_NAMES, CellFiles
from ..records import as_record
from ..tiling import TilePlan
from .runfolder import WORK_DIR


def streamed_formats(cfg: Config) -> list[str]:
    """The formats of ``output.formats`` streamed with the others (the rest are converted from the
    finished run)."""
    return [f for f in extra_formats(cfg) if FORMATS[f].open is not None]


def extra_formats(cfg: Config) -> list[str]:
    """``output.formats``, each checked against the registry (plug-ins loaded first)."""
    from ..plugins import load_plugins

    load_plugins()
    unknown = [f for f in cfg.output.formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"output.formats: unknown format(s) {unknown}; registered: {', '.join(FORMATS)}")
    return list(cfg.output.formats)


def converted_outputs(out: Path, cfg: Config) -> dict[str, Path]:
    """The formats of ``output.formats`` made from the finished run in ``out`` (after run.json)."""
    from ..export import export

    return {f: export(out, f, overwrite=True) for f in extra_formats(cfg) if FORMATS[f].open is None}


def output_paths(cfg: Config, out: Path) -> dict[str, Path]:
    """The files a run writes, by format, as the config's ``output`` section asks."""
    o = cfg.output
    fmts = [f for f, on in (("geojson.gz" if o.geojson_gzip else "geojson", o.geojson), ("parquet", o.parquet),
                            ("h5ad", o.h5ad), ("csv", o.csv)) if on]
    paths = {f: out / OUTPUT_NAMES[f] for f in fmts}
    paths.update({f: out / FORMATS[f].filename for f in streamed_formats(cfg)})
    if o.zarr and not o.h5ad:  # the zarr store is converted from an h5ad kept in the work folder
        paths["h5ad"] = out / WORK_DIR / OUTPUT_NAMES["h5ad"]
    return paths


class OutputStream:
    """Writes GeoJSON, GeoParquet and h5ad from the chunk files in plan order, in a thread, as
    the chunks are finished (:meth:`feed`), one chunk in memory at a time. For a backend that is
    not tile-exact they wait for the last chunk, and :class:`~slidecell.stitch.SeamResolver`
    names the duplicates to leave out. Every file is written
    under a temporary name and renamed into place only by :meth:`finish` once all chunks are in;
    if the run fails (or is killed) the partial files are removed (or swept at the next start)."""

    def __init__(self, chunks: list[Path], out: Path, cfg: Config, reader: SlideReader, info: dict, schema,
                 plan: TilePlan, tile_exact: bool = True):
        import queue
        import threading

        from ..stitch import SeamResolver

        self.chunks, self.out, self.cfg, self.schema = chunks, out, cfg, schema
        self.offset = reader.bounds_offset
        record = as_record(info)
        self.var, self.slide_id = reader.channel_table(), record.slide_id
        self.uns = run_uns(record, cfg.model_dump(mode="json"), __version__)
        self.outputs = output_paths(cfg, out)
        self.spatial = None
        if cfg.output.tissue_image and "h5ad" in self.outputs:  # the tissue under squidpy's plots
            from ..io.tissue_image import nuclear_channels, tissue_images

            self.spatial = tissue_images(reader, record.modality, nuclear_channels(record, reader.channel_names))
        #: the guard behind the ownership rule: no two cells of different tiles on the same spot
        self.seams = None if tile_exact else SeamResolver(plan)
        self.dropped_ids: set = set()
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="slidecell-outputs", daemon=True)
        self.error: BaseException | None = None
        self.result = None
        self.busy = 0.0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.thread.is_alive():  # the run failed: abandon the partial outputs
            self.queue.put("abort")
            self.thread.join()

    def feed(self, k: int) -> None:
        self.queue.put(k)

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def _work(self) -> None:
        try:
            self.result = self._write()
        except BaseException as err:  # noqa: BLE001  (re-raised in the run's thread by finish)
            self.error = err

    def _write(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..stitch import without

        ready, nxt = set(), 0
        with CellFiles(self.outputs, self.schema, self.offset, self.cfg.output.geojson_precision, self.uns, self.var,
                       self.slide_id, spatial=self.spatial) as files:
            while True:
                item = self.queue.get()
                if item == "abort":
                    raise OutputError(f"{self.out}: run stopped before all tiles were done; outputs not written")
                if item is None:
                    break
                ready.add(item)
                if self.seams is not None:  # the outputs wait for every chunk (duplicates resolved first)
                    continue
                while nxt in ready:
                    t0 = time.perf_counter()
                    files.write(pq.read_table(self.chunks[nxt]))
                    nxt += 1
                    self.busy += time.perf_counter() - t0
            if self.seams is not None and len(ready) == len(self.chunks):
                t0 = time.perf_counter()
                self.dropped_ids = self.seams.resolve(self.chunks)
                dropped = pa.array(sorted(self.dropped_ids), pa.string())
                for path in self.chunks:
                    files.write(without(pq.read_table(path), dropped))
                nxt = len(self.chunks)
                self.busy += time.perf_counter() - t0
            if nxt != len(self.chunks):
                raise OutputError(f"{self.out}: chunk {nxt} missing; outputs not written")
        return self.outputs, files.n, files.n_touch
