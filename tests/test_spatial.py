"""Spatial statistics and tumour–immune metrics (slidecell.analysis.spatial) on synthetic tissues with planted
ground truth, and against squidpy/scimap on the real MCMICRO exemplar-001 table."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SHARED, need
from slidecell.analysis.config import AnalysisConfig
from slidecell.analysis.analyze import analyze_adata
from slidecell.analysis.spatial import (TumorConfig, compartment_densities, mixing_score, tissue_area_mm2,
                                        tumor_compartments)
from slidecell.testing import margin_tissue, tissue

EXEMPLAR = SHARED / "cells" / "cycif-exemplar001"
SCIMAP = REPO / "benchmarks" / "peers" / "scimap"


# -- tumour–immune metrics ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mixed", "compartmentalized", "cold"])
def test_mixing_score_classes(kind):
    a, _ = tissue(kind, seed=3)
    a.obs["ph"] = a.obs["true_type"]
    cfg = TumorConfig()
    areas = tumor_compartments(a, "ph", cfg)
    m = mixing_score(a, "ph", cfg, areas["tissue"])
    assert m["class"] == kind, m


def test_invasive_margin_densities_match_the_planted_ones():
    planted = {"core": {"CD8 T": 300.0}, "margin": {"CD8 T": 2000.0, "Macrophage": 1200.0},
               "stroma": {"CD8 T": 400.0}}
    a, _ = margin_tissue(seed=0, planted=planted)
    a.obs["ph"] = a.obs["true_type"]
    cfg = TumorConfig(margin_um=100)
    areas = tumor_compartments(a, "ph", cfg)
    assert areas["tumor"] == pytest.approx(np.pi * 0.9 ** 2, rel=0.03)  # the nest: r = 900 µm
    d = compartment_densities(a, "ph", areas, cfg).set_index(["compartment", "phenotype"])
    for ph, dens in planted["margin"].items():
        got = d.loc[("invasive_margin", ph), "density_per_mm2"]
        assert got == pytest.approx(dens, rel=0.10), (ph, got)
    assert d.loc[("tumor_core", "CD8 T"), "density_per_mm2"] == pytest.approx(300, rel=0.15)
    assert tissue_area_mm2(a, cfg) == areas["tissue"]  # the same tissue without the compartments


def test_tumor_regions_from_annotations():
    import shapely

    a, _ = margin_tissue(seed=1)
    a.obs["ph"] = a.obs["true_type"]
    circle = shapely.Point(1500, 1500).buffer(900, quad_segs=64)
    areas = tumor_compartments(a, "ph", TumorConfig(), regions=circle)
    assert areas["tumor"] == pytest.approx(circle.area / 1e6, rel=0.01)
    inside = a.obs["tumor_distance_um"].to_numpy() < 0
    r = np.hypot(*(a.obsm["spatial"] - 1500).T)
    assert ((r < 890) == inside)[np.abs(r - 900) > 10].all()


# -- against squidpy and scimap on the real exemplar --------------------------------------------
def _exemplar():
    a = ad.read_h5ad(need(EXEMPLAR / "scimapExampleData.h5ad"))
    a.obsm["spatial"] = a.obs[["X_centroid", "Y_centroid"]].to_numpy(np.float64)
    return a


def test_nhood_enrichment_equals_squidpy_called_directly():
    import squidpy as sq

    a = _exemplar()
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "existing"}, "graph": {"method": "knn", "k": 10},
                                         "stats": {"n_perms": 200, "max_cells_quadratic": 2000}})
    analyze_adata(a, cfg)
    b = _exemplar()
    b.obs["phenotype"] = b.obs["phenotype"].astype("category")
    sq.gr.spatial_neighbors(b, coord_type="generic", n_neighs=10)
    sq.gr.nhood_enrichment(b, cluster_key="phenotype", n_perms=200, seed=0, show_progress_bar=False)
    za, zb = a.uns["phenotype_nhood_enrichment"]["zscore"], b.uns["phenotype_nhood_enrichment"]["zscore"]
    assert list(a.obs["phenotype"].cat.categories) == list(b.obs["phenotype"].cat.categories)
    np.testing.assert_array_equal(a.uns["phenotype_nhood_enrichment"]["count"], b.uns["phenotype_nhood_enrichment"]["count"])
    np.testing.assert_allclose(za, zb, rtol=1e-6, atol=1e-6)


def test_interaction_calls_agree_with_scimap():
    """scimap 2.3.6's spatial_interaction (kNN, k = 10; recorded by
    benchmarks/peers/run_scimap.sh) and slidecell's neighbourhood enrichment on the same kNN
    graph: for the pairs both call significant, the direction (enriched / depleted) agrees."""
    from slidecell.analysis.spatial import interaction_agreement

    rec = pd.read_csv(SCIMAP / "spatial_interaction_knn10.csv")
    a = _exemplar()
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "existing"}, "graph": {"method": "knn", "k": 10},
                                         "stats": {"n_perms": 1000, "max_cells_quadratic": 2000}})
    analyze_adata(a, cfg)
    agree = interaction_agreement(a, "phenotype", rec)
    assert agree["both_significant"] >= 20
    assert agree["same_direction_of_both_significant"] >= 0.95, agree
    assert agree["same_call_all_pairs"] >= 0.85, agree


def test_tumor_regions_from_qupath_annotations(tmp_path):
    """`tumor_annotations`: QuPath annotations (pixels of the slide as QuPath shows it) become
    the tumour region through the run's µm/px and bounds offset."""
    import shapely

    a, _ = margin_tissue(seed=2)
    a.uns["slidecell"] = {"mpp": 0.5, "reader": json.dumps({"bounds_offset": [100, 50]})}
    circle_px = shapely.Point(1500 / 0.5 - 100, 1500 / 0.5 - 50).buffer(900 / 0.5, quad_segs=64)
    feats = [{"type": "Feature", "geometry": shapely.geometry.mapping(circle_px),
              "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
             {"type": "Feature", "geometry": shapely.geometry.mapping(shapely.box(0, 0, 500, 500)),
              "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}}]
    (tmp_path / "t.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    a.obs["phenotype"] = a.obs["true_type"]
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "existing"}, "tumor_annotations": str(tmp_path / "t.geojson"),
                                         "stats": {"n_perms": 10, "max_cells_quadratic": 2000}})
    s, _ = analyze_adata(a, cfg)
    assert s["areas_mm2"]["tumor"] == pytest.approx(np.pi * 0.9 ** 2, rel=0.01)
    r = np.hypot(*(a.obsm["spatial"] - 1500).T)
    assert ((a.obs["tumor_distance_um"].to_numpy() < 0) == (r < 900))[np.abs(r - 900) > 10].all()
