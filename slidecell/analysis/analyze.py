"""``slidecell analyze``: phenotypes, spatial statistics and tumour–immune metrics for any
AnnData with µm coordinates (``obsm['spatial']``), a run's ``cells.h5ad`` or another tool's.

Writes into its output folder: ``cells_analyzed.h5ad`` (the input plus every result in
``obs``/``obsm``/``uns``), tidy CSV tables and ``analysis.json`` (what was done, with which
settings, what was subsampled). Written atomically; the input is never modified.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError, OutputError
from ..records import ANALYSIS_FILE, AnalysisRecord
from .config import AnalysisConfig, PhenotypeConfig, load_analysis_config  # noqa: F401  (load_analysis_config: API)
from .phenotype import GatingConfig, cluster, gate, read_phenotype_sheet
from .auto import IMMUNE as AUTO_IMMUNE
from .auto import tumor_immune_applicable
from .spatial import (TumorConfig, cellular_neighbourhoods, compartment_densities, enrichment_table,
                      graph_statistics, immune_phenotypes, mixing_score, nearest_tumor_distance, spatial_graph,
                      tissue_area_mm2, tumor_compartments)

ANALYZED_NAME = "cells_analyzed.h5ad"


def _resolve(adata, cfg: PhenotypeConfig, summary: dict) -> PhenotypeConfig:
    """``method: auto`` made concrete: given rules or a sheet → gating, a model → classifier,
    else what the channels allow (:func:`auto.choose`), recorded with the reason."""
    if cfg.method != "auto":
        return cfg
    if (cfg.gating and cfg.gating.phenotypes) or cfg.sheet:
        summary["phenotype_method"] = {"method": "gating", "why": "the gating rules in the analysis config"}
        return cfg.model_copy(update={"method": "gating"})
    if cfg.model:
        summary["phenotype_method"] = {"method": "classifier", "why": f"the classifier {cfg.model}"}
        return cfg.model_copy(update={"method": "classifier"})
    from .auto import choose

    method, rules, markers, why = choose(list(adata.var_names), "nucleus_area_um2" in adata.obs)
    summary["phenotype_method"] = {"method": method, "why": why, "from_channels": True}
    if method == "gating":
        return cfg.model_copy(update={"method": "gating", "gating": (cfg.gating or GatingConfig()).model_copy(
            update={"phenotypes": rules})})
    if method == "leiden":
        return cfg.model_copy(update={"method": "leiden", "leiden": cfg.leiden.model_copy(update={"markers": markers})})
    kind = "Cell" if "nucleus_area_um2" in adata.obs else "Nucleus"
    adata.obs[cfg.key] = pd.Categorical([kind] * adata.n_obs)  # no markers to tell cells apart: one class
    return cfg.model_copy(update={"method": "existing"})


def _phenotype(adata, cfg: PhenotypeConfig, summary: dict) -> str:
    cfg = _resolve(adata, cfg, summary)
    key = cfg.key
    if cfg.method == "existing":
        if key not in adata.obs:
            raise ConfigError(f"phenotype.method existing: obs has no column {key!r} ({list(adata.obs.columns)})")
    elif cfg.method == "gating":
        g = cfg.gating or GatingConfig()
        if cfg.sheet:
            g = g.model_copy(update={"phenotypes": read_phenotype_sheet(cfg.sheet)})
        summary["gates"] = gate(adata, g, key).to_dict(orient="records")
    elif cfg.method == "leiden":
        means = cluster(adata, cfg.leiden.markers or None, cfg.leiden.resolution, key + "_cluster",
                        n_neighbors=cfg.leiden.n_neighbors)
        adata.obs[key] = adata.obs[key + "_cluster_annotation"]
        summary["clusters"] = int(len(means))
    elif cfg.method == "classifier":
        from .classify import apply_classifier

        if not cfg.model:
            raise ConfigError("phenotype.method classifier needs phenotype.model (from slidecell classify train)")
        apply_classifier(adata, cfg.model, key)
    adata.obs[key] = adata.obs[key].astype(str).astype("category")
    summary["phenotype_counts"] = {str(k): int(v) for k, v in adata.obs[key].value_counts().items()}
    return key


def _tumor_immune(adata, key: str, cfg: AnalysisConfig, summary: dict):
    """Tumour regions and compartments, distances to tumour, densities, the mixing score and
    cellular neighbourhoods, each only where it means something (a tumour and an immune
    phenotype; two phenotypes for neighbourhoods); otherwise the reason goes into ``summary``.
    Returns (densities, neighbourhoods, the config with the immune phenotypes used)."""
    regions = None
    if cfg.tumor_annotations:
        from ..io.qupath import annotation_region

        mpp, offset = _pixel_frame(adata)
        regions = annotation_region(cfg.tumor_annotations, offset, cfg.tumor_annotation_classes)
        import shapely

        regions = shapely.transform(regions, lambda c: c * mpp)  # level-0 pixels → µm
    labels = adata.obs[key].astype(str).to_numpy()
    chosen = summary.get("phenotype_method") or {}
    auto = chosen.get("method") if chosen.get("from_channels") else None  # None: the user's phenotypes
    if auto == "gating":  # the auto rules' immune phenotypes, not "every other phenotype"
        cfg = cfg.model_copy(update={"tumor": cfg.tumor.model_copy(update={"immune": list(AUTO_IMMUNE)})})
    immune = immune_phenotypes(labels, cfg.tumor) if auto in (None, "gating") else []  # clusters, one class: unknown
    applicable, why = tumor_immune_applicable(labels, cfg.tumor.tumor, immune)
    if applicable or regions is not None:
        areas = tumor_compartments(adata, key, cfg.tumor, regions)
        nearest_tumor_distance(adata, key, cfg.tumor)
        dens = compartment_densities(adata, key, areas, cfg.tumor)
    else:  # no tumour regions: compartments and distances to tumour mean nothing
        areas = {"tissue": tissue_area_mm2(adata, cfg.tumor)}
        dens = pd.DataFrame(columns=["compartment", "phenotype", "cells", "area_mm2", "density_per_mm2", "immune"])
    summary["areas_mm2"] = areas
    summary["mixing"] = mixing_score(adata, key, cfg.tumor, areas["tissue"]) if applicable else \
        {"applicable": False, "reason": why}
    if adata.obs[key].nunique() >= 2:
        cn = cellular_neighbourhoods(adata, key, cfg.tumor, cfg.stats.seed)
    else:
        cn = pd.DataFrame(index=pd.Index([], name="neighbourhood"))
        summary["neighbourhoods"] = "not applicable: one phenotype (every window has the same composition)"
    return dens, cn, cfg


def analyze_adata(adata, cfg: AnalysisConfig | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Run every analysis on ``adata`` in place. Returns (summary, tidy tables)."""
    cfg = cfg or AnalysisConfig()
    if "spatial" not in adata.obsm:
        raise InputError("the AnnData has no obsm['spatial'] (cell centroids in µm)")
    timings: dict[str, float] = {}
    summary: dict = {"cells": int(adata.n_obs)}
    t0 = time.perf_counter()
    key = _phenotype(adata, cfg.phenotype, summary)
    timings["phenotype"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spatial_graph(adata, cfg.graph)
    timings["graph"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary["graph_statistics"] = graph_statistics(adata, key, cfg.stats, cfg.graph)
    timings["graph_statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dens, cn, cfg = _tumor_immune(adata, key, cfg, summary)
    timings["tumor_immune"] = time.perf_counter() - t0
    if cfg.peer_interactions:
        from .spatial import interaction_agreement

        path = Path(cfg.peer_interactions)
        if not path.exists():
            raise InputError(f"{path}: peer interaction table not found")
        summary["peer_agreement"] = interaction_agreement(adata, key, pd.read_csv(path))
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    adata.uns["slidecell_analysis"] = json.dumps(summary, default=str)
    tables = {
        "nhood_enrichment": enrichment_table(adata, key),
        "interaction_matrix": _matrix_table(adata, key, f"{key}_interactions"),
        "compartment_densities": dens,
        "neighbourhoods": cn.reset_index(),
        "immune_distances": _distance_table(adata, key, cfg.tumor) if "nearest_tumor_um" in adata.obs else
        pd.DataFrame(columns=["phenotype", "cells", "median_um", "mean_um", "within_20um", "within_100um"]),
    }
    if "gates" in summary:
        tables["gates"] = pd.DataFrame(summary["gates"])
    return summary, tables


def _pixel_frame(adata) -> tuple[float, tuple[float, float]]:
    """The level-0 µm/px and QuPath's bounds offset of a run's AnnData (``uns['slidecell']``):
    QuPath annotations are in pixels of the slide as QuPath shows it."""
    meta = adata.uns.get("slidecell", {})
    meta = meta if isinstance(meta, dict) else {}
    mpp = meta.get("mpp")
    if not mpp:
        raise InputError("tumour annotations are in pixels but the AnnData does not record µm/px (uns['slidecell']['mpp'])")
    reader = meta.get("reader") or {}
    if isinstance(reader, str):
        reader = json.loads(reader)
    offset = tuple(reader.get("bounds_offset") or (0, 0))
    return float(mpp), (float(offset[0]), float(offset[1]))


def _matrix_table(adata, key: str, uns_key: str) -> pd.DataFrame:
    cats = list(adata.obs[key].cat.categories)
    m = np.asarray(adata.uns[uns_key])
    return pd.DataFrame([{"a": a, "b": b, "value": float(m[i, j])} for i, a in enumerate(cats) for j, b in enumerate(cats)])


def _distance_table(adata, key: str, cfg: TumorConfig) -> pd.DataFrame:
    from .spatial import immune_phenotypes

    labels = adata.obs[key].astype(str)
    rows = []
    for ph in immune_phenotypes(labels, cfg):
        d = adata.obs.loc[(labels == ph).to_numpy(), "nearest_tumor_um"].dropna()
        if len(d):
            rows.append({"phenotype": ph, "cells": len(d), "median_um": float(d.median()), "mean_um": float(d.mean()),
                         "within_20um": float((d <= 20).mean()), "within_100um": float((d <= 100).mean())})
    return pd.DataFrame(rows)


def analyze(source, out, config: AnalysisConfig | str | Path | None = None, overwrite: bool = False) -> Path:
    """Analyze ``source`` (an .h5ad/.zarr AnnData, or a run folder holding cells.h5ad) into the
    folder ``out``. Returns ``out``."""
    import anndata as ad

    from ..io.atomic import atomic_path

    src = Path(source)
    if src.is_dir() and (src / "cells.h5ad").exists():
        src = src / "cells.h5ad"
    if not src.exists():
        raise InputError(f"{src}: not found (an .h5ad, a .zarr AnnData, or a slidecell run folder)")
    cfg = config if isinstance(config, AnalysisConfig) else load_analysis_config(config)
    out = Path(out)
    if (out / ANALYSIS_FILE).exists() and not overwrite:
        raise OutputError(f"{out}: already holds an analysis; pass --overwrite or choose another --out")
    try:
        adata = ad.read_zarr(src) if src.suffix == ".zarr" or src.is_dir() else ad.read_h5ad(src)
    except Exception as exc:
        raise InputError(f"{src}: not a readable AnnData: {exc}") from exc
    t0 = time.perf_counter()
    summary, tables = analyze_adata(adata, cfg)
    summary["source"] = str(src.resolve())
    summary["config"] = cfg.model_dump(mode="json")
    summary["input_files"] = analysis_inputs(cfg)
    summary["total_s"] = round(time.perf_counter() - t0, 3)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    with atomic_path(out / ANALYZED_NAME) as tmp:
        _h5ad_safe(adata).write_h5ad(tmp)
    AnalysisRecord.model_validate(summary).write(out / ANALYSIS_FILE)  # last: complete
    return out


def analysis_inputs(cfg: AnalysisConfig) -> dict[str, str]:
    """Content hashes (SHA-256) of the files an analysis reads besides the cells: the classifier,
    the phenotype sheet, the tumour annotations, the peer's interaction table."""
    from ..fingerprint import file_digests

    files = {"phenotype.model": cfg.phenotype.model, "phenotype.sheet": cfg.phenotype.sheet,
             "tumor_annotations": cfg.tumor_annotations, "peer_interactions": cfg.peer_interactions}
    return file_digests({f"{k}:{v}": Path(v) for k, v in files.items() if v})


def _h5ad_safe(adata):
    """Make uns entries h5ad can store (squidpy leaves a few tuples and None in them)."""
    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, tuple):
            return list(v)
        return v

    adata.uns = clean(dict(adata.uns))
    return adata


__all__ = ["AnalysisConfig", "PhenotypeConfig", "load_analysis_config", "analyze_adata", "analyze", "ANALYZED_NAME"]
