"""``slidecell report``: one self-contained HTML page (plots embedded as PNG) from an analysis
folder (``slidecell analyze``) and, when given, the run folder it came from.

Sections: overview and QC (cells, tiles, tissue area, cells/mm², run time), the slide with its
cells coloured by phenotype, phenotype densities, neighbourhood enrichment, co-occurrence,
compartments (tumour core / invasive margin / stroma) with immune densities, the mixing
score and its class, cellular neighbourhoods, and how the statistics were computed (what was
subsampled, and how squidpy's permutation test differs from scimap's).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

#: the sections every report has, in order (ids of the page's <section> elements)
SECTIONS = ["overview", "slide", "densities", "enrichment", "cooccurrence", "compartments", "mixing",
            "neighbourhoods", "methods"]
#: most cells drawn in a scatter (a random subset beyond it, said in the caption)
MAX_POINTS = 150_000


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(fig, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _colors(categories) -> dict:
    from ..io.writers import class_color

    return {c: tuple(v / 255 for v in class_color(str(c))) for c in categories}


def _dot(n: int) -> float:
    """Marker size for ``n`` dots: visible for a few hundred cells, not a blot for millions."""
    return float(np.clip(30000 / max(n, 1), 0.5, 14))


def _sample(n: int, seed: int = 0):
    if n <= MAX_POINTS:
        return np.arange(n), ""
    idx = np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))
    return idx, f" ({MAX_POINTS:,} of {n:,} cells drawn at random)"


def _slide_figure(adata, key: str, run: dict | None):
    """Cells coloured by phenotype, over the slide's thumbnail when the slide can be read."""
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    cats = list(adata.obs[key].cat.categories)
    col = _colors(cats)
    idx, note = _sample(len(xy))
    fig, ax = plt.subplots(figsize=(9, 9 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1) if len(xy) else 9))
    extent = None
    if run is not None:
        try:
            from ..io import open_slide

            reader_info = run.get("reader") or {}
            with open_slide(run["slide"], mpp=reader_info.get("mpp"), markers=reader_info.get("markers_file") or False) as r:
                mpp = max(r.mpp * r.dimensions[0] / 1600, r.mpp)
                thumb = r.thumbnail(mpp)
            w_um, h_um = r.dimensions[0] * r.mpp, r.dimensions[1] * r.mpp
            if run.get("modality") == "brightfield" and thumb.shape[2] == 3:
                ax.imshow(thumb, extent=(0, w_um, h_um, 0))
            else:  # fluorescence: the nuclear channel(s) the run used (else the first), stretched, grey
                from ..segment.channels import nuclear_channel_indices

                chans = nuclear_channel_indices(r.channel_names, []) or [0]
                ch = thumb[:, :, chans].astype(np.float64).mean(axis=2)
                lo, hi = np.percentile(ch, [1, 99.5])
                ax.imshow(np.clip((ch - lo) / max(hi - lo, 1e-9), 0, 1) ** 0.7, cmap="gray",
                          extent=(0, w_um, h_um, 0))
            extent = (w_um, h_um)
        except Exception:  # the slide moved or cannot be read: cells alone
            extent = None
    labels = adata.obs[key].to_numpy()[idx]
    for c in cats:
        m = labels == c
        if m.any():
            ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=_dot(len(idx)), color=col[c], label=c,
                       linewidths=0, rasterized=True)
    if extent is None:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("µm")
    ax.legend(markerscale=max(1, 6 / np.sqrt(_dot(len(idx)))), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
              frameon=False)
    return fig, note


def _density_figure(adata, key: str):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    cats = [c for c in adata.obs[key].cat.categories]
    cats = sorted(cats, key=lambda c: -(adata.obs[key] == c).sum())[:8]
    bin_um = max(25.0, float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]))) / 80)
    xe = np.arange(xy[:, 0].min(), xy[:, 0].max() + bin_um, bin_um)
    ye = np.arange(xy[:, 1].min(), xy[:, 1].max() + bin_um, bin_um)
    cols = min(4, len(cats))
    rows = int(np.ceil(len(cats) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), cats):
        m = (adata.obs[key] == c).to_numpy()
        h, _, _ = np.histogram2d(xy[m, 1], xy[m, 0], bins=(ye, xe))
        im = ax.imshow(h / (bin_um / 1000) ** 2, cmap="magma", origin="upper", interpolation="nearest")
        ax.set_title(f"{c} (cells/mm²)", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.7)
    for ax in axes.ravel()[len(cats):]:
        ax.axis("off")
    return fig, bin_um


