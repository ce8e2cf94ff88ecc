"""Phenotypes from marker intensities: hierarchical gating and unsupervised clustering.

Gating follows the marker hierarchies pathologists draw (CD45+ → CD3+ → CD8+): each
phenotype names its parent and the markers that must be positive or negative. A marker's
gate is given (on the transformed scale) or found from the data: the crossing of a
two-component Gaussian mixture on arcsinh- or log-transformed intensities, or Otsu's
threshold, as scimap's gating does. scimap's phenotype sheets (CSV with pos/neg/allpos/
allneg/anypos/anyneg) are read as well.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ..errors import ConfigError
from ..schema import Strict

UNASSIGNED = "Unknown"


class PhenotypeRule(Strict):
    """One phenotype: the cells of ``parent`` whose markers satisfy every rule."""

    name: str = Field(..., min_length=1)
    parent: str = "all"
    #: every one of these markers positive
    pos: list[str] = Field(default_factory=list)
    #: every one of these negative
    neg: list[str] = Field(default_factory=list)
    #: at least one of these positive / negative
    anypos: list[str] = Field(default_factory=list)
    anyneg: list[str] = Field(default_factory=list)

    def markers(self) -> list[str]:
        return list(dict.fromkeys(self.pos + self.neg + self.anypos + self.anyneg))


class GatingConfig(Strict):
    #: intensity transform before gating: arcsinh(x / cofactor), log1p, or none
    transform: Literal["arcsinh", "log1p", "none"] = "arcsinh"
    #: arcsinh cofactor; None: each marker's 20th percentile of positive values (robust to
    #: the intensity scale: IMC counts, 16-bit fluorescence, 0–1 rescaled tables)
    cofactor: float | None = Field(None, gt=0)
    #: gates on the transformed scale, per marker; the others are found by ``method``
    gates: dict[str, float] = Field(default_factory=dict)
    #: how a gate is found: the crossing of a 2-component Gaussian mixture, or Otsu
    method: Literal["gmm", "otsu"] = "gmm"
    #: which intensities: X (mean over the cell) or a layer (e.g. nucleus_mean)
    layer: str | None = None
    phenotypes: list[PhenotypeRule] = Field(default_factory=list)


def read_phenotype_sheet(path) -> list[PhenotypeRule]:
    """A scimap phenotyping sheet (CSV: parent, phenotype, then one column per marker with
    pos/neg/allpos/allneg/anypos/anyneg) as rules. ``pos`` with several markers means all of
    them here (``allpos``); scimap ranks candidates by the strongest marker instead."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the phenotype sheet: {exc}") from exc
    if len(rows) < 2 or len(rows[0]) < 3:
        raise ConfigError(f"{path}: a phenotype sheet needs a header (parent, phenotype, markers...) and rows")
    markers = [m.strip() for m in rows[0][2:]]
    rules = []
    for i, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        parent, name = row[0].strip() or "all", row[1].strip()
        if not name:
            raise ConfigError(f"{path}: line {i} has no phenotype name")
        kw: dict[str, list[str]] = {"pos": [], "neg": [], "anypos": [], "anyneg": []}
        for marker, cell in zip(markers, row[2:]):
            v = cell.strip().lower()
            if not v:
                continue
            key = {"pos": "pos", "allpos": "pos", "neg": "neg", "allneg": "neg", "anypos": "anypos",
                   "anyneg": "anyneg"}.get(v)
            if key is None:
                raise ConfigError(f"{path}: line {i}, marker {marker}: {cell!r} is not pos/neg/allpos/allneg/anypos/anyneg")
            kw[key].append(marker)
        rules.append(PhenotypeRule(name=name, parent=parent, **kw))
    return rules


