"""The analysis stage's settings (``analysis:`` in a run config, or a file of its own): how
cells get phenotypes, the spatial graph and statistics, the tumour compartments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import Strict, deep_merge, read_yaml, validate
from .phenotype import GatingConfig
from .spatial import GraphConfig, StatsConfig, TumorConfig


class ClusterConfig(Strict):
    markers: list[str] = Field(default_factory=list)
    resolution: float = Field(1.0, gt=0)
    n_neighbors: int = Field(15, ge=2)


class PhenotypeConfig(Strict):
    #: how cells get phenotypes: gating (marker hierarchy), leiden (clusters), a column already
    #: in ``obs`` (``key``), or a classifier model trained with ``slidecell classify train``;
    #: auto: gating when rules (or a sheet) are given, the classifier when a model is, else what
    #: the channels allow (:mod:`slidecell.analysis.auto`: lineage markers found by name,
    #: clusters named by marker, or one class for images without markers)
    method: Literal["auto", "gating", "leiden", "existing", "classifier"] = "auto"
    #: the obs column holding the phenotype
    key: str = "phenotype"
    gating: GatingConfig | None = None
    #: a scimap phenotype sheet (CSV) instead of ``gating.phenotypes``
    sheet: str | None = None
    leiden: ClusterConfig = Field(default_factory=ClusterConfig)
    #: a classifier model file (.skops, from `slidecell classify train`) for ``method: classifier``
    model: str | None = None


class AnalysisConfig(Strict):
    phenotype: PhenotypeConfig = Field(default_factory=PhenotypeConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    tumor: TumorConfig = Field(default_factory=TumorConfig)
    #: tumour regions from these QuPath annotations (GeoJSON, classification = one of
    #: ``tumor_annotation_classes``) instead of tumour-cell density
    tumor_annotations: str | None = None
    tumor_annotation_classes: list[str] = Field(default_factory=lambda: ["Tumor"])
    #: a scimap spatial_interaction table (CSV) to compare the interaction calls with; the
    #: agreement and every disagreeing pair go into analysis.json and the report
    peer_interactions: str | None = None


def load_analysis_config(path=None, overrides: dict | None = None) -> AnalysisConfig:
    """An analysis config: a YAML file (its ``analysis:`` section, or the whole file) or None."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        data = read_yaml(path, "analysis config") or {}
        data = data.get("analysis", data) if isinstance(data, dict) else data
        source = str(path)
    if overrides:
        data = deep_merge(data, overrides)
    return validate(AnalysisConfig, data, source, "analysis config")
