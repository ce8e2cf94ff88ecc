"""``slidecell run``: a slide in, every cell out. Opens the slide, checks the region, takes the run
folder (resuming an unfinished run of the same slide and config), runs the engine's four steps
and then, when the config has an ``analysis`` section, the analysis stage."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import shapely

from .. import __version__
from ..config import Config, load_config
from ..errors import ConfigError, OutputError, StorageError, storage_problem
from ..fingerprint import input_digests, slide_fingerprint
from ..io import SlideReader, open_slide
from ..io.atomic import write_text_atomic
from ..io.h5ad import write_zarr_from_h5ad
from ..io.label_image import LABELS_NAME
from ..io.writers import OUTPUT_NAMES
from ..measure import MeasureSpec, estimate_stains
from ..progress import RunProgress
from ..records import CONFIG_FILE, RUN_FILE, RunRecord, as_record
from ..segment import get_segmenter
from ..tiling import WINDOW_ALIGN, TileStream, detect_tissue, plan_tiles, slide_modality, working_mpp
from .cells import TileContext
from .chunks import chunk_rows
from .cluster import run_dask
from .outputs import OutputStream, converted_outputs, extra_formats
from .pipeline import Pipeline
from .plan import calibration_windows, check_memory, check_region, growth_context
from .runfolder import WORK_DIR, RunFolder, analysis_pending, drop_chunks, manifest_key, provenance
from .stage import analysis_stage

#: step-by-step figures (`slidecell --verbose`)
log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out_dir: Path
    n_cells: int
    n_tiles: int
    outputs: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)
    resumed_chunks: int = 0
    info: dict = field(default_factory=dict)


def run(
    slide,
    config: Config | str | Path | None = None,
    out: str | Path = "slidecell-out",
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    roi=None,
    annotations: str | Path | None = None,
    annotation_classes=None,
    progress: bool = True,
) -> RunResult:
    """Segment and measure every cell of ``slide`` and write the outputs to ``out``.

    ``config`` is a :class:`Config`, a YAML path or a preset name (``None``: defaults). ``mpp``
    supplies/overrides the slide's pixel size. ``roi`` (a shapely geometry in level-0 pixels)
    restricts the run; ``config.roi`` gives a box; ``annotations`` (a QuPath GeoJSON file, in
    QuPath's coordinates) restricts it to the union of its annotations, or of those of
    ``annotation_classes``. Raises :class:`slidecell.errors.SlidecellError` subclasses for every
    problem with the inputs."""
    t_start = time.perf_counter()
    cfg = config if isinstance(config, Config) else load_config(config)
    slide = Path(slide)
    out = Path(out)
    with open_slide(slide, mpp=mpp, reader=cfg.reader.backend, markers=cfg.reader.markers) as reader:
        if annotations is not None:
            from ..io.qupath import annotation_region

            region = annotation_region(annotations, reader.bounds_offset, annotation_classes)
            roi = region if roi is None else roi.intersection(region)
        _ = reader.mpp  # a missing pixel size is reported before the output folder is touched
        if roi is None and cfg.roi is not None:
            x, y, w, h = cfg.roi
            roi = shapely.box(x, y, x + w, y + h)
        check_region(roi, reader, slide)
        if not overwrite and analysis_pending(out, cfg):
            # a finished run whose analysis stage is not complete: only that stage runs (again)
            with RunFolder(out, finished_ok=True):
                record = RunRecord.read(out / RUN_FILE)
                outputs = {k: out / v for k, v in record.outputs.items()}
                result = RunResult(out, record.n_cells, record.n_tiles, outputs, record.timings_s, 0, record.info())
                result.outputs.update(analysis_stage(out, cfg, outputs))
                drop_chunks(out, cfg)
            return result
        try:
            with RunFolder(out, overwrite) as folder:
                result = _Run(reader, slide, cfg, out, mpp, roi, progress, t_start, annotations).execute()
                folder.commit()
                result.outputs.update(converted_outputs(out, cfg))
                if cfg.analysis is not None:
                    result.outputs.update(analysis_stage(out, cfg, result.outputs))
                drop_chunks(out, cfg)
        except OSError as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            raise StorageError(f"{out}: {problem} while writing the run; the finished chunks are kept: make room "
                               "and run the same command again to resume") from exc
        return result


def measure_objects(measure: MeasureSpec) -> str:
    return "whole cells" if measure.whole_cells else measure.objects


def _short(state: dict) -> str:
    """A segmenter's slide-level values, briefly."""
    text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in state.items())
    if not text:
        return "no slide-level values"
    return text if len(text) < 160 else text[:157] + "..."


