"""The Snakemake cohort workflow, for real: three real slides and a synthetic one, --cores 2;
and a dry run with the SLURM profile. Needs .venv-workflow (workflows/setup.sh; scripts/test.sh
sets it up)."""

from __future__ import annotations

import subprocess

import anndata as ad
import pandas as pd
import pytest

from conftest import CMU1, NDPI, QPTIFF, REPO, need

SNAKEMAKE = REPO / ".venv-workflow" / "bin" / "snakemake"


@pytest.fixture(scope="module")
def cohort_config(tmp_path_factory):
    if not SNAKEMAKE.exists():
        pytest.skip("snakemake not installed (bash workflows/setup.sh)")
    tmp = tmp_path_factory.mktemp("wf")
    from test_multiplex import _synthetic_multiplex

    synth, _, _, _ = _synthetic_multiplex(tmp, n_markers=4, size=480)
    (tmp / "qptiff.yaml").write_text(
        "analysis:\n  phenotype:\n    gating:\n      phenotypes:\n"
        "        - {name: Tumor, pos: [FITC]}\n        - {name: Immune, pos: [Cy3], neg: [FITC]}\n"
        "  stats: {n_perms: 20}\n")
    (tmp / "synth.yaml").write_text(
        "analysis:\n  phenotype:\n    gating:\n      phenotypes:\n"
        "        - {name: Tumor, pos: [Marker00]}\n        - {name: Immune, pos: [Marker01], neg: [Marker00]}\n"
        "  stats: {n_perms: 20}\n")
    sheet = pd.DataFrame([
        {"sample": "cmu1", "slide": need(CMU1), "config": "he-brightfield", "mpp": "", "analysis": ""},
        {"sample": "ndpi", "slide": need(NDPI), "config": "multiplex-fluorescence", "mpp": "", "analysis": ""},
        {"sample": "vectra", "slide": need(QPTIFF), "config": "multiplex-fluorescence", "mpp": "",
         "analysis": tmp / "qptiff.yaml"},
        {"sample": "synthetic", "slide": synth, "config": "multiplex-fluorescence", "mpp": "", "analysis": tmp / "synth.yaml"},
    ])
    sheet.to_csv(tmp / "samples.csv", index=False)
    (tmp / "cohort.yaml").write_text(f"samples: {tmp / 'samples.csv'}\nout: {tmp / 'out'}\n")
    return tmp


def test_cohort_workflow_runs(cohort_config):
    tmp = cohort_config
    r = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "workflows" / "Snakefile"), "--configfile",
                        str(tmp / "cohort.yaml"), "--cores", "2", "--directory", str(tmp), "--quiet"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp / "out"
    c = ad.read_h5ad(out / "cohort" / "cohort.h5ad")
    assert set(c.obs["sample"].unique()) == {"cmu1", "ndpi", "vectra", "synthetic"}
    # each slide's tissue image, under the slide's id (squidpy: library_key="slide_id")
    assert set(c.uns["spatial"]) == set(c.obs["slide_id"].astype(str).unique()) and len(c.uns["spatial"]) == 4
    summary = pd.read_csv(out / "cohort" / "cohort_summary.csv").set_index("sample")
    for s in summary.index:
        assert summary.loc[s, "cells"] == (c.obs["sample"] == s).sum() > 50
    assert summary.loc["vectra", "mixing_class"] in {"cold", "compartmentalized", "mixed"}
    assert (out / "vectra" / "analysis" / "report.html").exists() and (out / "synthetic" / "analysis" / "report.html").exists()
    assert not (out / "cmu1" / "analysis").exists()
    page = (out / "cohort" / "cohort_report.html").read_text()
    assert "Cohort of 4 slides" in page and page.count('<img class="plot"') >= 4
    enrich = pd.read_csv(out / "cohort" / "cohort_enrichment.csv")
    assert set(enrich["sample"]) == {"vectra", "synthetic"} and {"Tumor", "Immune"} <= set(enrich["a"])


def test_slurm_profile_dry_run(cohort_config):
    """The SLURM profile plans every job (into a fresh output folder, so nothing is done yet)."""
    import re

    tmp = cohort_config
    (tmp / "dry.yaml").write_text(f"samples: {tmp / 'samples.csv'}\nout: {tmp / 'dry-out'}\n")
    r = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "workflows" / "Snakefile"), "--configfile",
                        str(tmp / "dry.yaml"), "--profile", str(REPO / "workflows" / "profiles" / "slurm"),
                        "--directory", str(tmp / "dry"), "-n"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = dict(re.findall(r"^(run|analyze|cohort|total)\s+(\d+)$", r.stdout, flags=re.M))
    assert counts == {"run": "4", "analyze": "2", "cohort": "1", "total": "8"}, r.stdout[-2000:]
    assert "slurm_partition=normal" in r.stdout and not (tmp / "dry-out").exists()
