"""``slidecell report``: one self-contained HTML page (plots embedded as PNG) from an analysis
folder (``slidecell analyze``) and, when given, the run folder it came from.

Sections: overview and QC (cells, tiles, tissue area, cells/mm², run time), the slide with its
cells coloured by phenotype, phenotype densities, neighbourhood enrichment, co-occurrence,
compartments (tumour core / invasive margin / stroma) with immune densities, the mixing
score and its class, cellular neighbourhoods, and how the statistics were computed (what was
subsampled, and how squidpy's permutation test differs from scimap's).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from ...records import ANALYSIS_FILE, AnalysisRecord, RunDir
from . import figures
from .page import CSS, cards, img, table

#: the sections every report has, in order (ids of the page's <section> elements)
SECTIONS = ["overview", "qc", "slide", "morphology", "densities", "enrichment", "cooccurrence", "compartments",
            "mixing", "neighbourhoods", "methods", "provenance"]


def build_report(analysis_dir, out=None, run_dir=None) -> Path:
    """Write ``report.html`` (or ``out``) for the analysis in ``analysis_dir``; ``run_dir``
    (default: the run the analysed h5ad came from, when it is a run's) adds QC and the slide."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    from ...io.atomic import atomic_path

    adir = Path(analysis_dir)
    if not (adir / ANALYSIS_FILE).exists():
        raise InputError(f"{adir}: not a slidecell analysis folder (no {ANALYSIS_FILE}); run slidecell analyze first")
    summary = AnalysisRecord.read(adir / ANALYSIS_FILE).model_dump(mode="json")
    adata = ad.read_h5ad(adir / "cells_analyzed.h5ad")
    key = summary["config"]["phenotype"]["key"]
    adata.obs[key] = adata.obs[key].astype("category")
    if run_dir is None:
        cand = Path(summary.get("source", "")).parent
        run_dir = cand if RunDir(cand).finished else None
    run = RunDir(run_dir).record() if run_dir else None
    ctx = (adata, key, summary, run, adir)
    parts = [*_overview(*ctx), *_qc(*ctx, run_dir=run_dir), *_maps(*ctx), *_compartments(*ctx), *_mixing_and_neighbourhoods(*ctx),
             *_methods(*ctx), *_provenance(*ctx)]
    title = Path(run.slide or "").name if run else Path(summary.get("source", "cells")).name
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{content}</section>' for sid, h, content in parts)
    nav = "<nav>" + "".join(f'<a href="#{sid}">{html.escape(h)}</a>' for sid, h, _ in parts) + "</nav>"
    from ... import __version__

    method = (summary.get("phenotype_method") or {}).get("method") or summary["config"]["phenotype"]["method"]
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>slidecell report: {html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f"<p>slidecell {__version__} · {adata.n_obs:,} cells · phenotypes from {html.escape(method)}</p>"
            f"</header><main>{nav}{body}</main></body></html>")
    out = Path(out) if out else adir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _overview(adata, key, summary, run, adir) -> list:
    """Overview and quality control: counts, areas, the run's figures, phenotype counts."""
    parts = []
    cats = list(adata.obs[key].cat.categories)
    areas = summary["areas_mm2"]
    items = [("cells", f"{adata.n_obs:,}"), ("tissue area", f"{areas['tissue']:.2f} mm²"),
             ("cells / mm² tissue", f"{adata.n_obs / max(areas['tissue'], 1e-9):,.0f}"),
             ("tumour area", f"{areas['tumor']:.2f} mm²" if "tumor" in areas else "n/a"), ("phenotypes", len(cats))]
    if run:
        items += [("tiles", f"{run.n_tiles:,}"), ("run time", f"{run.timings_s.get('total', 0):.0f} s"),
                  ("segmentation", run.segmentation_backend or ""),
                  ("working µm/px", f"{run.plan.get('mpp', 0):.3f}")]
    items.append(("analysis time", f"{summary.get('total_s', 0):.0f} s"))
    counts = pd.DataFrame({"phenotype": list(summary["phenotype_counts"]),
                           "cells": list(summary["phenotype_counts"].values())})
    counts["fraction"] = counts["cells"] / counts["cells"].sum()
    why = (summary.get("phenotype_method") or {}).get("why")
    parts.append(("overview", "Overview and quality control", cards(items) + table(counts, 3)
                  + (f'<p class="caption">Phenotypes (no analysis config given): {html.escape(why)}.</p>' if why else "")))

    return parts


def _qc(adata, key, summary, run, adir, run_dir=None) -> list:
    """Segmentation QC: squares of the slide with the cell outlines over them."""
    fig = None
    if run is not None and run_dir is not None and "parquet" in run.outputs:
        fig = figures.qc_crops(run, Path(run_dir) / run.outputs["parquet"])
    if fig is None:
        return [("qc", "Segmentation check", na("the run folder or its slide cannot be read: no image to draw the "
                                                 "outlines on"))]
    return [("qc", "Segmentation check", img(fig, "segmentation QC crops")
             + '<p class="caption">Cell outlines (cyan) over the slide at the run\'s working resolution, around '
               'three cells drawn at random.</p>')]


def _provenance(adata, key, summary, run, adir) -> list:
    """What made these cells: software, model, settings, machine, time."""
    if run is None:
        return [("provenance", "Provenance", na("no run folder: the cells came from another tool's table"))]
    prov = run.provenance or {}
    seg = run.segmentation or {}
    fp = run.slide_fingerprint or {}
    fp_text = (f"{fp.get('size', 0):,} bytes, SHA-256 of head and tail {fp['sha256_head_tail'][:16]}…"
               if fp.get("sha256_head_tail") else json.dumps(fp, default=str))
    rows = [("slide", run.slide), ("slide fingerprint", fp_text),
            ("slidecell", run.slidecell_version), ("config", f"{run.config_name or ''} ({run.config_fingerprint})"),
            ("segmentation", f"{run.segmentation_backend} {json.dumps(seg.get('params', {}), default=str)}"),
            ("channels used", json.dumps(seg.get("channels_used", {}), default=str)),
            ("model / input files", ", ".join(f"{k} {v[:12]}" for k, v in (run.input_files or {}).items())),
            ("working µm/px", run.plan.get("mpp")), ("ROI", run.roi_wkt or "whole slide"),
            ("started", prov.get("started")), ("finished", prov.get("finished")), ("command", prov.get("command")),
            ("host", f"{prov.get('host')} ({prov.get('cpu')}, {prov.get('cpu_count')} CPUs, {prov.get('platform')})"),
            ("peak memory", f"{prov.get('peak_rss_gib')} GiB"),
            ("packages", ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items())),
            ("analysis", f"phenotypes: {(summary.get('phenotype_method') or {}).get('method') or summary['config']['phenotype']['method']}")]
    df = pd.DataFrame([(k, "" if v is None else str(v)) for k, v in rows], columns=["item", "value"])
    return [("provenance", "Provenance", df.to_html(index=False, border=0, escape=True))]


