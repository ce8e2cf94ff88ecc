"""Spatial statistics and tumour–immune metrics on µm coordinates (``obsm['spatial']``).

Graph statistics go through squidpy (spatial graph, neighbourhood enrichment, interaction
matrix, co-occurrence, Ripley's L, centrality). The ones whose exact form does not scale to a
whole slide (co-occurrence, Ripley and closeness centrality are quadratic in the cells) run on
a random subsample, and the output says so (``uns[...]['subsampled_to']``).

Tumour–immune metrics are computed here: tumour regions from tumour-cell density (or given
polygons), compartments by signed distance to the tumour boundary (core, invasive margin band,
stroma), immune densities per compartment, each immune cell's distance to the nearest tumour
cell, Keren et al.'s mixing score with its class, and Schürch et al.'s cellular
neighbourhoods.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ..errors import ConfigError
from ..schema import Strict


class GraphConfig(Strict):
    #: delaunay (edges longer than ``max_edge_um`` dropped), radius, or knn
    method: Literal["delaunay", "radius", "knn"] = "delaunay"
    max_edge_um: float = Field(30.0, gt=0)
    radius_um: float = Field(30.0, gt=0)
    k: int = Field(10, ge=1, le=100)


class StatsConfig(Strict):
    #: permutations of the neighbourhood-enrichment null
    n_perms: int = Field(200, ge=10, le=10000)
    #: co-occurrence, Ripley's L and closeness centrality are quadratic: at most this many
    #: cells (a random subsample, recorded in the output)
    max_cells_quadratic: int = Field(20000, ge=1000)
    #: distances (µm) at which co-occurrence and Ripley's L are evaluated
    max_distance_um: float = Field(200.0, gt=0)
    seed: int = 0


class TumorConfig(Strict):
    #: the phenotype(s) that are tumour cells
    tumor: list[str] = Field(default_factory=lambda: ["Tumor"])
    #: phenotypes counted as immune cells (empty: every phenotype that is neither tumour nor in
    #: ``other``)
    immune: list[str] = Field(default_factory=list)
    other: list[str] = Field(default_factory=lambda: ["Stroma", "Unknown"])
    #: grid for densities and regions (made coarser when the tissue would need more than
    #: 25 million grid cells)
    grid_um: float = Field(5.0, gt=0)
    #: smoothing of the tumour-cell density (Gaussian sigma)
    smooth_um: float = Field(40.0, gt=0)
    #: a grid cell is tumour where the smoothed tumour-cell density reaches this fraction of
    #: the typical density inside tumour (the median inside nests): half puts the boundary where a
    #: straight edge of a nest is, whatever the immune cells around it
    tumor_level: float = Field(0.5, gt=0, lt=1)
    #: tumour regions smaller than this are ignored
    min_region_um2: float = Field(20000.0, ge=0)
    #: invasive margin: this many µm on each side of the tumour boundary
    margin_um: float = Field(100.0, gt=0)
    #: Keren et al.: interactions are cell pairs closer than this
    interaction_um: float = Field(30.0, gt=0)
    #: Keren et al.: compartmentalized below this mixing score, mixed above
    mixing_threshold: float = Field(0.22, gt=0)
    #: Keren et al.: "cold" below this immune density in the tissue (cells/mm²); their 250
    #: immune cells per 800 × 800 µm field
    cold_immune_per_mm2: float = Field(390.0, ge=0)
    #: cellular neighbourhoods: each cell's k nearest neighbours, k-means into this many
    cn_k: int = Field(10, ge=2, le=200)
    cn_clusters: int = Field(6, ge=2, le=50)


# -- squidpy statistics -------------------------------------------------------------------------
def spatial_graph(adata, cfg: GraphConfig | None = None) -> None:
    """``obsp['spatial_connectivities']``/``['spatial_distances']`` on the µm coordinates."""
    import logging

    import squidpy as sq

    cfg = cfg or GraphConfig()
    # squidpy logs "Creating graph ..." through spatialdata's logger, a rich handler that writes
    # colour codes even into log files: quiet while the graph is built
    sd_log = logging.getLogger("spatialdata._logging")
    level = sd_log.level
    sd_log.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if cfg.method == "delaunay":
                sq.gr.spatial_neighbors(adata, coord_type="generic", delaunay=True, radius=(0.0, cfg.max_edge_um))
            elif cfg.method == "radius":
                sq.gr.spatial_neighbors(adata, coord_type="generic", radius=cfg.radius_um)
            else:
                sq.gr.spatial_neighbors(adata, coord_type="generic", n_neighs=cfg.k)
    finally:
        sd_log.setLevel(level)
    adata.uns["spatial_neighbors"]["slidecell_graph"] = cfg.model_dump()


def _subsample(adata, n: int, seed: int):
    if adata.n_obs <= n:
        return adata, None
    idx = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n, replace=False))
    return adata[idx].copy(), n


def graph_statistics(adata, key: str, stats: StatsConfig | None = None, graph: GraphConfig | None = None) -> dict:
    """Neighbourhood enrichment (z-scores), interaction matrix, co-occurrence, Ripley's L and
    centrality of the ``obs[key]`` categories. Results in ``uns`` under squidpy's keys; returns
    a summary with what was subsampled."""
    import squidpy as sq

    stats = stats or StatsConfig()
    if key not in adata.obs:
        raise ConfigError(f"spatial statistics: obs[{key!r}] is missing (phenotype the cells first)")
    if not isinstance(adata.obs[key].dtype, pd.CategoricalDtype):
        adata.obs[key] = adata.obs[key].astype("category")
    if "spatial_connectivities" not in adata.obsp:
        spatial_graph(adata, graph)
    info: dict = {"cells": int(adata.n_obs), "key": key}
    several = adata.obs[key].nunique() >= 2  # enrichment and centrality compare phenotypes
    if not several:
        info["not_applicable"] = {"nhood_enrichment": "one phenotype", "centrality_scores": "one phenotype"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if several:
            sq.gr.nhood_enrichment(adata, cluster_key=key, n_perms=stats.n_perms, seed=stats.seed,
                                   show_progress_bar=False)
        sq.gr.interaction_matrix(adata, cluster_key=key, normalized=True)
        small, sub = _subsample(adata, stats.max_cells_quadratic, stats.seed)
        small.obs[key] = small.obs[key].cat.remove_unused_categories()  # a rare type may be missing
        info["subsampled_to"] = sub
        interval = np.linspace(stats.max_distance_um / 20, stats.max_distance_um, 20)
        sq.gr.co_occurrence(small, cluster_key=key, interval=interval, show_progress_bar=False)
        sq.gr.ripley(small, cluster_key=key, mode="L", max_dist=stats.max_distance_um, n_steps=20,
                     n_simulations=20, seed=stats.seed)
        if sub is not None:
            spatial_graph(small, GraphConfig.model_validate(adata.uns["spatial_neighbors"]["slidecell_graph"]))
        if several:
            sq.gr.centrality_scores(small, cluster_key=key, show_progress_bar=False)
    for k in (f"{key}_co_occurrence", f"{key}_ripley_L", f"{key}_centrality_scores"):
        if k in small.uns:
            adata.uns[k] = small.uns[k]
    adata.uns[f"{key}_co_occurrence"]["categories"] = [str(c) for c in small.obs[key].cat.categories]
    adata.uns[f"{key}_spatial_summary"] = {"cells": info["cells"], "subsampled_to": sub or 0,
                                           "quadratic_statistics": ["co_occurrence", "ripley_L", "centrality_scores"]}
    return info


def enrichment_table(adata, key: str) -> pd.DataFrame:
    """Tidy neighbourhood enrichment: one row per ordered pair (z-score, count)."""
    cats = list(adata.obs[key].cat.categories)
    if f"{key}_nhood_enrichment" not in adata.uns:  # one phenotype: nothing to compare
        return pd.DataFrame(columns=["a", "b", "zscore", "count"])
    ne = adata.uns[f"{key}_nhood_enrichment"]
    z, count = np.asarray(ne["zscore"]), np.asarray(ne["count"])
    rows = [{"a": a, "b": b, "zscore": float(z[i, j]), "count": float(count[i, j])}
            for i, a in enumerate(cats) for j, b in enumerate(cats)]
    return pd.DataFrame(rows)


# -- tumour regions and compartments -------------------------------------------------------------
def _grid(xy: np.ndarray, step: float, pad: int = 2):
    x0, y0 = xy.min(axis=0) - pad * step
    x1, y1 = xy.max(axis=0) + pad * step
    w, h = int(np.ceil((x1 - x0) / step)), int(np.ceil((y1 - y0) / step))
    return (x0, y0), (w, h)


def _bin(xy, origin, step, shape):
    w, h = shape
    gx = np.clip(((xy[:, 0] - origin[0]) / step).astype(int), 0, w - 1)
    gy = np.clip(((xy[:, 1] - origin[1]) / step).astype(int), 0, h - 1)
    return gx, gy


def _tissue(xy: np.ndarray, cfg: TumorConfig):
    """The tissue on a grid: cells' grid squares closed over 30 µm gaps and filled (the grid is
    padded so that closing does not eat the tissue's edge). Returns (origin, step, (w, h),
    (gx, gy) of each cell, the boolean tissue grid)."""
    from scipy import ndimage as ndi

    span = np.ptp(xy, axis=0) + 1.0
    step = max(cfg.grid_um, float(np.sqrt(span[0] * span[1] / 25e6)))
    reach = max(1, int(round(30 / step)))
    origin, (w, h) = _grid(xy, step, pad=2 * reach + 2)
    gx, gy = _bin(xy, origin, step, (w, h))
    allc = np.zeros((h, w))
    np.add.at(allc, (gy, gx), 1)
    tissue = ndi.binary_closing(allc > 0, structure=np.ones((2 * reach + 1,) * 2), iterations=1)
    return origin, step, (w, h), (gx, gy), ndi.binary_fill_holes(tissue | (allc > 0))


def tissue_area_mm2(adata, cfg: TumorConfig | None = None) -> float:
    """The tissue's area (mm²) as :func:`tumor_compartments` measures it, without compartments."""
    _, step, _, _, tissue = _tissue(np.asarray(adata.obsm["spatial"], np.float64), cfg or TumorConfig())
    return float(tissue.sum() * step * step / 1e6)