class _Run:
    """One run of the engine on an open slide, in four steps: :meth:`plan` (tissue, modality,
    segmenter, tiles, what is measured), :meth:`calibrate` (slide-level values, or those of the
    unfinished run being resumed), :meth:`segment` (the chunks, with the outputs streamed from them)
    and :meth:`finish` (label image, SpatialData, run.json)."""

    def __init__(self, reader: SlideReader, slide: Path, cfg: Config, out: Path, mpp, roi, progress: bool,
                 t_start: float, annotations=None):
        self.reader, self.slide, self.cfg, self.out = reader, slide, cfg, out
        self.mpp_override, self.roi, self.progress, self.t_start = mpp, roi, progress, t_start
        self.annotations = annotations
        self.work = out / WORK_DIR
        self.timings: dict[str, float] = {"read_wait": 0.0, "model": 0.0, "post": 0.0, "write_chunks": 0.0,
                                          "retry": 0.0}
        self.warnings: list[str] = []

    def execute(self) -> RunResult:
        self.plan()
        with TileStream(self.reader, self.tile_plan, self.cfg.reader.workers, self.cfg.reader.prefetch,
                        self.cfg.reader.parallel) as stream:
            self.calibrate(stream)
            outputs, n_cells, n_touch = self.segment(stream)
        return self.finish(outputs, n_cells, n_touch)

    def plan(self) -> None:
        cfg, reader, roi = self.cfg, self.reader, self.roi
        t0 = time.perf_counter()
        extra_formats(cfg)  # an unknown output format is refused before any tile is read
        self.tissue = None
        if cfg.tissue.enabled:
            self.tissue = detect_tissue(reader, cfg.tissue.thumbnail_mpp, cfg.tissue.modality,
                                        cfg.tissue.min_area_um2, cfg.tissue.threshold)
            modality = self.tissue.modality
        elif cfg.tissue.modality == "auto":
            modality = slide_modality(reader, cfg.tissue.thumbnail_mpp)
        else:
            modality = cfg.tissue.modality
        mpp = working_mpp(reader, cfg.tiling.mpp, cfg.tiling.snap_tolerance)
        t_model = time.perf_counter()
        self.segmenter = segmenter = get_segmenter(cfg.segmentation.backend, cfg.segmentation.params,
                                                   reader.channel_names, modality, mpp,
                                                   cfg.segmentation.nuclear_channels)
        t_model = time.perf_counter() - t_model
        # windows on the tiling's alignment, or the coarser period the backend's network needs, with at
        # least the context it needs
        t = cfg.tiling
        self.tile_plan = plan = plan_tiles(
            reader, t.mpp, tile_size=t.tile_size, overlap_um=t.overlap_um, snap_tolerance=t.snap_tolerance,
            tissue=self.tissue, min_tissue_fraction=cfg.tissue.min_fraction, roi=roi,
            align=math.lcm(WINDOW_ALIGN, segmenter.align), offset=tuple(t.grid_offset),
            min_overlap=max(segmenter.context, growth_context(cfg.segmentation, mpp)))
        self.timings["plan"] = time.perf_counter() - t0 - t_model  # tissue and tiles, not the model's loading
        objects = segmenter.objects
        if cfg.segmentation.objects != "auto":
            if objects == "cells+nuclei":
                raise ConfigError(f"segmentation.objects: {cfg.segmentation.backend} returns cells and nuclei; "
                                  "leave it at auto")
            objects = cfg.segmentation.objects
        self.measure = MeasureSpec.from_config(cfg.measure, reader.channel_names, cfg.segmentation.cell_expansion_um,
                                               plan.mpp, source_labels=segmenter.labels_are_ids, objects=objects,
                                               confidence=segmenter.confidence, modality=modality,
                                               growth=cfg.segmentation.cell_growth)
        self.modality = modality
        segmenter.locate(plan, reader.dimensions)
        self.need_bytes = check_memory(plan, reader, segmenter, cfg)
        log.info("plan: %d tiles of %d px at %.3f µm/px (%s, tissue %s), windows on a %d-px grid; backend %s "
                 "(%s); memory estimate %.1f GiB; %.1f s", len(plan.tiles), plan.tile_size, plan.mpp, modality,
                 f"{self.tissue.tissue_fraction:.0%}" if self.tissue is not None else "not detected", plan.align,
                 segmenter.name, measure_objects(self.measure), self.need_bytes / 2**30, self.timings["plan"])
        self.fingerprint = slide_fingerprint(self.slide)
        self.manifest = {
            "slidecell_version": __version__,
            "slide": self.fingerprint,
            "config_fingerprint": cfg.fingerprint(),
            "mpp_override": self.mpp_override,
            "roi_wkt": roi.wkt if roi is not None else None,
            "plan": plan.summary(),
            # chunks hold GeoJSON features made with these settings
            "geojson": [cfg.output.geojson, cfg.output.geojson_precision],
            # what the files the run reads hold (weights, masks, markers), not just where they are
            "channels": list(reader.channel_names),
            "input_files": input_digests(segmenter, reader, self.annotations),
        }

    def calibrate(self, stream) -> None:
        """The segmenter's slide-level values and the stain vectors: fitted on calibration windows,
        or those recorded by the unfinished run of the same slide and config being resumed."""
        cfg, manifest = self.cfg, self.manifest
        manifest_path = self.work / "manifest.json"
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            if {k: old.get(k) for k in manifest} != manifest:
                diff = [k for k in manifest if old.get(k) != manifest[k]]
                raise OutputError(
                    f"{self.out}: holds an unfinished run of a different slide or config (differs in: "
                    f"{', '.join(diff)}); refusing to mix results: pass --overwrite or choose another --out"
                )
            self.segmenter.state = old["segmenter_state"]
            log.info("calibrate: the unfinished run's, reused (%s)", _short(self.segmenter.state))
            stains = old.get("stain_vectors")
            scales = old.get("membrane_scales")
        else:
            t0 = time.perf_counter()
            windows = calibration_windows(self.tile_plan, self.tissue, self.roi, min_fraction=cfg.tissue.min_fraction)
            samples = [img for _, img in stream(windows)]
            self.segmenter.calibrate(samples)
            scales = self.measure.membrane_scales(samples) or None  # cells grown along membranes
            stains = None
            if cfg.measure.stains == "estimate" and self.measure.stains:  # the slide's own stain vectors
                stains = estimate_stains(samples, background=self.measure.stain_background)
                if stains is None:
                    self.warnings.append("measure.stains: too few stained pixels to estimate the stain vectors; "
                                         "QuPath's default H&E vectors used")
            del samples
            self.timings["calibrate"] = time.perf_counter() - t0
            log.info("calibrate: %d windows, %.1f s (%s)", len(windows), self.timings["calibrate"],
                     _short(self.segmenter.state))
            manifest["segmenter_state"] = self.segmenter.state
            manifest["stain_vectors"] = stains
            manifest["membrane_scales"] = scales
            manifest["modality"] = self.modality
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
        if stains:
            self.measure = self.measure.with_stains(stains)
        if scales:  # run.json's cell_growth records them
            self.measure = self.measure.with_membrane_scales(scales)

    def _context(self) -> TileContext:
        plan, reader, roi = self.tile_plan, self.reader, self.roi
        return TileContext(
            slide_key=self.fingerprint["sha256_head_tail"][:16], scale=plan.scale, mpp0=reader.mpp,
            width=plan.width, height=plan.height, channel_names=tuple(reader.channel_names),
            measure=self.measure,
            roi_wkb=shapely.to_wkb(roi) if roi is not None else None,
            geojson=(*reader.bounds_offset, self.cfg.output.geojson_precision) if self.cfg.output.geojson else None,
        )

    def _info(self) -> dict:
        """What run.json says about the slide, the plan and the segmentation."""
        cfg, measure, plan = self.cfg, self.measure, self.tile_plan
        return {
            "slide": str(self.slide.resolve()),
            "reader": self.reader.describe(),
            "modality": self.modality,
            "plan": plan.summary(),
            "tissue_fraction": self.tissue.tissue_fraction if self.tissue is not None else None,
            "config_name": cfg.name,
            "config_fingerprint": cfg.fingerprint(),
            "segmentation_backend": cfg.segmentation.backend,
            "segmentation": self.segmenter.describe(),
            "segmenter_state": self.segmenter.state,
            # the stains measured (QuPath's "Estimate stain vectors" values: name, unit r, g, b)
            "stain_vectors": [[k, list(v)] for k, v in measure.stain_vectors] or None,
            "input_files": self.manifest["input_files"],
            "memory_estimate_gib": round(self.need_bytes / 2**30, 2),
            "warnings": self.warnings,
            # what the objects are (names the QuPath measurements Cell: / Nucleus:)
            "objects": measure.objects, "whole_cells": measure.whole_cells,
            # how nuclei became cells: the distance, and the membrane channels followed
            "cell_growth": measure.describe_growth(plan.mpp),
        }

    def chunk_path(self, k: int) -> Path:
        return self.work / "chunks" / f"chunk-{k:06d}.parquet"

    def segment(self, stream):
        """Every chunk not finished yet, locally or on Dask; the outputs are written from the
        chunks, in order, while the run goes on. Returns (outputs, cells, cells touching a tile's
        edge)."""
        cfg, plan, segmenter = self.cfg, self.tile_plan, self.segmenter
        ctx = self._context()
        chunk_size = cfg.tiling.chunk_tiles
        self.n_chunks = n_chunks = (len(plan.tiles) + chunk_size - 1) // chunk_size
        done = [k for k in range(n_chunks) if self.chunk_path(k).exists()]
        pending_tiles = [t for k in range(n_chunks) if k not in done
                         for t in plan.tiles[k * chunk_size:(k + 1) * chunk_size]]
        self.resumed = len(done)
        log.info("segment: %d tiles in %d chunks of %d (%d chunks already done)%s", len(pending_tiles),
                 n_chunks - len(done), chunk_size, len(done), " on Dask" if cfg.engine.scheduler else "")
        self.info = info = self._info()
        self.writer = writer = OutputStream([self.chunk_path(k) for k in range(n_chunks)], self.out, cfg, self.reader,
                                            info, self.measure.schema(), plan, segmenter.tile_exact)
        self.pipe = pipe = Pipeline(self.reader, plan, segmenter, ctx, cfg, self.chunk_path, self.timings,
                                    on_chunk=writer.feed)
        bar = RunProgress(len(plan.tiles), min(self.resumed * chunk_size, len(plan.tiles)), enabled=self.progress,
                          label="segmenting (dask)" if cfg.engine.scheduler else "segmenting",
                          interval=cfg.engine.progress_interval_s, start=self.t_start)
        bar.cells = sum(chunk_rows(self.chunk_path(k)) for k in done)
        with writer, bar:
            for k in done:
                writer.feed(k)
            if cfg.engine.scheduler:
                job = {"key": manifest_key(self.manifest), "reader": self.reader.spec(),
                       "backend": cfg.segmentation.backend, "params": cfg.segmentation.params,
                       "nuclear_channels": cfg.segmentation.nuclear_channels, "modality": self.modality,
                       "state": segmenter.state, "plan": plan, "ctx": ctx, "max_overlap": pipe.max_overlap}
                chunks = [(k, plan.tiles[k * chunk_size:(k + 1) * chunk_size]) for k in range(n_chunks) if k not in done]
                pipe.retried = run_dask(cfg, chunks, job, self.chunk_path, writer.feed, self.timings, bar)
            else:
                pipe.run(stream, pending_tiles, bar)
            t0 = time.perf_counter()
            outputs, n_cells, n_touch = writer.finish()
            if cfg.output.zarr:
                outputs["zarr"] = write_zarr_from_h5ad(outputs["h5ad"], self.out / OUTPUT_NAMES["zarr"])
                if not cfg.output.h5ad:
                    outputs.pop("h5ad").unlink()
            self.timings["outputs_after_last_tile"] = time.perf_counter() - t0
        t = self.timings
        log.info("segmented: %d cells; model %.1f s, post-processing %.1f s, waiting for reads %.1f s; outputs (%s) "
                 "%.1f s after the last tile", n_cells, t["model"], t["post"], t["read_wait"], ", ".join(outputs),
                 t["outputs_after_last_tile"])
        return outputs, n_cells, n_touch

    def _extra_outputs(self, outputs: dict) -> None:
        """The outputs made from the finished ones: the label image, the SpatialData store."""
        cfg, out, timings = self.cfg, self.out, self.timings
        if cfg.output.label_image:
            import pyarrow as pa
            import pyarrow.parquet as pq

            from ..io.label_image import write_run_labels
            from ..stitch import without

            t0 = time.perf_counter()
            chunk_files = [self.chunk_path(k) for k in range(self.n_chunks)]
            dropped = pa.array(sorted(self.writer.dropped_ids), pa.string())
            outputs["labels"] = write_run_labels(out / LABELS_NAME,  # the chunks less the duplicates left out
                                                 lambda: (without(pq.read_table(c), dropped) for c in chunk_files),
                                                 self.tile_plan.summary(), cfg.tiling.model_dump(mode="json"))
            timings["label_image"] = time.perf_counter() - t0
        if cfg.output.spatialdata:  # from the h5ad and GeoParquet just written
            from ..io.spatialdata import SPATIALDATA_NAME, write_spatialdata

            t0 = time.perf_counter()
            outputs["spatialdata"] = write_spatialdata(out, out / SPATIALDATA_NAME, outputs["h5ad"], outputs["parquet"],
                                                       record=as_record({**self.info, "slide": str(self.slide)}))
            timings["spatialdata"] = time.perf_counter() - t0

    def finish(self, outputs: dict, n_cells: int, n_touch: int) -> RunResult:
        """The outputs made from the finished ones, then run.json: written last, it marks the run
        complete."""
        cfg, plan, timings = self.cfg, self.tile_plan, self.timings
        self._extra_outputs(outputs)
        if n_cells == 0:
            where = "the region (ROI or annotations)" if self.roi is not None else "the slide"
            why = "no tissue was found in it" if not plan.tiles else "the segmentation found none in its tissue"
            self.warnings.append(f"no cells: {why} ({where}; see tissue.* and segmentation.* in the config)")
        timings["write_outputs"] = self.writer.busy
        timings["total"] = time.perf_counter() - self.t_start
        summary = {
            "status": "complete",
            "slidecell_version": __version__,
            "n_cells": n_cells,
            "n_tiles": len(plan.tiles),
            "cells_touching_tile_edge": n_touch,
            # tiles (in this invocation) read again with more context: they own a cell larger than the overlap
            "tiles_reread_for_large_cells": self.pipe.retried,
            # cells a second tile also drew (overlapping one kept by the tile owning the overlap)
            "duplicates_dropped": self.writer.seams.dropped if self.writer.seams is not None else None,
            "resumed_chunks": self.resumed,
            "outputs": {k: str(v.name) for k, v in outputs.items()},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            **self.info,
            "slide_fingerprint": self.fingerprint,
            "roi_wkt": self.manifest["roi_wkt"],
            "provenance": provenance(time.time() - (time.perf_counter() - self.t_start)),
        }
        if cfg.analysis is not None:  # the cells are complete; the analysis stage comes next
            summary["analysis_stage"] = {"status": "pending"}
        record = RunRecord.model_validate(summary)
        write_text_atomic(self.out / CONFIG_FILE, cfg.to_yaml())
        record.write(self.out / RUN_FILE)  # last: marks complete
        log.info("complete: %s (%.1f s)", self.out / RUN_FILE, timings["total"])
        return RunResult(self.out, n_cells, len(plan.tiles), outputs, timings, self.resumed, record.info())
