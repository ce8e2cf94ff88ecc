"""Synthetic cell tables with known ground truth, for tests and benchmarks: planted phenotypes
with marker expression, and tissue layouts (tumour nests, immune cells mixed in, kept out, or
absent) with known densities."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: phenotype → markers it expresses (the rest are background)
PANEL = {
    "Tumor": ["PanCK", "ECAD"],
    "CD8 T": ["CD45", "CD3", "CD8"],
    "CD4 T": ["CD45", "CD3", "CD4"],
    "B cell": ["CD45", "CD20"],
    "Macrophage": ["CD45", "CD68"],
    "Stroma": ["SMA"],
}
MARKERS = ["PanCK", "ECAD", "CD45", "CD3", "CD8", "CD4", "CD20", "CD68", "SMA", "DAPI"]
#: gating rules that recover :data:`PANEL`
RULES = [
    {"name": "Tumor", "pos": ["PanCK"], "neg": ["CD45"]},
    {"name": "Immune", "pos": ["CD45"]},
    {"name": "T cell", "parent": "Immune", "pos": ["CD3"]},
    {"name": "CD8 T", "parent": "T cell", "pos": ["CD8"], "neg": ["CD4"]},
    {"name": "CD4 T", "parent": "T cell", "pos": ["CD4"], "neg": ["CD8"]},
    {"name": "B cell", "parent": "Immune", "pos": ["CD20"], "neg": ["CD3"]},
    {"name": "Macrophage", "parent": "Immune", "pos": ["CD68"], "neg": ["CD3"]},
    {"name": "Stroma", "pos": ["SMA"], "neg": ["CD45", "PanCK"]},
]
IMMUNE = ["CD8 T", "CD4 T", "B cell", "Macrophage"]


def expression(types: np.ndarray, rng: np.random.Generator, noise: float = 0.35) -> np.ndarray:
    """Cells × :data:`MARKERS` intensities (16-bit-like counts): log-normal, bright for the
    markers of each cell's type, dim otherwise."""
    n = len(types)
    X = np.exp(rng.normal(np.log(60), noise, (n, len(MARKERS))))
    for t, markers in PANEL.items():
        rows = np.flatnonzero(types == t)
        for m in markers:
            X[rows, MARKERS.index(m)] = np.exp(rng.normal(np.log(1500), noise, len(rows)))
    X[:, MARKERS.index("DAPI")] = np.exp(rng.normal(np.log(3000), 0.2, n))
    return X.astype(np.float32)


def tissue(kind: str, size_um: float = 2000.0, density_per_mm2: float = 3000.0, immune_fraction: float = 0.2,
           seed: int = 0, tumor_radius_um: float = 450.0):
    """A tissue of ``size_um`` square with tumour nests (discs) in stroma:

    * ``mixed``: immune cells scattered everywhere, inside the nests too;
    * ``compartmentalized``: immune cells only outside the nests;
    * ``cold``: almost no immune cells (1/20 of ``immune_fraction``).

    Returns an AnnData (X = :data:`MARKERS`, ``obs['true_type']``, ``obsm['spatial']`` in µm)
    and the nests as ``[(cx, cy, r)]``."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    area_mm2 = (size_um / 1000) ** 2
    n = int(density_per_mm2 * area_mm2)
    xy = rng.uniform(0, size_um, (n, 2))
    nests = [(size_um * 0.3, size_um * 0.35, tumor_radius_um), (size_um * 0.72, size_um * 0.68, tumor_radius_um * 0.8)]
    inside = np.zeros(n, bool)
    for cx, cy, r in nests:
        inside |= np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) <= r
    frac = immune_fraction / 20 if kind == "cold" else immune_fraction
    is_immune = rng.random(n) < frac
    if kind == "compartmentalized":
        is_immune &= ~inside
    elif kind not in ("mixed", "cold"):
        raise ValueError(f"unknown tissue kind {kind!r}")
    types = np.where(inside, "Tumor", "Stroma").astype(object)
    types[is_immune] = rng.choice(IMMUNE, is_immune.sum())
    a = ad.AnnData(expression(types, rng), obs=pd.DataFrame({"true_type": pd.Categorical(types)},
                                                           index=[f"c{i}" for i in range(n)]))
    a.var_names = MARKERS
    a.obsm["spatial"] = xy
    return a, nests


def margin_tissue(size_um: float = 3000.0, radius_um: float = 900.0, band_um: float = 100.0, seed: int = 0,
                  base_per_mm2: float = 2500.0, planted: dict | None = None):
    """One circular tumour nest with known immune densities (cells/mm²) planted in the tumour
    core, the invasive margin (a band of ``band_um`` on each side of the boundary) and the
    stroma: ``planted = {compartment: {phenotype: density}}``. Returns (AnnData, planted)."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    planted = planted or {"core": {"CD8 T": 60.0}, "margin": {"CD8 T": 400.0, "Macrophage": 150.0},
                          "stroma": {"CD8 T": 120.0, "Macrophage": 80.0}}
    c = size_um / 2

    def sample(density, region):
        # rejection-sample points of a region at a density (per mm²)
        k = rng.poisson(density * (size_um / 1000) ** 2)
        p = rng.uniform(0, size_um, (k, 2))
        d = np.hypot(p[:, 0] - c, p[:, 1] - c) - radius_um
        keep = {"core": d < -band_um, "margin": np.abs(d) <= band_um, "stroma": d > band_um, "tumor": d <= 0,
                "outside": d > 0}[region]
        return p[keep]

    pts, types = [sample(base_per_mm2, "tumor")], ["Tumor"]
    pts.append(sample(base_per_mm2 * 0.6, "outside"))
    types.append("Stroma")
    for comp, dens in planted.items():
        for t, d in dens.items():
            pts.append(sample(d, comp))
            types.append(t)
    xy = np.concatenate(pts)
    ty = np.concatenate([[t] * len(p) for t, p in zip(types, pts)]).astype(object)
    a = ad.AnnData(expression(ty, rng), obs=pd.DataFrame({"true_type": pd.Categorical(ty)},
                                                         index=[f"c{i}" for i in range(len(ty))]))
    a.var_names = MARKERS
    a.obsm["spatial"] = xy
    return a, planted


__all__ = ["PANEL", "MARKERS", "RULES", "IMMUNE", "expression", "tissue", "margin_tissue"]
