"""slidecell analyze (slidecell.analysis.analyze) and the run's analysis stage: tables, AnnData, a failed
stage recorded and run again, phenotypes chosen from the channels when no config gives them."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest

from conftest import need
from slidecell.analysis.config import AnalysisConfig
from slidecell.analysis.analyze import analyze
from slidecell.testing import RULES, tissue


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


def test_analyze_without_a_config_gates_the_lineage_markers_it_finds(tmp_path, capsys):
    """`slidecell analyze` with no config on a table with a usual panel: phenotypes by gating the
    lineage markers found by name (analysis.json says so and why), the true types recovered, and
    the tumour–immune statistics computed (a tumour and immune phenotypes exist)."""
    from slidecell.cli import main

    a, _ = tissue("mixed", size_um=900, seed=3)
    a.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["analyze", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "an"), "--no-report"]) == 0
    printed = capsys.readouterr()
    assert "\x1b[" not in printed.out + printed.err  # no colour codes from squidpy's logger in logs
    s = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert s["phenotype_method"]["method"] == "gating" and "PanCK" in s["phenotype_method"]["why"]
    got = ad.read_h5ad(tmp_path / "an" / "cells_analyzed.h5ad").obs["phenotype"].astype(str).to_numpy()
    assert (got == a.obs["true_type"].astype(str).to_numpy()).mean() >= 0.95
    assert s["mixing"]["class"] in ("cold", "compartmentalized", "mixed") and s["mixing"]["immune_cells"] > 0