def _heatmap(matrix, labels, title: str, cmap="coolwarm", center=True, fmt="{:.1f}"):
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.5 * len(labels)))
    vmax = np.nanmax(np.abs(m)) if center and np.isfinite(m).any() else None
    im = ax.imshow(m, cmap=cmap, vmin=-vmax if vmax else None, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if len(labels) <= 12:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _cooccurrence_figure(adata, key: str, focus: list[str]):
    import matplotlib.pyplot as plt

    co = adata.uns.get(f"{key}_co_occurrence")
    cats = [str(c) for c in co.get("categories", adata.obs[key].cat.categories)]  # of the subsample
    col = _colors(cats)
    focus = [f for f in focus if f in cats][:3] or cats[:2]
    fig, axes = plt.subplots(1, len(focus), figsize=(4.6 * len(focus), 3.4), squeeze=False)
    interval = np.asarray(co["interval"])
    mid = (interval[1:] + interval[:-1]) / 2 if len(interval) == co["occ"].shape[2] + 1 else interval[1:]
    for ax, f in zip(axes.ravel(), focus):
        i = cats.index(f)
        for j, c in enumerate(cats):
            ax.plot(mid, co["occ"][i, j], color=col[c], label=c)
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_title(f"given a {f} cell", fontsize=9)
        ax.set_xlabel("distance (µm)")
        ax.set_ylabel("P(type | distance) / P(type)")
    axes.ravel()[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def _compartment_figure(dens: pd.DataFrame):
    import matplotlib.pyplot as plt

    imm = dens[dens["immune"]]
    if imm.empty:
        imm = dens
    piv = imm.pivot(index="phenotype", columns="compartment", values="density_per_mm2")
    piv = piv[[c for c in ("tumor_core", "invasive_margin", "stroma") if c in piv.columns]]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(piv), 3.6))
    piv.plot.bar(ax=ax, color=["#b2182b", "#ef8a62", "#67a9cf"][: len(piv.columns)], width=0.8)
    ax.set_ylabel("cells / mm²")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="", fontsize=8, frameon=False)
    return fig