def _maps(adata, key, summary, run, adir) -> list:
    """The slide coloured by phenotype, density maps, enrichment and co-occurrence."""
    parts = []
    cats = list(adata.obs[key].cat.categories)
    tumor = summary["config"]["tumor"]["tumor"]
    fig, note = figures.slide_figure(adata, key, run)
    parts.append(("slide", "Cells by phenotype",
                  img(fig, "cells coloured by phenotype") + f'<p class="caption">Each dot is a cell at its centroid{note}.</p>'))
    fig, medians = figures.morphology_figure(adata, key)
    parts.append(("morphology", "Size, shape and stain of the cells",
                  img(fig, "morphology histograms") + table(medians, 2)
                  + '<p class="caption">Distributions over all cells; the table gives each phenotype\'s medians.</p>'))
    fig, bin_um = figures.density_figure(adata, key)
    parts.append(("densities", "Where each phenotype is",
                  img(fig, "phenotype density heatmaps") + f'<p class="caption">Cells per mm² in {bin_um:.0f} µm squares.</p>'))
    if f"{key}_nhood_enrichment" in adata.uns:
        z = np.asarray(adata.uns[f"{key}_nhood_enrichment"]["zscore"])
        parts.append(("enrichment", "Who neighbours whom",
                      img(figures.heatmap(z, cats, "neighbourhood enrichment (z-score)"), "neighbourhood enrichment heatmap")
                      + '<p class="caption">Positive: the two phenotypes are neighbours more often than if phenotypes '
                        'were shuffled over the same cells; negative: less often. |z| > 1.96 ≈ p < 0.05.</p>'))
    else:
        parts.append(("enrichment", "Who neighbours whom", na("one phenotype: there is nothing to compare")))
    if len(cats) >= 2:
        cooc = (img(figures.cooccurrence_figure(adata, key, tumor + [c for c in cats if c not in tumor]), "co-occurrence curves")
                + '<p class="caption">Above 1: the phenotype is more frequent at that distance from the given cell '
                  'than in the tissue overall.</p>')
    else:
        cooc = na("one phenotype: its co-occurrence with itself is 1 at every distance")
    fig = figures.ripley_figure(adata, key)
    if fig is not None:
        cooc += (img(fig, "Ripley's L curves") + '<p class="caption">Ripley\'s L (squidpy): above the grey band of '
                 'random placements in the same box, the cells cluster at that distance; below it they are spread '
                 'evenly. The box includes background, so tissue alone lifts L above the band.</p>')
    parts.append(("cooccurrence", "Co-occurrence and clustering with distance", cooc))
    return parts


