"""Phenotypes (slidecell.analysis.phenotype): gating on planted ground truth, scimap phenotype sheets,
Leiden clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, need
from slidecell.errors import ConfigError
from slidecell.analysis.phenotype import find_gate, gate, read_phenotype_sheet
from slidecell.testing import RULES, tissue

EXEMPLAR = SHARED / "cells" / "cycif-exemplar001"


# -- gating ---------------------------------------------------------------------------------------
def test_gating_recovers_planted_phenotypes():
    """A marker hierarchy with gates found by a Gaussian mixture on arcsinh intensities
    recovers the planted types of noisy cells (≥ 95%), and Otsu does too."""
    a, _ = tissue("mixed", size_um=2500, seed=4)
    rng = np.random.default_rng(0)
    a.X = a.X * np.exp(rng.normal(0, 0.5, a.X.shape)).astype(np.float32)  # broader, overlapping
    for method in ("gmm", "otsu"):
        table = gate(a, {"phenotypes": RULES, "method": method})
        truth = a.obs["true_type"].astype(str).to_numpy()
        got = a.obs["phenotype"].astype(str).to_numpy()
        acc = (truth == got).mean()
        assert acc >= 0.95, (method, acc, pd.crosstab(truth, got))
        assert set(table["marker"]) == {"PanCK", "CD45", "CD3", "CD8", "CD4", "CD20", "CD68", "SMA"}
    assert a.obsm["phenotype_positive"].shape == (a.n_obs, 8)


def test_gate_of_a_bimodal_marker():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(1.0, 0.3, 8000), rng.normal(4.0, 0.5, 2000)])
    assert 1.8 < find_gate(v) < 2.9
    assert 1.5 < find_gate(v, "otsu") < 3.0


def test_gating_errors_name_the_problem():
    a, _ = tissue("cold", size_um=500, seed=0)
    with pytest.raises(ConfigError, match=r"markers \['CD99'\] not in"):
        gate(a, {"phenotypes": [{"name": "X", "pos": ["CD99"]}]})
    with pytest.raises(ConfigError, match="parent that is not a phenotype"):
        gate(a, {"phenotypes": [{"name": "X", "parent": "Nope", "pos": ["CD3"]}]})


def test_scimap_phenotype_sheet():
    rules = read_phenotype_sheet(need(EXEMPLAR / "phenotype_workflow_exemplar001.csv"))
    by = {r.name: r for r in rules}
    assert by["Immune"].pos == ["CD45"] and by["NK cells"].parent == "Immune"
    assert by["NK cells"].pos == ["CD57", "CD16"] and by["Dendritic cells"].neg == ["CD57", "CD16"]


def test_leiden_clusters_find_the_planted_types():
    """Leiden on scaled arcsinh markers separates the planted types; each cluster's annotation
    names its type's markers."""
    from sklearn.metrics import adjusted_rand_score

    from slidecell.analysis.phenotype import cluster
    from slidecell.testing import PANEL

    a, _ = tissue("mixed", size_um=1500, seed=6)
    means = cluster(a, markers=[m for m in a.var_names if m != "DAPI"], resolution=0.3)
    truth = a.obs["true_type"].astype(str).to_numpy()
    assert adjusted_rand_score(truth, a.obs["cluster"].astype(str)) > 0.9
    for c in means.index:  # the majority type of each big cluster has its markers in the annotation
        members = a.obs["cluster"].astype(str).to_numpy() == c
        if members.sum() < 50:
            continue
        major = pd.Series(truth[members]).mode()[0]
        ann = a.obs["cluster_annotation"].astype(str).to_numpy()[members][0]
        assert any(m + "+" in ann for m in PANEL[major]), (major, ann)