def tumor_compartments(adata, key: str, cfg: TumorConfig | None = None, regions=None) -> dict:
    """Tumour regions (from the smoothed density of tumour cells, or the given
    shapely ``regions`` in µm), each cell's signed distance to the tumour boundary
    (``obs['tumor_distance_um']``, negative inside) and compartment (``obs['compartment']``:
    tumor_core, invasive_margin, stroma), and the area of each compartment within the tissue
    (grid cells holding cells, closed). Returns ``{compartment: area_mm2, ...}``."""
    from scipy import ndimage as ndi

    cfg = cfg or TumorConfig()
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    labels = adata.obs[key].astype(str).to_numpy()
    origin, step, (w, h), (gx, gy), tissue = _tissue(xy, cfg)
    if regions is None:
        tum = np.zeros((h, w))
        is_t = np.isin(labels, cfg.tumor)
        np.add.at(tum, (gy[is_t], gx[is_t]), 1)
        dens = ndi.gaussian_filter(tum, cfg.smooth_um / step)
        typical = np.inf
        if is_t.any():  # the median density inside nests (grid cells above half the 90th percentile)
            q90 = np.percentile(dens[dens > dens.max() * 1e-3], 90)
            typical = np.median(dens[dens >= 0.5 * q90])
        mask = (dens >= cfg.tumor_level * typical) & tissue
        lab, n = ndi.label(mask)
        if n:
            sizes = np.bincount(lab.ravel())[1:] * step * step
            mask = np.isin(lab, 1 + np.flatnonzero(sizes >= cfg.min_region_um2))
    else:
        import shapely

        cx = origin[0] + (np.arange(w) + 0.5) * step
        cy = origin[1] + (np.arange(h) + 0.5) * step
        X, Y = np.meshgrid(cx, cy)
        mask = shapely.contains_xy(regions, X.ravel(), Y.ravel()).reshape(h, w)
    # signed distance (µm) of every grid cell to the boundary, interpolated at the cells
    inside = ndi.distance_transform_edt(mask) * step
    outside = ndi.distance_transform_edt(~mask) * step
    signed = np.where(mask, -inside + step / 2, outside - step / 2)
    cells_d = ndi.map_coordinates(signed, [(xy[:, 1] - origin[1]) / step - 0.5, (xy[:, 0] - origin[0]) / step - 0.5],
                                  order=1, mode="nearest")
    if not mask.any():
        cells_d = np.full(len(xy), np.inf)
        signed = np.full(signed.shape, np.inf)
    comp = np.where(cells_d < -cfg.margin_um, "tumor_core", np.where(cells_d <= cfg.margin_um, "invasive_margin", "stroma"))
    adata.obs["tumor_distance_um"] = cells_d
    adata.obs["compartment"] = pd.Categorical(comp, categories=["tumor_core", "invasive_margin", "stroma"])
    px = step * step / 1e6
    areas = {"tumor_core": float(((signed < -cfg.margin_um) & tissue).sum() * px),
             "invasive_margin": float(((np.abs(signed) <= cfg.margin_um) & tissue).sum() * px),
             "stroma": float(((signed > cfg.margin_um) & tissue).sum() * px)}
    areas["tissue"] = float(tissue.sum() * px)
    areas["tumor"] = float((mask & tissue).sum() * px)
    return areas


