"""Run configuration: validated YAML data.

Every key is checked; unknown keys and bad values are reported with their dotted name, the
value given and what was expected. Presets live in the repository's ``configs/`` folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from .errors import ConfigError
from .schema import Strict, deep_merge, read_yaml, validate

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ReaderConfig(Strict):
    #: force a reader; "auto" picks by format (see slidecell.io.open_slide)
    backend: Literal["auto", "openslide", "tiffslide", "tifffile", "image", "imc-txt", "channel-folder"] = "auto"
    #: parallel tile readers
    workers: int = Field(2, ge=1, le=64)
    #: tiles read ahead of the consumer (bounds memory: prefetch × tile bytes)
    prefetch: int = Field(4, ge=1, le=256)
    #: "auto" uses the reader's preference (threads, measured fastest on every reader here)
    parallel: Literal["auto", "threads", "processes"] = "auto"
    #: a markers.csv (MCMICRO: ``marker_name`` column, one row per channel) or panel.csv
    #: (steinbock: ``channel`` metal → ``name``) renaming the channels; null: a markers.csv beside
    #: the image if there is one; false: never
    markers: str | Literal[False] | None = None


class TilingConfig(Strict):
    #: working resolution in µm per pixel
    mpp: float = Field(0.5, gt=0, le=100)
    #: use a pyramid level's own resolution instead of resampling when it is this close (relative)
    snap_tolerance: float = Field(0.05, ge=0, le=0.5)
    #: tile core size in working pixels (read windows are aligned to the network's poolings
    #: whatever the size, so the cells do not depend on the tiling)
    tile_size: int = Field(1024, ge=64, le=16384)
    #: context added on each side of a tile core. The built-in network's output is bit-identical
    #: beyond 96 px (48 µm at 0.5 µm/px) from a window edge and differs slightly closer to it;
    #: 64 µm keeps every cell within 16 µm of a seam in the identical zone of both tiles, so both
    #: see the same cell and exactly one owns it (RESULTS.md: seams)
    overlap_um: float = Field(64.0, ge=0, le=1000)
    #: a tile that owns a cell reaching the edge of its read window (a cell larger than the
    #: overlap) is read again with twice the overlap, up to this much; cells still cut are kept
    #: and flagged (``touches_tile_edge``) and counted in run.json
    max_overlap_um: float = Field(160.0, ge=0, le=4000)
    #: shift of the tile grid in working pixels (core boundaries at offset + k × tile_size)
    grid_offset: tuple[int, int] = (0, 0)
    #: tiles per result chunk (the unit of resumption)
    chunk_tiles: int = Field(16, ge=1, le=100000)


class EngineConfig(Strict):
    """How the work is spread over this machine (does not change the cells)."""

    #: threads that post-process model output into measured cell outlines while the model runs
    #: on the next batch (0: in the model's thread)
    post_workers: int = Field(1, ge=0, le=64)
    #: "processes" sidesteps Python's GIL (measured 1.9× vs 1.5× with two workers) at the cost of
    #: sending each tile's model output to a worker; worth it with several free cores (GPU runs)
    post_parallel: Literal["threads", "processes"] = "threads"
    #: tiles waiting for post-processing at most (bounds memory)
    queue: int = Field(8, ge=1, le=1024)
    #: run the chunks on a Dask cluster: "local" (a LocalCluster of ``dask_workers`` processes
    #: on this machine) or a scheduler address (tcp://host:8786; the output folder must be on a
    #: filesystem the workers share); null: this process
    scheduler: str | None = None
    dask_workers: int = Field(2, ge=1, le=1024)
    #: threads each Dask worker gives the model (Dask starts workers with OMP_NUM_THREADS=1);
    #: null: this machine's cores / ``dask_workers`` for "local", unchanged on a remote cluster
    dask_threads: int | None = Field(None, ge=1, le=1024)
    #: seconds between progress lines when stderr is not a terminal (a log file, SLURM, Snakemake)
    progress_interval_s: float = Field(10.0, gt=0, le=3600)


class TissueConfig(Strict):
    enabled: bool = True
    #: "auto" decides from the image: dark background means fluorescence
    modality: Literal["auto", "brightfield", "fluorescence"] = "auto"
    #: resolution of the thumbnail the mask is computed on
    thumbnail_mpp: float = Field(8.0, gt=0)
    #: a tile is processed when at least this fraction of its core is tissue
    min_fraction: float = Field(0.01, ge=0, le=1)
    #: tissue pieces smaller than this are ignored (dust, debris)
    min_area_um2: float = Field(5000.0, ge=0)
    #: fixed threshold on the tissue signal instead of Otsu (optical density for brightfield,
    #: normalised log intensity for fluorescence)
    threshold: float | None = None


class CellGrowthConfig(Strict):
    """How nuclei grow into whole cells (up to ``cell_expansion_um``)."""

    #: ``distance``: each pixel within the distance goes to its nearest nucleus (QuPath's cell
    #: expansion); ``membrane``: a seeded watershed on the membrane channels, so that a cell's edge
    #: settles on its membrane where one is stained (and half-way between nuclei where none is),
    #: still within ``cell_expansion_um`` of its nucleus
    method: Literal["distance", "membrane"] = "distance"
    #: with ``membrane``: the membrane marker(s) by name, averaged (each scaled by its slide-level
    #: 99th percentile); empty: those named like one (slidecell.segment.channels.MEMBRANE_NAME)
    membrane_channels: list[str] = Field(default_factory=list)
    #: Gaussian smoothing of the membrane signal, sigma in µm
    smooth_um: float = Field(1.0, ge=0, le=10)
    #: skimage's compact watershed (per working pixel, on the scaled signal): larger values pull the
    #: edges towards the distance split. This and ``smooth_um`` were chosen on the IMC cytomapper
    #: crops (benchmarks/membrane_growth.py)
    compactness: float = Field(0.01, ge=0)


class SegmentationConfig(Strict):
    #: a registered backend (slidecell.segment.BACKENDS)
    backend: str = "builtin"
    #: channels holding the nuclear signal (DAPI, Hoechst, Ir191...); empty: chosen automatically
    #: (haematoxylin by colour deconvolution for brightfield RGB)
    nuclear_channels: list[str] = Field(default_factory=list)
    #: backend parameters, validated by the backend
    params: dict[str, Any] = Field(default_factory=dict)
    #: whole cells: grow each nucleus by this many µm, each pixel going to its nearest nucleus
    #: without overlaps (QuPath's cell expansion); 0: the objects are the nuclei
    cell_expansion_um: float = Field(0.0, ge=0, le=100)
    #: how the nuclei grow into cells: by distance (the default) or along the membrane markers
    cell_growth: CellGrowthConfig = Field(default_factory=CellGrowthConfig)
    #: what the backend's objects are: "auto" (as the backend says: nuclei for the built-in
    #: model, cells for Cellpose with ``params.cell_channels``), nuclei, or cells (e.g. a
    #: whole-cell mask); names the compartment of ``X`` (Cell/Nucleus)
    objects: Literal["auto", "nuclei", "cells"] = "auto"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from .plugins import load_plugins
        from .segment import BACKENDS

        load_plugins()
        if v not in BACKENDS:
            raise ValueError(f"unknown segmentation backend; choose one of {sorted(BACKENDS)}")
        return v


class MeasureConfig(Strict):
    """Per-cell intensities: which markers, compartments and statistics. The mean over the
    cell (the nucleus when there are no whole cells) is always measured: it is AnnData's ``X``;
    every other compartment × statistic is a layer."""

    #: markers to measure, by name; empty: every channel
    channels: list[str] = Field(default_factory=list)
    #: compartments measured: cell, nucleus, cytoplasm (cell minus nucleus), membrane (the
    #: cell's inner ring of ``membrane_um``); cytoplasm and a separate nucleus need whole cells
    compartments: list[Literal["cell", "nucleus", "cytoplasm", "membrane"]] = Field(default_factory=lambda: ["cell"])
    #: statistics per compartment and marker (mean is fast; median/min/max sort the pixels)
    statistics: list[Literal["mean", "median", "sum", "std", "min", "max"]] = Field(default_factory=lambda: ["mean"])
    #: percentiles per compartment and marker (numpy's linear interpolation), e.g. [90, 99]
    percentiles: list[float] = Field(default_factory=list)
    #: width of the membrane ring
    membrane_um: float = Field(1.0, gt=0, le=20)
    #: brightfield stains measured as mean optical density per compartment (QuPath's
    #: ``Nucleus: Hematoxylin OD mean``...): "auto" (H&E for an RGB brightfield slide, none
    #: otherwise), "H&E" or "H-DAB" (QuPath's default vectors), "estimate" (H&E vectors estimated
    #: on the slide's calibration tiles, as QuPath's "Estimate stain vectors"; recorded in
    #: run.json), "none", or the vectors by name, e.g. ``{Hematoxylin: [0.63, 0.68, 0.37], Eosin:
    #: [0.18, 0.82, 0.54]}`` (two or three stains)
    stains: Literal["auto", "none", "H&E", "H-DAB", "estimate"] | dict[str, list[float]] = "auto"
    #: the slide's background (white) RGB for the optical densities; null: 255, 255, 255
    stain_background: list[float] | None = None

    @field_validator("stains")
    @classmethod
    def _stains(cls, v):
        if isinstance(v, dict):
            import re

            bad = [k for k in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", k)]
            if bad:
                raise ValueError(f"stain names {bad}: letters, digits, '_', '.', '-' only (they name columns)")
            if not 2 <= len(v) <= 3 or any(len(x) != 3 or not all(c >= 0 for c in x) or sum(x) <= 0 for x in v.values()):
                raise ValueError("give two or three stains, each as three non-negative numbers (r, g, b)")
        return v

    @field_validator("stain_background")
    @classmethod
    def _background(cls, v):
        if v is not None and (len(v) != 3 or not all(0 < c <= 65535 for c in v)):
            raise ValueError("three positive values (r, g, b)")
        return v

    @field_validator("percentiles")
    @classmethod
    def _pcts(cls, v):
        if any(not 0 <= q <= 100 for q in v):
            raise ValueError("percentiles must be between 0 and 100")
        return sorted(set(float(q) for q in v))


class OutputConfig(Strict):
    #: QuPath GeoJSON (cells.geojson, or cells.geojson.gz with ``geojson_gzip``)
    geojson: bool = True
    geojson_gzip: bool = False
    #: GeoParquet of every cell with every measurement
    parquet: bool = True
    #: AnnData
    h5ad: bool = True
    #: AnnData as zarr (cells.zarr), converted from the h5ad at the end of the run
    zarr: bool = False
    #: the cell table without outlines, as CSV
    csv: bool = False
    #: instance label image (cells_labels.ome.tif: tiled pyramidal OME-TIFF at the working
    #: resolution; label k = row k - 1 of the tables)
    label_image: bool = False
    #: decimals kept for polygon coordinates in GeoJSON (level-0 pixels)
    geojson_precision: int = Field(3, ge=0, le=6)
    #: a SpatialData store (cells.spatialdata.zarr: the multiscale image with named channels, the
    #: cell and nucleus shapes, the table annotating them), written from the run's h5ad and
    #: GeoParquet (both needed) before run.json
    spatialdata: bool = False
    #: the tissue under the cells in the AnnData (uns['spatial'], squidpy's layout: a ~2,000 px
    #: and a ~600 px image of the slide), so that squidpy/scanpy plots draw the cells on it
    tissue_image: bool = True
    #: keep the chunk cache (OUT/.slidecell) after a finished run; by default it is removed once
    #: the run (and its analysis stage) completed, when cells.parquet holds every cell
    keep_chunks: bool = False
    #: more output formats, by their registered names (:data:`slidecell.io.writers.FORMATS`, plug-ins
    #: included): streamed formats are written with the others, converted ones from the finished run
    formats: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spatialdata_sources(self):
        if self.spatialdata and not (self.h5ad and self.parquet):
            raise ValueError("spatialdata: the store is made from the run's h5ad and parquet; set output.h5ad and "
                             "output.parquet to true (or export it later: slidecell export RUN --to spatialdata)")
        return self


class Config(Strict):
    name: str = "default"
    reader: ReaderConfig = Field(default_factory=ReaderConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    #: analyse the cells after the run (slidecell analyze into OUT/analysis, with report.html);
    #: null: no analysis
    analysis: "AnalysisConfig | None" = None
    #: region of interest [x, y, width, height] in level-0 pixels
    roi: list[float] | None = None

    @field_validator("roi")
    @classmethod
    def _roi_box(cls, v):
        if v is not None and (len(v) != 4 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("roi must be [x, y, width, height] with positive width and height")
        return v

    def fingerprint(self) -> str:
        """Hash of everything that changes the cells (not of reader parallelism)."""
        data = self.model_dump(mode="json")
        data.pop("reader", None)
        data.pop("output", None)
        data.pop("engine", None)
        data.pop("name", None)
        data.pop("analysis", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


from .analysis.config import AnalysisConfig  # noqa: E402  (the analysis stage's settings)

Config.model_rebuild()


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a preset in ``configs/`` (e.g. ``he-brightfield``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    presets = sorted(q.stem for q in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.exists() else []
    raise ConfigError(f"config {name_or_path}: file not found (presets: {', '.join(presets) or 'none'})")


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: expected a mapping of keys to values, got {type(data).__name__}")
    return validate(Config, data, source)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load and validate a YAML config (a path or a preset name). ``None`` gives the defaults."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        p = resolve_config_path(path)
        source = str(p)
        loaded = read_yaml(p)
        data = loaded if loaded is not None else {}
    if overrides:
        data = deep_merge(data, overrides)
    return config_from_dict(data, source)
