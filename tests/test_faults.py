"""The fault-injection matrix: `slidecell run` and `slidecell export` killed (SIGKILL), interrupted
(SIGINT, Ctrl-C) or terminated (SIGTERM, scancel) at each stage of their work, on a real slide.

Each case runs the CLI in a process of its own that sends itself the signal at a chosen call
(``fault_inject.py``), then runs the same command again. Every case must end with the outputs
of an uninterrupted run, byte for byte where the format allows (GeoJSON, CSV), equal tables and
pixels otherwise, and nothing else left in the folder (no temporary files). An interrupted
process exits 130 / 143 with one line saying how to resume.

Cases after the last tile start from a copy of the reference run's finished chunks (the state a
run has when its last tile is done), so that each pays only for its output stage.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from conftest import CMU1, need

HERE = Path(__file__).resolve().parent
ROI = "700,1700,600,600"
CONFIG = "tiling: {tile_size: 256, chunk_tiles: 1}\noutput: {csv: true, zarr: true, label_image: true}\n"
ANALYSIS = "analysis: {phenotype: {gating: {phenotypes: [{name: Dark, neg: [Red]}]}}, stats: {n_perms: 10}}\n"
EXIT = {"KILL": -9, "INT": 130, "TERM": 143}
LAST_LINE = {"INT": "slidecell: interrupted; run the same command again to resume",
             "TERM": "slidecell: terminated (SIGTERM); run the same command again to resume"}


class Cli:
    """`slidecell` commands run by ``fault_inject.py --serve``: each in its own process, forked
    from one that has imported slidecell once."""

    def __init__(self, base: Path):
        self.base, self.n = base, 0
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fault_inject.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self, *args, fault=None, timeout: float = 600) -> subprocess.CompletedProcess:
        self.n += 1
        err = self.base / f"stderr-{self.n}.txt"
        self.proc.stdin.write(json.dumps({"args": list(map(str, args)), "stderr": str(err), "fault": fault}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"slidecell {' '.join(map(str, args))}: no answer in {timeout} s"
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return subprocess.CompletedProcess(args, rc, "", err.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs (without and with an analysis stage) and exports, as the cases run them."""
    need(CMU1)
    base = tmp_path_factory.mktemp("faults")
    (base / "c.yaml").write_text(CONFIG)
    (base / "analysis.yaml").write_text(CONFIG + ANALYSIS)
    cli = Cli(base)
    ref = base / "ref"
    done = cli(*run_args(base, ref))
    assert done.returncode == 0, done.stderr
    # the analysis reference: the same cells (the analysis section does not change them)
    shutil.copytree(ref / ".slidecell", base / "ref-analysis" / ".slidecell")
    done = cli(*run_args(base, base / "ref-analysis", analysis=True))
    assert done.returncode == 0, done.stderr
    exports = {}
    for fmt, name in (("geojson", "cells.geojson"), ("zarr", "cells.zarr")):
        exports[fmt] = base / "exports" / name
        done = cli("export", ref, "--to", fmt, "-o", exports[fmt])
        assert done.returncode == 0, done.stderr
    yield cli, base, exports
    cli.close()


def run_args(base: Path, out: Path, analysis: bool = False) -> list:
    # the chunk cache kept: the cases after the last tile start from the reference's
    return ["run", CMU1, "-c", base / ("analysis.yaml" if analysis else "c.yaml"), "--roi", ROI, "-o", out, "-q",
            "--keep-chunks"]


def leftovers(folder: Path) -> list[str]:
    """Temporary files anywhere under ``folder`` except slidecell's work folder."""
    return [str(p.relative_to(folder)) for p in folder.rglob(".tmp-*") if ".slidecell" not in p.parts]