def immune_phenotypes(labels, cfg: TumorConfig) -> list[str]:
    cats = list(dict.fromkeys(map(str, labels)))
    return list(cfg.immune) or [c for c in cats if c not in set(cfg.tumor) | set(cfg.other)]


def compartment_densities(adata, key: str, areas: dict, cfg: TumorConfig) -> pd.DataFrame:
    """Cells/mm² of every phenotype in every compartment (tidy)."""
    labels = adata.obs[key].astype(str)
    rows = []
    for comp in ("tumor_core", "invasive_margin", "stroma"):
        sel = adata.obs["compartment"] == comp
        counts = labels[sel.to_numpy()].value_counts()
        for ph in sorted(set(labels)):
            n = int(counts.get(ph, 0))
            rows.append({"compartment": comp, "phenotype": ph, "cells": n, "area_mm2": areas[comp],
                         "density_per_mm2": n / areas[comp] if areas[comp] > 0 else np.nan,
                         "immune": ph in immune_phenotypes(labels, cfg)})
    return pd.DataFrame(rows)


def nearest_tumor_distance(adata, key: str, cfg: TumorConfig) -> None:
    """``obs['nearest_tumor_um']``: each cell's distance to the nearest tumour cell (0 for
    tumour cells; NaN without tumour cells)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], np.float64)
    is_t = np.isin(adata.obs[key].astype(str).to_numpy(), cfg.tumor)
    d = np.full(len(xy), np.nan)
    if is_t.any():
        d[~is_t] = cKDTree(xy[is_t]).query(xy[~is_t], k=1, workers=-1)[0]
        d[is_t] = 0.0
    adata.obs["nearest_tumor_um"] = d


def mixing_score(adata, key: str, cfg: TumorConfig, tissue_mm2: float) -> dict:
    """Keren et al. (Cell 2018): immune–tumour interactions / immune–immune interactions, an
    interaction being a pair of cells closer than ``interaction_um``; class "cold" when the
    immune density is below ``cold_immune_per_mm2``, else "compartmentalized" below
    ``mixing_threshold``, else "mixed"."""
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], np.float64)
    labels = adata.obs[key].astype(str).to_numpy()
    imm = np.isin(labels, immune_phenotypes(labels, cfg))
    tum = np.isin(labels, cfg.tumor)
    n_imm = int(imm.sum())
    it = ii = 0
    if n_imm and tum.any():
        tree_i = cKDTree(xy[imm])
        it = int(tree_i.count_neighbors(cKDTree(xy[tum]), cfg.interaction_um))
        ii = int((tree_i.count_neighbors(tree_i, cfg.interaction_um) - n_imm) // 2)  # pairs, not self
    score = it / ii if ii else (np.inf if it else 0.0)
    density = n_imm / tissue_mm2 if tissue_mm2 > 0 else 0.0
    cls = "cold" if density < cfg.cold_immune_per_mm2 else ("compartmentalized" if score < cfg.mixing_threshold else "mixed")
    return {"mixing_score": float(score), "immune_tumor_interactions": it, "immune_immune_interactions": ii,
            "immune_cells": n_imm, "immune_per_mm2": float(density), "class": cls,
            "interaction_um": cfg.interaction_um, "threshold": cfg.mixing_threshold,
            "cold_immune_per_mm2": cfg.cold_immune_per_mm2}


def cellular_neighbourhoods(adata, key: str, cfg: TumorConfig, seed: int = 0) -> pd.DataFrame:
    """Schürch et al. (Cell 2020): each cell's window = its ``cn_k`` nearest cells (itself
    included); the phenotype composition of the windows clustered by k-means
    (``obs['neighbourhood']``, compositions in ``obsm['neighbourhood_composition']``).
    Returns the mean composition of each neighbourhood."""
    from scipy.spatial import cKDTree
    from sklearn.cluster import MiniBatchKMeans

    xy = np.asarray(adata.obsm["spatial"], np.float64)
    cats = pd.Categorical(adata.obs[key].astype(str))
    codes = cats.codes
    k = min(cfg.cn_k, len(xy))
    _, nn = cKDTree(xy).query(xy, k=k, workers=-1)
    nn = nn.reshape(len(xy), -1)
    comp = np.zeros((len(xy), len(cats.categories)), np.float32)
    for j in range(nn.shape[1]):
        np.add.at(comp, (np.arange(len(xy)), codes[nn[:, j]]), 1.0)
    comp /= nn.shape[1]
    n_cl = min(cfg.cn_clusters, len(xy))
    km = MiniBatchKMeans(n_cl, random_state=seed, batch_size=4096, n_init=3).fit(comp)
    lab = km.labels_.astype(str)
    adata.obs["neighbourhood"] = pd.Categorical(lab, categories=[str(i) for i in range(n_cl)])
    adata.obsm["neighbourhood_composition"] = pd.DataFrame(comp, index=adata.obs_names, columns=list(cats.categories))
    means = pd.DataFrame(comp, columns=list(cats.categories)).groupby(lab).mean()
    means.index.name = "neighbourhood"
    return means


__all__ = ["GraphConfig", "StatsConfig", "TumorConfig", "spatial_graph", "graph_statistics", "enrichment_table",
           "tumor_compartments", "tissue_area_mm2", "compartment_densities", "nearest_tumor_distance", "mixing_score",
           "cellular_neighbourhoods"]


# -- comparing interaction calls with scimap -------------------------------------------------------
def interaction_calls(adata, key: str, alpha: float = 0.05) -> pd.DataFrame:
    """Neighbourhood enrichment as calls: enriched / depleted / none per ordered pair, from the
    z-score's two-sided normal p-value."""
    from scipy.stats import norm

    t = enrichment_table(adata, key)
    p = 2 * norm.sf(np.abs(t["zscore"].fillna(0)))
    t["pvalue"] = p
    t["call"] = np.where(p < alpha, np.where(t["zscore"] > 0, "enriched", "depleted"), "none")
    return t