def transform(values: np.ndarray, how: str, cofactor: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Transformed intensities (cells × markers) and the cofactors used (arcsinh)."""
    x = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
    if how == "none":
        return x, None
    if how == "log1p":
        return np.log1p(np.maximum(x, 0)), None
    if cofactor is not None:
        cof = np.full(x.shape[1], float(cofactor))
    else:
        cof = np.empty(x.shape[1])
        for j in range(x.shape[1]):
            pos = x[:, j][x[:, j] > 0]
            cof[j] = np.percentile(pos, 20) if len(pos) else 1.0
        cof = np.where(cof > 0, cof, 1.0)
    return np.arcsinh(x / cof), cof


def find_gate(values: np.ndarray, method: str = "gmm", seed: int = 0) -> float:
    """The threshold separating a marker's negative and positive cells (transformed scale)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 10 or np.ptp(v) == 0:
        return float(np.max(v)) if len(v) else 0.0
    if method == "otsu":
        from skimage.filters import threshold_otsu

        return float(threshold_otsu(v))
    from sklearn.mixture import GaussianMixture

    sample = v if len(v) <= 200_000 else np.random.default_rng(seed).choice(v, 200_000, replace=False)
    gm = GaussianMixture(2, random_state=seed).fit(sample[:, None])
    lo, hi = np.argsort(gm.means_.ravel())
    m_lo, m_hi = gm.means_.ravel()[[lo, hi]]
    # where the posterior of the high component crosses 0.5, between the two means
    grid = np.linspace(m_lo, m_hi, 2001)
    post = gm.predict_proba(grid[:, None])[:, hi]
    k = int(np.argmax(post >= 0.5))
    return float(grid[k])


def gate(adata, config: GatingConfig | dict, key: str = "phenotype") -> pd.DataFrame:
    """Assign ``obs[key]`` by gating (cells matching no rule of their level keep their
    parent's phenotype; cells matching no top-level rule are ``Unknown``). Stores the gates in
    ``uns['slidecell_gating']`` and each marker's positivity in ``obsm[key + '_positive']``.
    Returns the gates table (marker, gate, how it was found, cofactor, fraction positive)."""
    cfg = config if isinstance(config, GatingConfig) else GatingConfig.model_validate(config)
    if not cfg.phenotypes:
        raise ConfigError("gating: no phenotypes given: pass an analysis config (-c) with phenotype.gating.phenotypes "
                          "(e.g. configs/analysis/tumor-immune.yaml, marker names as in the run), or phenotype.method: "
                          "leiden (clusters named after their markers) or existing (a column already in obs)")
    names = list(adata.var_names)
    used = list(dict.fromkeys(m for r in cfg.phenotypes for m in r.markers()))
    missing = [m for m in used + list(cfg.gates) if m not in names]
    if missing:
        raise ConfigError(f"gating: markers {sorted(set(missing))} not in the table's markers {names}")
    known = {"all"} | {r.name for r in cfg.phenotypes}
    orphans = [r.name for r in cfg.phenotypes if r.parent not in known]
    if orphans:
        raise ConfigError(f"gating: phenotypes {orphans} have a parent that is not a phenotype")
    X = adata.layers[cfg.layer] if cfg.layer else adata.X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X)
    idx = [names.index(m) for m in used]
    t, cof = transform(X[:, idx], cfg.transform, cfg.cofactor)
    rows, gates = [], np.empty(len(used))
    for j, m in enumerate(used):
        given = m in cfg.gates
        gates[j] = float(cfg.gates[m]) if given else find_gate(t[:, j], cfg.method)
        rows.append({"marker": m, "gate": gates[j], "found_by": "given" if given else cfg.method,
                     "cofactor": None if cof is None else float(cof[j]), "fraction_positive": float((t[:, j] > gates[j]).mean())})
    spread = np.maximum(t.std(axis=0), 1e-9)
    score = (t - gates) / spread  # > 0: positive; how far, in marker spreads
    positive = score > 0
    col = {m: j for j, m in enumerate(used)}
    n = adata.n_obs
    label = np.full(n, "all", dtype=object)
    children: dict[str, list[PhenotypeRule]] = {}
    for r in cfg.phenotypes:
        children.setdefault(r.parent, []).append(r)
    frontier = ["all"]
    while frontier:
        parent = frontier.pop(0)
        kids = children.get(parent, [])
        if not kids:
            continue
        members = label == parent
        best = np.full(n, -np.inf)
        for r in kids:
            ok = members.copy()
            for m in r.pos:
                ok &= positive[:, col[m]]
            for m in r.neg:
                ok &= ~positive[:, col[m]]
            if r.anypos:
                ok &= positive[:, [col[m] for m in r.anypos]].any(axis=1)
            if r.anyneg:
                ok &= (~positive[:, [col[m] for m in r.anyneg]]).any(axis=1)
            strength = (score[:, [col[m] for m in r.pos + r.anypos]].max(axis=1) if r.pos + r.anypos
                        else np.zeros(n))
            take = ok & (strength > best)  # siblings compete: the strongest positive marker wins
            label[take] = r.name
            best[take] = strength[take]
        frontier.extend(r.name for r in kids)
    label[label == "all"] = UNASSIGNED
    order = [r.name for r in cfg.phenotypes] + [UNASSIGNED]
    adata.obs[key] = pd.Categorical(label, categories=[c for c in order if c in set(label)] or [UNASSIGNED])
    adata.obsm[key + "_positive"] = pd.DataFrame(positive, index=adata.obs_names, columns=used)
    table = pd.DataFrame(rows)
    adata.uns["slidecell_gating"] = {"gates": table.to_dict(orient="list"), "transform": cfg.transform,
                                     "layer": cfg.layer or "X"}
    return table


def cluster(adata, markers=None, resolution: float = 1.0, key: str = "cluster", transform_how: str = "arcsinh",
            n_neighbors: int = 15, seed: int = 0, annotate: bool = True) -> pd.DataFrame:
    """Leiden clusters on scaled, transformed markers (scanpy), annotated by marker: each
    cluster's top markers by mean z-score (``obs[key]``, ``obs[key + '_annotation']``).
    Returns the cluster × marker mean z-score table."""
    import anndata as ad
    import scanpy as sc

    names = list(adata.var_names)
    markers = list(markers or names)
    X = np.asarray(adata[:, markers].X.toarray() if hasattr(adata.X, "toarray") else adata[:, markers].X)
    t, _ = transform(X, transform_how)
    z = (t - t.mean(axis=0)) / np.maximum(t.std(axis=0), 1e-9)
    tmp = ad.AnnData(np.clip(z, -10, 10).astype(np.float32))
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    sc.tl.leiden(tmp, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    labels = tmp.obs["leiden"].astype(str).to_numpy()
    adata.obs[key] = pd.Categorical(labels, categories=sorted(set(labels), key=int))
    means = pd.DataFrame(z, columns=markers).groupby(labels).mean()
    means.index = means.index.astype(str)
    means = means.loc[sorted(means.index, key=int)]
    if annotate:
        ann = {}
        for c, row in means.iterrows():  # high in up to two markers: A+B+; low in all: A−B− (marker-low beyond 3)
            top = sorted((m for m in row.sort_values(ascending=False).index[:2] if row[m] > 0.5), key=markers.index)
            low = "".join(f"{m}−" for m in markers) if len(markers) <= 3 else "marker-low"
            ann[c] = "".join(f"{m}+" for m in top) if top else low
        adata.obs[key + "_annotation"] = pd.Categorical([ann[c] for c in labels])
    return means


__all__ = ["GatingConfig", "PhenotypeRule", "read_phenotype_sheet", "transform", "find_gate", "gate", "cluster",
           "UNASSIGNED"]