def _compartment_map(adata):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    idx, _ = _sample(len(xy), 1)
    comp = adata.obs["compartment"].astype(str).to_numpy()[idx]
    colors = {"tumor_core": "#b2182b", "invasive_margin": "#ef8a62", "stroma": "#67a9cf"}
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1)))
    for c, colr in colors.items():
        m = comp == c
        ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=_dot(len(idx)), color=colr, label=c, linewidths=0, rasterized=True)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.legend(markerscale=8, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _neighbourhood_figures(adata, cn: pd.DataFrame):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    idx, _ = _sample(len(xy), 2)
    lab = adata.obs["neighbourhood"].astype(str).to_numpy()[idx]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1)))
    for k in sorted(set(lab), key=int):
        m = lab == k
        ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=_dot(len(idx)), color=cmap(int(k) % 10), label=f"CN {k}", linewidths=0,
                   rasterized=True)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.legend(markerscale=8, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    comp = cn.set_index("neighbourhood")
    fig2, ax2 = plt.subplots(figsize=(1.2 + 0.6 * comp.shape[1], 0.8 + 0.45 * len(comp)))
    im = ax2.imshow(comp.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax2.set_xticks(range(comp.shape[1]), comp.columns, rotation=45, ha="right", fontsize=8)
    ax2.set_yticks(range(len(comp)), [f"CN {i}" for i in comp.index], fontsize=8)
    ax2.set_title("composition of each neighbourhood", fontsize=10)
    fig2.colorbar(im, ax=ax2, shrink=0.8)
    return fig, fig2


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#243447;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border-radius:8px;margin:18px 0;padding:16px 22px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 10px;color:#243447}p.caption{font-size:13px;color:#555;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f0f3f6;border-radius:6px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#555}
img.plot{max-width:100%;height:auto}table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right}th{background:#f0f3f6}
td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;font-size:22px;font-weight:600;padding:6px 16px;border-radius:20px;color:#fff}
.cold{background:#4575b4}.compartmentalized{background:#d73027}.mixed{background:#1a9850}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
"""


def _cards(items) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>'
                                           for k, v in items) + "</div>"


def _table(df: pd.DataFrame, floats: int = 1) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:,.{floats}f}", border=0, escape=True)


def build_report(analysis_dir, out=None, run_dir=None) -> Path:
    """Write ``report.html`` (or ``out``) for the analysis in ``analysis_dir``; ``run_dir``
    (default: the run the analysed h5ad came from, when it is a run's) adds QC and the slide."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    from ..io.writers import atomic_path

    adir = Path(analysis_dir)
    if not (adir / "analysis.json").exists():
        raise InputError(f"{adir}: not a slidecell analysis folder (no analysis.json); run slidecell analyze first")
    summary = json.loads((adir / "analysis.json").read_text())
    adata = ad.read_h5ad(adir / "cells_analyzed.h5ad")
    key = summary["config"]["phenotype"]["key"]
    adata.obs[key] = adata.obs[key].astype("category")
    if run_dir is None:
        cand = Path(summary.get("source", "")).parent
        run_dir = cand if (cand / "run.json").exists() else None
    run = json.loads((Path(run_dir) / "run.json").read_text()) if run_dir else None
    dens = pd.read_csv(adir / "compartment_densities.csv")
    cn = pd.read_csv(adir / "neighbourhoods.csv")
    cn["neighbourhood"] = cn["neighbourhood"].astype(str)
    cats = list(adata.obs[key].cat.categories)
    areas = summary["areas_mm2"]
    mix = summary["mixing"]
    tumor = summary["config"]["tumor"]["tumor"]
    parts = []

    # overview / QC
    items = [("cells", f"{adata.n_obs:,}"), ("tissue area", f"{areas['tissue']:.2f} mm²"),
             ("cells / mm² tissue", f"{adata.n_obs / max(areas['tissue'], 1e-9):,.0f}"),
             ("tumour area", f"{areas['tumor']:.2f} mm²"), ("phenotypes", len(cats))]
    if run:
        items += [("tiles", f"{run.get('n_tiles', 0):,}"), ("run time", f"{run['timings_s']['total']:.0f} s"),
                  ("segmentation", run.get("segmentation_backend", "")),
                  ("working µm/px", f"{run['plan']['mpp']:.3f}")]
    items.append(("analysis time", f"{summary.get('total_s', 0):.0f} s"))
    counts = pd.DataFrame({"phenotype": list(summary["phenotype_counts"]),
                           "cells": list(summary["phenotype_counts"].values())})
    counts["fraction"] = counts["cells"] / counts["cells"].sum()
    parts.append(("overview", "Overview and quality control", _cards(items) + _table(counts, 3)))

    fig, note = _slide_figure(adata, key, run)
    parts.append(("slide", "Cells by phenotype",
                  _img(fig, "cells coloured by phenotype") + f'<p class="caption">Each dot is a cell at its centroid{note}.</p>'))
    fig, bin_um = _density_figure(adata, key)
    parts.append(("densities", "Where each phenotype is",
                  _img(fig, "phenotype density heatmaps") + f'<p class="caption">Cells per mm² in {bin_um:.0f} µm squares.</p>'))
    z = np.asarray(adata.uns[f"{key}_nhood_enrichment"]["zscore"])
    parts.append(("enrichment", "Who neighbours whom",
                  _img(_heatmap(z, cats, "neighbourhood enrichment (z-score)"), "neighbourhood enrichment heatmap")
                  + '<p class="caption">Positive: the two phenotypes are neighbours more often than if phenotypes '
                    'were shuffled over the same cells; negative: less often. |z| > 1.96 ≈ p < 0.05.</p>'))
    parts.append(("cooccurrence", "Co-occurrence with distance",
                  _img(_cooccurrence_figure(adata, key, tumor + [c for c in cats if c not in tumor]), "co-occurrence curves")
                  + '<p class="caption">Above 1: the phenotype is more frequent at that distance from the given cell '
                    'than in the tissue overall.</p>'))
    comp_html = '<div class="row">' + _img(_compartment_figure(dens), "immune densities per compartment") + \
        _img(_compartment_map(adata), "compartment map") + "</div>"
    comp_html += _cards([(k.replace("_", " ") + " area", f"{areas[k]:.2f} mm²") for k in ("tumor_core", "invasive_margin", "stroma")])
    dist_path = adir / "immune_distances.csv"
    if dist_path.exists() and dist_path.stat().st_size > 1:
        dist = pd.read_csv(dist_path)
        if len(dist):
            comp_html += "<p class='caption'>Distance from each immune cell to the nearest tumour cell:</p>" + _table(dist, 2)
    margin = summary["config"]["tumor"]["margin_um"]
    parts.append(("compartments", "Tumour core, invasive margin, stroma",
                  comp_html + f'<p class="caption">Invasive margin: {margin:.0f} µm on each side of the tumour boundary '
                              f'(tumour regions from {"annotations" if summary["config"].get("tumor_annotations") else "tumour-cell density"}).</p>'))
    parts.append(("mixing", "Mixing score",
                  f'<span class="badge {html.escape(mix["class"])}">{html.escape(mix["class"])}</span>'
                  + _cards([("mixing score", f"{mix['mixing_score']:.3f}"), ("immune cells", f"{mix['immune_cells']:,}"),
                            ("immune / mm²", f"{mix['immune_per_mm2']:.0f}"),
                            ("immune–tumour contacts", f"{mix['immune_tumor_interactions']:,}"),
                            ("immune–immune contacts", f"{mix['immune_immune_interactions']:,}")])
                  + f'<p class="caption">Keren et al. (Cell 2018): immune–tumour / immune–immune cell pairs closer than '
                    f'{mix["interaction_um"]:.0f} µm. Cold: under {mix["cold_immune_per_mm2"]:.0f} immune cells/mm²; '
                    f'compartmentalized: score under {mix["threshold"]}; mixed otherwise.</p>'))
    f1, f2 = _neighbourhood_figures(adata, cn)
    parts.append(("neighbourhoods", "Cellular neighbourhoods",
                  '<div class="row">' + _img(f1, "cellular neighbourhood map") + _img(f2, "neighbourhood composition") + "</div>"
                  + f'<p class="caption">Schürch et al. (Cell 2020): each cell\'s {summary["config"]["tumor"]["cn_k"]} nearest '
                    'cells, their phenotype mix clustered by k-means.</p>'))
    gs = summary.get("graph_statistics", {})
    sub = gs.get("subsampled_to")
    g = summary["config"]["graph"]
    graph_text = {"delaunay": f"Delaunay triangulation, edges longer than {g['max_edge_um']} µm dropped",
                  "radius": f"all cells within {g['radius_um']} µm", "knn": f"each cell's {g['k']} nearest cells"}[g["method"]]
    methods = (f"<p>Spatial graph: {graph_text}. Neighbourhood enrichment: squidpy, "
               f"{summary['config']['stats']['n_perms']} permutations of the phenotype labels over the cells.</p>"
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
            methods += _table(pd.DataFrame(agree["disagreements"]), 3)
    if "gates" in summary:
        methods += "<p>Gates:</p>" + _table(pd.DataFrame(summary["gates"]), 3)
    parts.append(("methods", "How this was computed", methods))

    title = Path(run["slide"]).name if run else Path(summary.get("source", "cells")).name
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{content}</section>' for sid, h, content in parts)
    from .. import __version__

    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>slidecell report: {html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f"<p>slidecell {__version__} · {adata.n_obs:,} cells · phenotypes from {html.escape(summary['config']['phenotype']['method'])}</p>"
            f"</header><main>{body}</main></body></html>")
    out = Path(out) if out else adir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


__all__ = ["build_report", "SECTIONS"]
