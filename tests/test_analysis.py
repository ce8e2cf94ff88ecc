"""Phenotyping, spatial statistics and tumour–immune metrics on synthetic tissues with planted
ground truth, and against squidpy/scimap on the real MCMICRO exemplar-001 table."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SHARED, need
from slidecell.analysis.config import AnalysisConfig
from slidecell.analysis.analyze import analyze, analyze_adata
from slidecell.errors import ConfigError
from slidecell.analysis.phenotype import find_gate, gate, read_phenotype_sheet
from slidecell.analysis.spatial import TumorConfig, compartment_densities, mixing_score, tumor_compartments
from slidecell.testing import RULES, margin_tissue, tissue

EXEMPLAR = SHARED / "cells" / "cycif-exemplar001"
SCIMAP = REPO / "benchmarks" / "peers" / "scimap"


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


# -- the whole analysis -------------------------------------------------------------------------
def test_analyze_writes_tables_and_anndata(tmp_path):
    a, _ = tissue("compartmentalized", size_um=2000, seed=5)
    a.write_h5ad(tmp_path / "in.h5ad")
    cfg = AnalysisConfig.model_validate({"phenotype": {"gating": {"phenotypes": RULES}},
                                         "stats": {"n_perms": 50, "max_cells_quadratic": 3000}})
    out = analyze(tmp_path / "in.h5ad", tmp_path / "an", cfg)
    s = json.loads((out / "analysis.json").read_text())
    assert s["mixing"]["class"] == "compartmentalized"
    assert s["graph_statistics"]["subsampled_to"] == 3000
    b = ad.read_h5ad(out / "cells_analyzed.h5ad")
    assert {"phenotype", "compartment", "tumor_distance_um", "nearest_tumor_um", "neighbourhood"} <= set(b.obs)
    assert "phenotype_nhood_enrichment" in b.uns and "spatial_connectivities" in b.obsp
    for name in ("nhood_enrichment", "interaction_matrix", "compartment_densities", "neighbourhoods",
                 "immune_distances", "gates"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    # immune cells are kept out of the nests: they are farther from tumour cells than tumour
    # cells' own neighbours, and the nests' neighbourhood is tumour
    dist = pd.read_csv(out / "immune_distances.csv")
    assert (dist["median_um"] > 15).all()
    cn = pd.read_csv(out / "neighbourhoods.csv")
    assert cn["Tumor"].max() > 0.9
    with pytest.raises(Exception, match="already holds an analysis"):
        analyze(tmp_path / "in.h5ad", tmp_path / "an", cfg)


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


# -- a real run, analysed as its last stage, and its report --------------------------------------
def test_run_with_analysis_and_report(tmp_path):
    """`slidecell run` on the real QPTIFF with an analysis section: phenotypes gated on the
    real markers, every analysis output, and a report with every section and plot."""
    import re

    import slidecell
    from conftest import QPTIFF
    from slidecell.analysis.report import SECTIONS

    cfg = slidecell.load_config("multiplex-fluorescence", {
        "output": {"zarr": False, "geojson": False},
        "analysis": {"phenotype": {"gating": {"phenotypes": [{"name": "Tumor", "pos": ["FITC"]},
                                                             {"name": "Immune", "pos": ["Cy3"], "neg": ["FITC"]}]}},
                     "stats": {"n_perms": 50}}})
    res = slidecell.run(need(QPTIFF), cfg, tmp_path / "run", progress=False)
    assert res.outputs["analysis"] == tmp_path / "run" / "analysis"
    page = res.outputs["report"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    plots = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]{2000,})"', page)
    alts = {a for a, _ in plots}
    assert {"cells coloured by phenotype", "phenotype density heatmaps", "neighbourhood enrichment heatmap",
            "co-occurrence curves", "immune densities per compartment", "compartment map",
            "cellular neighbourhood map", "neighbourhood composition"} <= alts
    assert f"{res.n_cells:,} cells" in page and "small_vectra.qptiff" in page
    s = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())
    assert set(s["phenotype_counts"]) <= {"Tumor", "Immune", "Unknown"} and s["mixing"]["class"] in page
    # the CLI rebuilds it on its own
    from typer.testing import CliRunner

    from slidecell.cli import app

    r = CliRunner().invoke(app, ["report", str(tmp_path / "run" / "analysis"), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.html").stat().st_size > 100_000


# -- the H&E object classifier ----------------------------------------------------------------------
def _he_cells(n, rng, offset=0.0):
    """Two classes with separable morphology and colour: small round dark lymphocytes and large
    elongated paler tumour nuclei (with overlapping spreads)."""
    kind = rng.random(n) < 0.4
    area = np.where(kind, rng.normal(25, 6, n), rng.normal(55, 12, n)).clip(8)
    ecc = np.where(kind, rng.normal(0.45, 0.12, n), rng.normal(0.75, 0.1, n)).clip(0, 0.99)
    major = np.sqrt(4 * area / np.pi / np.sqrt(1 - ecc ** 2))
    minor = major * np.sqrt(1 - ecc ** 2)
    rgb = np.where(kind[:, None], rng.normal([80, 60, 140], 15, (n, 3)), rng.normal([130, 90, 170], 15, (n, 3)))
    x, y = rng.uniform(0, 20000, n) + offset, rng.uniform(0, 20000, n)
    obs = pd.DataFrame({"x": x, "y": y, "area_um2": area, "perimeter_um": np.pi * (major + minor) / 2,
                        "eccentricity": ecc, "solidity": rng.uniform(0.85, 1.0, n), "major_axis_um": major,
                        "minor_axis_um": minor}, index=[f"c{offset:.0f}_{i}" for i in range(n)])
    a = ad.AnnData(rgb.clip(0, 255).astype(np.float32), obs=obs)
    a.var_names = ["Red", "Green", "Blue"]
    return a, np.where(kind, "Lymphocyte", "Tumor")


def test_he_classifier_from_qupath_labels(tmp_path):
    """Cells labelled in QuPath (classified detections drawn around 400 cells, in QuPath's
    coordinates) train a classifier that reaches ≥ 90% on held-out cells."""
    import shapely

    from slidecell.analysis.classify import apply_classifier, labels_from_geojson, train_classifier

    rng = np.random.default_rng(7)
    train, truth = _he_cells(3000, rng)
    pick = rng.choice(len(train), 400, replace=False)
    feats = []
    for i in pick:  # QuPath coordinates = level-0 minus the bounds offset (100, 50)
        poly = shapely.Point(train.obs["x"].iloc[i] - 100, train.obs["y"].iloc[i] - 50).buffer(4)
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(poly),
                      "properties": {"objectType": "detection", "classification": {"name": truth[i]}}})
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    lab = labels_from_geojson(train, tmp_path / "labels.geojson", offset=(100, 50))
    assert lab.notna().sum() == 400 and (lab.dropna() == pd.Series(truth, index=train.obs_names)[lab.notna()]).all()
    info = train_classifier(train, lab, tmp_path / "model.skops")
    assert info["labelled_cells"] == 400 and info["oob_accuracy"] > 0.85
    test, truth_test = _he_cells(2000, np.random.default_rng(8), offset=50000)
    apply_classifier(test, tmp_path / "model.skops", "phenotype")
    acc = (test.obs["phenotype"].astype(str).to_numpy() == truth_test).mean()
    assert acc >= 0.90, acc
    # the analysis records what the classifier file held, not just where it was
    import hashlib

    from slidecell.analysis.analyze import analysis_inputs

    model = tmp_path / "model.skops"
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "classifier", "model": str(model)}})
    assert analysis_inputs(cfg) == {f"phenotype.model:{model}": hashlib.sha256(model.read_bytes()).hexdigest()}


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


def test_report_when_the_subsample_misses_a_rare_phenotype(tmp_path):
    from slidecell.analysis.report import build_report

    a, _ = tissue("mixed", size_um=1500, seed=8)
    a.obs["phenotype"] = a.obs["true_type"].astype(str)
    a.obs.iloc[:2, a.obs.columns.get_loc("phenotype")] = "Rare"
    a.write_h5ad(tmp_path / "in.h5ad")
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "existing"},
                                         "stats": {"n_perms": 20, "max_cells_quadratic": 1000}})
    out = analyze(tmp_path / "in.h5ad", tmp_path / "an", cfg)
    page = build_report(out).read_text()
    assert "co-occurrence curves" in page and "Rare" in page


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


class NotAForest:
    """An arbitrary class: skops would have to import and build it to load it."""

    def __init__(self):
        self.x = 1


def test_classifier_files_never_run_code(tmp_path):
    """A shared classifier file is data: a pickle (joblib) whose loading would run a command is
    refused without running it, as is a skops file holding types that are not a random forest."""
    import os
    import pickle

    import skops.io as sio

    from slidecell.analysis.classify import apply_classifier
    from slidecell.errors import InputError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cells, _ = _he_cells(50, np.random.default_rng(1))
    for name in ("evil.joblib", "evil.skops", "evil.bin"):
        (tmp_path / name).write_bytes(pickle.dumps({"model": Evil(), "features": [], "classes": []}))
        with pytest.raises(InputError, match="skops format"):
            apply_classifier(cells, tmp_path / name)
    assert not marker.exists()
    sio.dump({"model": NotAForest(), "features": [], "classes": []}, tmp_path / "odd.skops")
    with pytest.raises(InputError, match="not part of a random forest"):
        apply_classifier(cells, tmp_path / "odd.skops")
    from sklearn.linear_model import LogisticRegression  # safe to load, but not our classifier

    sio.dump({"model": LogisticRegression(), "features": [], "classes": []}, tmp_path / "lr.skops")
    with pytest.raises(InputError, match="not a slidecell classifier"):
        apply_classifier(cells, tmp_path / "lr.skops")
    (tmp_path / "broken.skops").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="not a readable classifier"):
        apply_classifier(cells, tmp_path / "broken.skops")


def test_failed_analysis_stage_is_recorded_and_retried(tmp_path):
    """An analysis stage that fails inside `slidecell run` is recorded in run.json; the same
    command (with the analysis fixed) runs only that stage again instead of refusing."""
    import slidecell
    from conftest import QPTIFF
    from slidecell.errors import SlidecellError

    base = {"output": {"zarr": False, "geojson": False}}
    bad = slidecell.load_config("multiplex-fluorescence", {
        "output": base["output"],
        "analysis": {"phenotype": {"method": "classifier", "model": str(tmp_path / "missing.skops")}}})
    out = tmp_path / "run"
    with pytest.raises(SlidecellError, match="missing.skops"):
        slidecell.run(need(QPTIFF), bad, out, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["analysis_stage"]["status"] == "failed"
    assert "missing.skops" in info["analysis_stage"]["error"]
    cells_before = (out / "cells.parquet").stat().st_mtime_ns
    good = slidecell.load_config("multiplex-fluorescence", {
        "output": base["output"],
        "analysis": {"phenotype": {"gating": {"phenotypes": [{"name": "Tumor", "pos": ["FITC"]}]}},
                     "stats": {"n_perms": 20}}})
    res = slidecell.run(QPTIFF, good, out, progress=False)
    assert res.outputs["analysis"] == out / "analysis" and (out / "analysis" / "analysis.json").exists()
    assert json.loads((out / "run.json").read_text())["analysis_stage"]["status"] == "complete"
    assert (out / "cells.parquet").stat().st_mtime_ns == cells_before  # the cells were not made again


@pytest.mark.parametrize("which", ["cmu1", "qptiff"])
def test_squidpy_draws_the_cells_on_the_tissue(tmp_path, which):
    """`sq.pl.spatial_scatter(adata, color=...)` with no other argument draws a run's cells on
    its slide: cells.h5ad carries uns['spatial'][slide_id] (images + scale factors); the points
    fall on tissue (darker than the background in H&E, brighter than the median in DAPI); the
    exported h5ad carries the same images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    import slidecell
    from conftest import CMU1, QPTIFF
    from slidecell.export import export

    slide, preset, roi = {"cmu1": (CMU1, "he-brightfield", [700, 1700, 600, 600]),
                          "qptiff": (QPTIFF, "multiplex-fluorescence", None)}[which]
    cfg = slidecell.load_config(preset, {"roi": roi, "output": {"geojson": False, "zarr": False}})
    slidecell.run(need(slide), cfg, tmp_path / "run", progress=False)
    a = ad.read_h5ad(tmp_path / "run" / "cells.h5ad")
    lib = a.obs["slide_id"].iloc[0]
    assert list(a.uns["spatial"]) == [lib]
    hires = a.uns["spatial"][lib]["images"]["hires"]
    assert hires.dtype == np.uint8 and max(hires.shape[:2]) <= 2000 and hires.shape[2] == 3
    sq.pl.spatial_scatter(a, color="area_um2")
    fig = plt.gcf()
    ax = fig.axes[0]
    assert len(ax.images) == 1  # the tissue
    paths = ax.collections[0].get_paths()  # a circle per cell, in the image's pixels
    assert len(paths) == a.n_obs
    xy = np.array([[(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2] for b in (q.get_extents() for q in paths)])
    sf = a.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"]
    assert np.allclose(xy, a.obsm["spatial"] * sf, atol=0.5)
    grey = hires.astype(float).mean(2)
    under = grey[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    if which == "cmu1":
        assert np.median(under) < np.percentile(grey, 90) - 60  # tissue, not white background
    else:
        assert np.median(under) > np.median(grey)
    fig.savefig(tmp_path / "scatter.png")
    plt.close(fig)
    assert (tmp_path / "scatter.png").stat().st_size > 10_000
    b = ad.read_h5ad(export(tmp_path / "run", "h5ad", tmp_path / "exported.h5ad"))
    assert np.array_equal(b.uns["spatial"][lib]["images"]["lowres"], a.uns["spatial"][lib]["images"]["lowres"])


def test_analyze_without_phenotypes_says_what_to_give(tmp_path, capsys):
    """`slidecell analyze` with no config on cells without phenotypes: one line naming the
    config keys and the shipped example, exit 2, nothing written."""
    from slidecell.cli import main

    a, _ = tissue("mixed", size_um=600, seed=3)
    a.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["analyze", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "an")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phenotype.gating.phenotypes" in err[0] and "configs/analysis/tumor-immune.yaml" in err[0]
    assert "leiden" in err[0] and not (tmp_path / "an" / "analysis.json").exists()