def _compartments(adata, key, summary, run, adir) -> list:
    """Tumour core, invasive margin and stroma with immune densities."""
    parts = []
    areas = summary["areas_mm2"]
    if "tumor_core" not in areas:
        return [("compartments", "Tumour core, invasive margin, stroma", na(summary["mixing"].get("reason", "")))]
    dens = pd.read_csv(adir / "compartment_densities.csv")
    comp_html = '<div class="row">' + img(figures.compartment_figure(dens), "immune densities per compartment") + \
        img(figures.compartment_map(adata), "compartment map") + "</div>"
    comp_html += cards([(k.replace("_", " ") + " area", f"{areas[k]:.2f} mm²") for k in ("tumor_core", "invasive_margin", "stroma")])
    piv = dens.pivot_table(index="phenotype", columns="compartment", values="density_per_mm2", aggfunc="sum")
    piv = piv[[c for c in ("tumor_core", "invasive_margin", "stroma") if c in piv.columns]].reset_index()
    comp_html += "<p class='caption'>Cells / mm² of each phenotype in each compartment:</p>" + table(piv, 0)
    dist_path = adir / "immune_distances.csv"
    if dist_path.exists() and dist_path.stat().st_size > 1:
        dist = pd.read_csv(dist_path)
        if len(dist):
            comp_html += "<p class='caption'>Distance from each immune cell to the nearest tumour cell:</p>" + table(dist, 2)
    margin = summary["config"]["tumor"]["margin_um"]
    parts.append(("compartments", "Tumour core, invasive margin, stroma",
                  comp_html + f'<p class="caption">Invasive margin: {margin:.0f} µm on each side of the tumour boundary '
                              f'(tumour regions from {"annotations" if summary["config"].get("tumor_annotations") else "tumour-cell density"}).</p>'))
    return parts


def _mixing_and_neighbourhoods(adata, key, summary, run, adir) -> list:
    """The mixing score and its class; cellular neighbourhoods."""
    parts = []
    mix = summary["mixing"]
    if mix.get("applicable", True) is False:
        parts.append(("mixing", "Mixing score", na(mix["reason"])))
    else:
        parts.append(_mixing(mix))
    if summary.get("neighbourhoods"):
        parts.append(("neighbourhoods", "Cellular neighbourhoods", na(summary["neighbourhoods"])))
        return parts
    cn = pd.read_csv(adir / "neighbourhoods.csv")
    cn["neighbourhood"] = cn["neighbourhood"].astype(str)
    f1, f2 = figures.neighbourhood_figures(adata, cn)
    parts.append(("neighbourhoods", "Cellular neighbourhoods",
                  '<div class="row">' + img(f1, "cellular neighbourhood map") + img(f2, "neighbourhood composition") + "</div>"
                  + f'<p class="caption">Schürch et al. (Cell 2020): each cell\'s {summary["config"]["tumor"]["cn_k"]} nearest '
                    'cells, their phenotype mix clustered by k-means.</p>'))
    return parts


