"""``slidecell cohort``: many runs (one per slide) into one cohort AnnData, per-slide summary
tables (cells, areas, phenotype fractions, mixing score and class), the per-slide spatial
statistics side by side (compartment densities, neighbourhood enrichment) and a cohort report. The AnnData is concatenated on disk (anndata's
``concat_on_disk``), so a cohort larger than memory works; ``obs['sample']`` names each cell's
slide."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError


def _cells_file(run: Path) -> Path:
    for p in (run / "analysis" / "cells_analyzed.h5ad", run / "cells.h5ad"):
        if p.exists():
            return p
    raise InputError(f"{run}: no cells.h5ad (nor analysis/cells_analyzed.h5ad); is it a finished slidecell run?")


def summarize(run: Path, sample: str) -> dict:
    """One row of the cohort table for a run (and its analysis, when there is one)."""
    from ..records import RunDir

    run_dir = RunDir(run)
    row = {"sample": sample, "slide": None, "cells": None, "tiles": None, "run_s": None, "modality": None}
    if run_dir.finished:
        r = run_dir.record()
        row.update({"slide": r.slide, "cells": r.n_cells, "tiles": r.n_tiles, "run_s": r.timings_s.get("total"),
                    "modality": r.modality})
    s = run_dir.analysis()
    if s is not None:
        row.update({"tissue_mm2": s.areas_mm2["tissue"], "tumor_mm2": s.areas_mm2.get("tumor"),
                    "cells_per_mm2": s.cells / max(s.areas_mm2["tissue"], 1e-9),
                    "mixing_score": s.mixing.get("mixing_score"),
                    "mixing_class": s.mixing.get("class", "not applicable"),  # no tumour or no immune phenotype
                    "immune_per_mm2": s.mixing.get("immune_per_mm2")})
        total = sum(s.phenotype_counts.values()) or 1
        row.update({f"fraction:{k}": v / total for k, v in s.phenotype_counts.items()})
    return row


def cohort(runs: dict[str, Path], out) -> Path:
    """``runs``: sample name → run folder. Writes ``cohort.h5ad``, ``cohort_summary.csv``,
    ``cohort_densities.csv`` and ``cohort_report.html`` into ``out``."""
    import anndata as ad

    from ..io.atomic import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {k: Path(v) for k, v in runs.items()}
    files = {k: _cells_file(r) for k, r in runs.items()}
    with atomic_path(out / "cohort.h5ad") as tmp:
        ad.experimental.concat_on_disk({k: str(f) for k, f in files.items()}, str(tmp), join="outer", label="sample",
                                       index_unique=None)
        _merge_tissue_images(files.values(), tmp)
    summary = pd.DataFrame([summarize(r, k) for k, r in runs.items()])
    with atomic_path(out / "cohort_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    densities = _gather(runs, "compartment_densities.csv")
    with atomic_path(out / "cohort_densities.csv") as tmp:
        densities.to_csv(tmp, index=False)
    enrich = _gather(runs, "nhood_enrichment.csv")
    with atomic_path(out / "cohort_enrichment.csv") as tmp:
        enrich.to_csv(tmp, index=False)
    _report(summary, densities, enrich, out / "cohort_report.html")
    return out


def _merge_tissue_images(files, out: Path) -> None:
    """Every slide's ``uns['spatial'][slide_id]`` (the tissue images) into the cohort's AnnData,
    so that squidpy draws each slide's cells on its tissue (``library_key='slide_id'``).
    anndata's on-disk concatenation keeps no ``uns``; these are copied one slide at a time."""
    import h5py
    from anndata.io import read_elem, write_elem

    spatial = {}
    for f in files:
        with h5py.File(f, "r") as src:
            if "uns/spatial" in src:
                spatial.update(read_elem(src["uns/spatial"]))
    if spatial:
        with h5py.File(out, "r+") as dst:
            write_elem(dst.require_group("uns"), "spatial", spatial)


def _gather(runs: dict[str, Path], name: str) -> pd.DataFrame:
    """One analysis table of every run that has it, with a ``sample`` column."""
    parts = []
    for k, r in runs.items():
        p = r / "analysis" / name
        if p.exists():
            d = pd.read_csv(p)
            d.insert(0, "sample", k)
            parts.append(d)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _report(summary: pd.DataFrame, densities: pd.DataFrame, enrich: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path
    from .report.page import CSS, img, table

    parts = [("overview", "Slides", table(summary[[c for c in summary.columns if not c.startswith("fraction:")]], 2))]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(summary), 3.2))
    ax.bar(summary["sample"], summary["cells"].fillna(0), color="#4575b4")
    ax.set_ylabel("cells")
    ax.tick_params(axis="x", rotation=30)
    parts.append(("cells", "Cells per slide", img(fig, "cells per slide")))
    frac = summary[["sample"] + [c for c in summary.columns if c.startswith("fraction:")]].set_index("sample")
    if frac.shape[1]:
        frac.columns = [c[len("fraction:"):] for c in frac.columns]
        fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(frac) + 2, 3.4))
        frac.fillna(0).plot.bar(stacked=True, ax=ax, width=0.8, colormap="tab20")
        ax.set_ylabel("fraction of cells")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.tick_params(axis="x", rotation=30)
        parts.append(("phenotypes", "Phenotype composition", img(fig, "phenotype composition per slide")))
    if "mixing_class" in summary:
        cls = summary[["sample", "mixing_class", "mixing_score", "immune_per_mm2"]].dropna()
        parts.append(("mixing", "Mixing score per slide", table(cls, 3)))
    if len(densities):
        imm = densities[densities["immune"]]
        piv = imm.pivot_table(index="sample", columns="compartment", values="density_per_mm2", aggfunc="sum")
        fig, ax = plt.subplots(figsize=(2 + 0.9 * len(piv), 3.4))
        piv.plot.bar(ax=ax, width=0.8)
        ax.set_ylabel("immune cells / mm²")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=8, frameon=False)
        parts.append(("compartments", "Immune density by compartment", img(fig, "immune density per compartment per slide")))
    if len(enrich):
        from .report.figures import heatmap

        z = enrich.groupby(["a", "b"])["zscore"].mean().unstack()
        cats = list(z.index)
        fig = heatmap(z.loc[cats, cats].to_numpy(), cats, "mean neighbourhood-enrichment z-score over slides")
        n = enrich.groupby(["a", "b"])["sample"].nunique().max()
        parts.append(("enrichment", "Who neighbours whom, across slides",
                      img(fig, "cohort neighbourhood enrichment")
                      + f'<p class="caption">Mean of the per-slide z-scores (pairs present in up to {n} slides); '
                        'per-slide values in cohort_enrichment.csv.</p>'))
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{c}</section>' for sid, h, c in parts)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>slidecell cohort</title><style>{CSS}</style>"
            f"</head><body><header><h1>Cohort of {len(summary)} slides</h1><p>{int(np.nansum(summary['cells'])):,} cells"
            f"</p></header><main>{body}</main></body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


__all__ = ["cohort", "summarize"]