def assert_same_run(ref: Path, out: Path) -> None:
    visible = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert visible(out) == visible(ref)
    assert leftovers(out) == []
    for name in ("cells.geojson", "cells.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert pq.read_table(out / "cells.parquet").equals(pq.read_table(ref / "cells.parquet"))
    for a, b in ((ad.read_h5ad(ref / "cells.h5ad"), ad.read_h5ad(out / "cells.h5ad")),
                 (ad.read_zarr(ref / "cells.zarr"), ad.read_zarr(out / "cells.zarr"))):
        assert a.n_obs == b.n_obs > 100
        np.testing.assert_array_equal(a.X, b.X)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    np.testing.assert_array_equal(tifffile.imread(out / "cells_labels.ome.tif"),
                                  tifffile.imread(ref / "cells_labels.ome.tif"))
    a, b = (json.loads((d / "run.json").read_text()) for d in (ref, out))
    assert b["status"] == "complete" and b["n_cells"] == a["n_cells"]
    if (ref / "analysis").exists():
        assert b["analysis_stage"]["status"] == "complete"
        assert visible(out / "analysis") == visible(ref / "analysis")
        pa, pb = (ad.read_h5ad(d / "analysis" / "cells_analyzed.h5ad").obs["phenotype"] for d in (ref, out))
        assert list(pa) == list(pb) and pa.nunique() == 2


def assert_stopped(proc, sig: str) -> None:
    assert proc.returncode == EXIT[sig], proc.stderr
    if sig in LAST_LINE:
        assert proc.stderr.strip().splitlines()[-1] == LAST_LINE[sig], proc.stderr
        assert "Traceback" not in proc.stderr


# (stage, target, nth call, before/after, the argument naming the file)
RUN_POINTS = {
    "planning": ("slidecell.engine.run:plan_tiles", 1, "before", ""),
    "calibration": ("slidecell.engine.run:write_text_atomic", 1, "before", "manifest.json"),
    "chunks": ("slidecell.engine.pipeline:write_chunk", 4, "after", ""),
    # after the last tile: cells.parquet renamed into place, the other outputs not yet
    "outputs": ("os:replace", 1, "after", "cells.parquet"),
    "zarr": ("os:replace", 1, "before", "cells.zarr"),
    "label image": ("os:replace", 1, "before", "cells_labels.ome.tif"),
    "run.json": ("os:replace", 1, "before", "run.json"),
    "analysis": ("slidecell.analysis.report:build_report", 1, "before", ""),
}
AFTER_LAST_TILE = {"outputs", "zarr", "label image", "run.json", "analysis"}
RUN_CASES = [("planning", "KILL"), ("planning", "INT"), ("calibration", "KILL"), ("chunks", "KILL"),
             ("chunks", "INT"), ("chunks", "TERM"), ("outputs", "KILL"), ("outputs", "INT"), ("zarr", "KILL"),
             ("label image", "KILL"), ("label image", "INT"), ("run.json", "KILL"), ("analysis", "KILL"),
             ("analysis", "INT")]


@pytest.mark.parametrize("stage,sig", RUN_CASES, ids=[f"{s}-{g}" for s, g in RUN_CASES])
def test_run_stopped_then_resumed(reference, stage, sig):
    cli, base, _ = reference
    ref = base / ("ref-analysis" if stage == "analysis" else "ref")
    out = base / f"run-{stage.replace(' ', '_')}-{sig}"
    if stage in AFTER_LAST_TILE:  # the state of a run whose last tile is done
        shutil.copytree(ref / ".slidecell", out / ".slidecell")
    args = run_args(base, out, analysis=stage == "analysis")
    target, nth, when, match = RUN_POINTS[stage]
    stopped = cli(*args, fault=[target, nth, when, sig, match])
    assert_stopped(stopped, sig)
    info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    if stage != "analysis":
        assert not info, "a stopped run must not look finished"
    else:
        assert info["status"] == "complete" and info["analysis_stage"]["status"] != "complete"
    if stage == "chunks":
        assert 4 <= len(list((out / ".slidecell" / "chunks").glob("chunk-*.parquet"))) < 10
        # another config is not mixed into the unfinished run
        other = cli("run", CMU1, "--roi", ROI, "-o", out, "-q")
        assert other.returncode == 2 and "unfinished run of a different slide or config" in other.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert_same_run(ref, out)


EXPORT_CASES = [("geojson", "slidecell.io.writers:GeoJSONWriter.write", "after", "", "KILL"),
                ("geojson", "slidecell.io.writers:GeoJSONWriter.write", "after", "", "INT"),
                ("zarr", "os:replace", "before", "cells.zarr", "KILL")]


@pytest.mark.parametrize("fmt,target,when,match,sig", EXPORT_CASES, ids=[f"{c[0]}-{c[-1]}" for c in EXPORT_CASES])
def test_export_stopped_then_repeated(reference, fmt, target, when, match, sig):
    """An export stopped part-way leaves no file at its destination and no temporary file beside
    it; the same command then writes what an uninterrupted export writes."""
    cli, base, exports = reference
    dest = base / f"export-{fmt}-{sig}" / exports[fmt].name
    args = ["export", base / "ref", "--to", fmt, "-o", dest]
    assert_stopped(cli(*args, fault=[target, 1, when, sig, match]), sig)
    assert not dest.exists()
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert leftovers(dest.parent) == []
    if fmt == "geojson":
        assert dest.read_bytes() == exports[fmt].read_bytes()
    else:
        a, b = ad.read_zarr(exports[fmt]), ad.read_zarr(dest)
        np.testing.assert_array_equal(a.X, b.X)
        pd.testing.assert_frame_equal(a.obs, b.obs)
