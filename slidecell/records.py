"""What a run and an analysis leave behind, typed: ``run.json`` (:class:`RunRecord`) and
``analysis.json`` (:class:`AnalysisRecord`), read through one object, :class:`RunDir`.

The records are pydantic models: every field slidecell writes is named and typed here; keys
written by a newer slidecell are kept (``extra="allow"``), so an older one reads a newer record.
A missing or unreadable record is an :class:`~slidecell.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

RUN_FILE = "run.json"
ANALYSIS_FILE = "analysis.json"
CONFIG_FILE = "config.yaml"


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def read(cls, path: Path):
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise InputError(f"{path}: not found") from None
        except ValidationError as err:
            from .schema import format_errors

            detail = format_errors(str(path), err, "record").split(": ", 1)[1]
            raise InputError(f"{path}: not a readable slidecell record ({detail})") from None
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: not a readable slidecell record ({first})") from None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=False), indent=1, default=str)

    def write(self, path: Path) -> None:
        """Written atomically: the file is whole or absent."""
        from .io.atomic import write_text_atomic

        write_text_atomic(path, self.to_json())


class AnalysisStage(BaseModel):
    """How far the run's analysis stage got: ``pending`` (cells written, the stage not yet run),
    ``running`` (killed while running if found so), ``failed`` (with its error), ``complete``."""

    model_config = ConfigDict(extra="allow")
    status: Literal["pending", "running", "failed", "complete"]
    error: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)


class RunRecord(_Record):
    """``run.json``: written last by a run, so its presence marks the run complete."""

    status: str = "complete"
    slidecell_version: str | None = None
    n_cells: int = 0
    n_tiles: int = 0
    cells_touching_tile_edge: int = 0
    #: tiles (in the last invocation) read again with more context for cells larger than the overlap
    tiles_reread_for_large_cells: int = 0
    #: cells a second tile also drew (None: a tile-exact backend, nothing to resolve)
    duplicates_dropped: int | None = None
    resumed_chunks: int = 0
    #: output format → file name in the run folder
    outputs: dict[str, str] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    slide: str | None = None
    reader: dict[str, Any] = Field(default_factory=dict)
    modality: str | None = None
    plan: dict[str, Any] = Field(default_factory=dict)
    tissue_fraction: float | None = None
    config_name: str | None = None
    config_fingerprint: str | None = None
    segmentation_backend: str | None = None
    segmentation: dict[str, Any] = Field(default_factory=dict)
    segmenter_state: dict[str, Any] = Field(default_factory=dict)
    stain_vectors: list | None = None
    input_files: dict[str, str] = Field(default_factory=dict)
    memory_estimate_gib: float | None = None
    warnings: list[str] = Field(default_factory=list)
    objects: str | None = None
    whole_cells: bool | None = None
    slide_fingerprint: dict[str, Any] | None = None
    roi_wkt: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    analysis_stage: AnalysisStage | None = None

    def info(self) -> dict:
        """The record as a plain dict."""
        return self.model_dump(mode="json")

    def open_slide(self):
        """The run's slide opened again as the run read it (its pixel size and markers file)."""
        from .io import open_slide

        if not self.slide or not Path(self.slide).exists():
            raise InputError(f"{self.slide}: the run's slide is no longer there")
        return open_slide(self.slide, mpp=self.reader.get("mpp"), markers=self.reader.get("markers_file") or False)

    @property
    def slide_id(self) -> str:
        """The slide's name without its extension(s): ``obs['slide_id']``."""
        name = Path(str(self.slide or "")).name
        for suf in (".ome.tiff", ".ome.tif", ".ome.zarr"):
            if name.lower().endswith(suf):
                return name[: -len(suf)]
        return Path(name).stem


def as_record(info) -> RunRecord:
    """A :class:`RunRecord` from a record or a run.json-style dict (a run's ``info`` before its
    record is written)."""
    return info if isinstance(info, RunRecord) else RunRecord.model_validate(info)


class AnalysisRecord(_Record):
    """``analysis.json``: written last by ``slidecell analyze``."""

    cells: int = 0
    source: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    phenotype_counts: dict[str, int] = Field(default_factory=dict)
    areas_mm2: dict[str, float] = Field(default_factory=dict)
    mixing: dict[str, Any] = Field(default_factory=dict)
    graph_statistics: dict[str, Any] = Field(default_factory=dict)
    gates: list[dict] | None = None
    clusters: int | None = None
    peer_agreement: dict[str, Any] | None = None
    input_files: dict[str, str] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    total_s: float | None = None


class RunDir:
    """A run folder as its readers see it: the run's record, its config, its analysis."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def finished(self) -> bool:
        return (self.path / RUN_FILE).is_file()

    def record(self) -> RunRecord:
        if not self.finished:
            raise InputError(f"{self.path}: not a finished slidecell run (no {RUN_FILE})")
        return RunRecord.read(self.path / RUN_FILE)

    def config(self) -> dict:
        """The run's resolved config as written (``config.yaml``); {} when absent."""
        import yaml

        path = self.path / CONFIG_FILE
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def analysis(self) -> AnalysisRecord | None:
        path = self.path / "analysis" / ANALYSIS_FILE
        return AnalysisRecord.read(path) if path.is_file() else None


__all__ = ["as_record", "RunRecord", "AnalysisRecord", "AnalysisStage", "RunDir", "RUN_FILE", "ANALYSIS_FILE", "CONFIG_FILE"]