def na(reason: str) -> str:
    """A section that does not apply to these cells, and why (never a class or a zero)."""
    text = reason if reason.lower().startswith("not applicable") else f"Not applicable: {reason}"
    return f'<p class="na">{html.escape(text[:1].upper() + text[1:])}</p>'


def _mixing(mix: dict):
    return ("mixing", "Mixing score",
            f'<span class="badge {html.escape(mix["class"])}">{html.escape(mix["class"])}</span>'
            + cards([("mixing score", f"{mix['mixing_score']:.3f}"), ("immune cells", f"{mix['immune_cells']:,}"),
                     ("immune / mm²", f"{mix['immune_per_mm2']:.0f}"),
                     ("immune–tumour contacts", f"{mix['immune_tumor_interactions']:,}"),
                     ("immune–immune contacts", f"{mix['immune_immune_interactions']:,}")])
            + f'<p class="caption">Keren et al. (Cell 2018): immune–tumour / immune–immune cell pairs closer than '
              f'{mix["interaction_um"]:.0f} µm. Cold: under {mix["cold_immune_per_mm2"]:.0f} immune cells/mm²; '
              f'compartmentalized: score under {mix["threshold"]}; mixed otherwise.</p>')


def _methods(adata, key, summary, run, adir) -> list:
    """How the statistics were computed (graph, permutations, subsampling, scimap agreement, gates)."""
    parts = []
    gs = summary.get("graph_statistics", {})
    sub = gs.get("subsampled_to")
    g = summary["config"]["graph"]
    graph_text = {"delaunay": f"Delaunay triangulation, edges longer than {g['max_edge_um']} µm dropped",
                  "radius": f"all cells within {g['radius_um']} µm", "knn": f"each cell's {g['k']} nearest cells"}[g["method"]]
    enrich = (f"Neighbourhood enrichment: squidpy, {summary['config']['stats']['n_perms']} permutations of the "
              "phenotype labels over the cells." if "not_applicable" not in gs else
              "Neighbourhood enrichment and centrality: not computed (one phenotype).")
    methods = (f"<p>Spatial graph: {graph_text}. {enrich}</p>"
               + (f"<p>Co-occurrence, Ripley's L and closeness centrality grow with the square of the number of cells: "
                  f"they were computed on {sub:,} cells drawn at random of {gs.get('cells', 0):,}.</p>" if sub else
                  "<p>Every statistic was computed on all cells.</p>")
               + "<p>Why scimap can disagree: scimap's <code>spatial_interaction</code> permutes the labels of each "
                 "cell's neighbours, squidpy the labels of all cells; pairs near the significance threshold can be "
                 "called differently, more so on radius graphs (whose neighbour counts vary) than on kNN graphs.</p>")
    agree = summary.get("peer_agreement")
    if agree:
        methods += (f"<p>Against the recorded scimap table: {agree['same_call_all_pairs']:.0%} of {agree['pairs']} pairs get "
                    f"the same call; of the {agree['both_significant']} pairs both call significant, "
                    f"{agree['same_direction_of_both_significant']:.0%} agree on the direction.</p>")
        if agree["disagreements"]:
            methods += table(pd.DataFrame(agree["disagreements"]), 3)
    if summary.get("gates"):
        gates = pd.DataFrame(summary["gates"])
        g = (summary["config"]["phenotype"].get("gating") or {})
        methods += ("<p>Gates (red lines on each marker's intensities):</p>"
                    + img(figures.gate_figure(adata, gates, g.get("transform") or "arcsinh", g.get("layer")),
                          "marker histograms with gates") + table(gates, 3))
    parts.append(("methods", "How this was computed", methods))

    return parts


__all__ = ["build_report", "SECTIONS"]
