"""The HTML report (slidecell.analysis.report) from a run's analysis stage."""

from __future__ import annotations

import json


from conftest import need
from slidecell.analysis.config import AnalysisConfig
from slidecell.analysis.analyze import analyze
from slidecell.testing import tissue


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
