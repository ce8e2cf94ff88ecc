"""The HTML report (slidecell.analysis.report) from a run's analysis stage."""

from __future__ import annotations

import json

import pytest

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


@pytest.mark.parametrize("which", ["cmu1", "qptiff"])
def test_analysis_with_no_config_claims_no_class_it_cannot_support(tmp_path, which):
    """`slidecell run` + an analysis stage with no settings on the real H&E (CMU-1, nuclei, no
    markers) and the real QPTIFF (DAPI, FITC, Cy3: no lineage marker by name): one class
    (Nucleus) / clusters named by marker; the tumour–immune sections say why they do not apply
    instead of a class or zeros; every section is there; grey for the classless."""
    import re

    import slidecell
    from conftest import CMU1, QPTIFF
    from slidecell.analysis.report import SECTIONS

    slide, preset, extra = {"cmu1": (CMU1, "he-brightfield", {"roi": [0, 0, 1500, 1500]}),
                            "qptiff": (QPTIFF, "multiplex-fluorescence", {})}[which]
    cfg = slidecell.load_config(preset, {**extra, "output": {"geojson": False}, "analysis": {"stats": {"n_perms": 20}}})
    res = slidecell.run(need(slide), cfg, tmp_path / "run", progress=False)
    page = res.outputs["report"].read_text()
    s = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
        assert f'<a href="#{sid}">' in page, sid  # navigation
    assert 'class="badge' not in page  # no mixing class
    assert s["mixing"] == {"applicable": False, "reason": s["mixing"]["reason"]}
    assert page.count('<p class="na">') >= 2 and "no tumour phenotype" in page
    assert "morphology histograms" in page and "Area (µm²)" in page
    assert "segmentation QC crops" in page  # outlines over the slide
    prov = page[page.index('<section id="provenance">'):]
    for item in ("slide fingerprint", "SHA-256 of head and tail", "started", "peak memory", "packages", "channels used",
                 "torch"):
        assert item in prov, item
    if which == "cmu1":
        assert s["phenotype_method"]["method"] == "morphology" and s["phenotype_counts"] == {"Nucleus": res.n_cells}
        assert "Red" not in "".join(s["phenotype_counts"]) and "one phenotype" in page
    else:
        assert s["phenotype_method"]["method"] == "leiden"
        names = set(s["phenotype_counts"])
        assert all(re.fullmatch(r"((FITC|Cy3)[+−])+", n) for n in names), names  # named by marker, no "++"
        assert "FITC−Cy3−" in names


def test_colours_grey_for_no_class_and_distinct_for_the_rest():
    from slidecell.analysis.report.figures import colors

    c = colors(["Tumor", "Unknown", "FITC+", "Cy3+", "FITC−Cy3−", "Nucleus"])
    grey = (0.62, 0.62, 0.62)
    assert c["Unknown"] == c["FITC−Cy3−"] == c["Nucleus"] == grey
    assert c["Tumor"] == (200 / 255, 0.0, 0.0)  # QuPath's Tumor
    assert c["FITC+"] != c["Cy3+"] and grey not in (c["FITC+"], c["Cy3+"])


def test_table_headers_read_as_words():
    from slidecell.analysis.report.page import readable

    assert readable("within_20um") == "Within 20 µm"
    assert readable("density_per_mm2") == "Density / mm²"
    assert readable("median_um") == "Median (µm)"
    assert readable("fraction_positive") == "Fraction positive"


def test_report_draws_gates_compartment_table_and_scale_bars(tmp_path):
    """A gated analysis: each marker's histogram with its gate, the phenotype × compartment
    density table with readable headers; density maps carry a scale bar; no run: the QC and
    provenance sections say why they are empty."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    from slidecell.analysis.report import build_report
    from slidecell.analysis.report.figures import density_figure

    a, _ = tissue("compartmentalized", size_um=1500, seed=4)
    a.write_h5ad(tmp_path / "in.h5ad")
    out = analyze(tmp_path / "in.h5ad", tmp_path / "an", AnalysisConfig.model_validate({"stats": {"n_perms": 20}}))
    page = build_report(out).read_text()
    assert "marker histograms with gates" in page and "<th>Fraction positive</th>" in page
    comp = page[page.index('<section id="compartments">'):page.index('<section id="mixing">')]
    assert "Cells / mm² of each phenotype in each compartment" in comp
    assert re.search(r"<th>Tumor core</th>\s*<th>Invasive margin</th>\s*<th>Stroma</th>", comp)
    assert page.count('<p class="na">') == 2  # QC crops and provenance need the run
    a.obs["phenotype"] = a.obs["true_type"].astype("category")
    fig, _ = density_figure(a, "phenotype")
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert any(re.fullmatch(r"\d+ µm|\d+ mm", t) for t in texts), texts