def interaction_agreement(adata, key: str, scimap_table: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Agreement of slidecell's (squidpy's) calls with a scimap ``spatial_interaction`` table
    (``phenotype``, ``neighbour_phenotype``, a value whose sign is the direction, ``pvalue_*``).
    The two differ by design: squidpy permutes the cells' labels, scimap the neighbours'
    labels, so borderline pairs can be called differently; returns the counts and the pairs
    that disagree (``disagreements``)."""
    ours = interaction_calls(adata, key, alpha).set_index(["a", "b"])
    pcol = next(c for c in scimap_table.columns if c.startswith("pvalue_"))
    vcol = pcol[len("pvalue_"):]
    rows = []
    for _, r in scimap_table.iterrows():
        pair = (str(r["phenotype"]), str(r["neighbour_phenotype"]))
        if pair not in ours.index:
            continue
        sig = r[pcol] < alpha
        theirs = ("enriched" if r[vcol] > 0 else "depleted") if sig and r[vcol] != 0 else "none"
        rows.append({"a": pair[0], "b": pair[1], "slidecell": ours.loc[pair, "call"], "scimap": theirs,
                     "zscore": float(ours.loc[pair, "zscore"]), "scimap_value": float(r[vcol]),
                     "scimap_pvalue": float(r[pcol])})
    t = pd.DataFrame(rows)
    both = t[(t["slidecell"] != "none") & (t["scimap"] != "none")]
    return {"pairs": int(len(t)), "both_significant": int(len(both)),
            "same_direction_of_both_significant": float((both["slidecell"] == both["scimap"]).mean()) if len(both) else 1.0,
            "same_call_all_pairs": float((t["slidecell"] == t["scimap"]).mean()) if len(t) else 1.0,
            "disagreements": t[t["slidecell"] != t["scimap"]].to_dict(orient="records")}
