"""`slidecell run` end to end on real slides: outputs, QuPath schema, ownership, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from conftest import CMU1, NDPI, QPTIFF, need
from slidecell import load_config, run
from slidecell.errors import OutputError

FAST = {"reader": {"workers": 2}}


def match_cells(a: np.ndarray, b: np.ndarray, thr: float = 0.9):
    """One-to-one matches between two polygon arrays at IoU ≥ thr (greedy on IoU)."""
    tree = shapely.STRtree(b)
    ia, ib = tree.query(a, predicate="intersects")
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    iou = inter / (shapely.area(a[ia]) + shapely.area(b[ib]) - inter)
    order = np.argsort(-iou)
    used_a, used_b, n = set(), set(), 0
    for k in order:
        if iou[k] < thr:
            break
        if ia[k] not in used_a and ib[k] not in used_b:
            used_a.add(ia[k]); used_b.add(ib[k]); n += 1
    return n


def max_overlap_fraction(polys: np.ndarray) -> float:
    tree = shapely.STRtree(polys)
    i, j = tree.query(polys, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    if not len(i):
        return 0.0
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    return float(np.max(inter / np.minimum(shapely.area(polys[i]), shapely.area(polys[j]))))


@pytest.fixture(scope="module")
def cmu1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmu1")
    cfg = load_config("he-brightfield", FAST)
    result = run(need(CMU1), cfg, out, progress=False)
    return result, out


def test_run_outputs(cmu1_run):
    result, out = cmu1_run
    assert 1500 < result.n_cells < 6000
    assert set(result.outputs) == {"geojson", "parquet", "h5ad"}
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "complete" and summary["n_cells"] == result.n_cells
    assert (out / "config.yaml").exists()
    # nothing half-written left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    parquet = gpd.read_parquet(out / "cells.parquet")
    adata = ad.read_h5ad(out / "cells.h5ad")
    gj = gpd.read_file(out / "cells.geojson")
    assert len(parquet) == len(adata) == len(gj) == result.n_cells
    # AnnData: one row per polygon, channels in var, µm centroids in obsm
    assert list(adata.var_names) == ["Red", "Green", "Blue"]
    assert list(adata.obs_names) == list(parquet["cell_id"])
    assert np.allclose(adata.obsm["spatial"], parquet[["x"]].assign(y=parquet["y"]).to_numpy() * 0.499)
    assert {"area_um2", "eccentricity", "solidity", "perimeter_um"} <= set(adata.obs.columns)
    assert np.allclose(adata.X[:, 0], parquet["mean:Red"])
    # polygons: valid, in level-0 pixels, areas agree with the pixel-count area
    geoms = parquet.geometry.to_numpy()
    assert shapely.is_valid(geoms).all()
    assert np.allclose(shapely.area(geoms) * 0.499**2, parquet["area_um2"], rtol=0.25)
    minx, miny, maxx, maxy = parquet.total_bounds
    assert 0 <= minx and 0 <= miny and maxx <= 2220 and maxy <= 2967
    # nuclei are darker than their surroundings in haematoxylin-rich red channel
    assert parquet["mean:Red"].median() < 180
    # every cell exactly once: no two outlines overlap by more than 5% of the smaller one
    assert max_overlap_fraction(geoms) <= 0.05


def test_geojson_follows_qupath_schema(cmu1_run):
    _, out = cmu1_run

    def no_nan(name):
        raise AssertionError(f"non-finite number {name} in GeoJSON")

    data = json.loads((out / "cells.geojson").read_text(encoding="utf-8"), parse_constant=no_nan)
    assert data["type"] == "FeatureCollection"
    feats = data["features"]
    ids = set()
    for f in feats[:500]:
        assert f["type"] == "Feature"
        assert str(uuid.UUID(f["id"])) == f["id"]
        ids.add(f["id"])
        assert set(f) == {"type", "id", "geometry", "properties"}
        assert "objectType" not in f  # inside properties, as QuPath expects
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert isinstance(props["measurements"], dict)
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in props["measurements"].values())
        assert {"Nucleus: Area µm^2", "Nucleus: Red: Mean"} <= set(props["measurements"])
        assert f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
    assert len(ids) == min(500, len(feats))
    assert len({f["id"] for f in feats}) == len(feats)


def test_same_cells_whatever_the_tiling(cmu1_run, tmp_path):
    """Ownership by centroid: another tile size gives the same cells, none duplicated."""
    result, out = cmu1_run
    a = gpd.read_parquet(out / "cells.parquet")
    cfg = load_config("he-brightfield", {**FAST, "tiling": {"tile_size": 384, "chunk_tiles": 7}})
    r2 = run(CMU1, cfg, tmp_path / "t384", progress=False)
    b = gpd.read_parquet(tmp_path / "t384" / "cells.parquet")
    assert r2.n_tiles > result.n_tiles
    n = match_cells(a.geometry.to_numpy(), b.geometry.to_numpy(), 0.9)
    assert n >= 0.98 * max(len(a), len(b)), (n, len(a), len(b))
    assert max_overlap_fraction(b.geometry.to_numpy()) <= 0.05
    # ids come from the centroid: matched cells keep their id
    assert len(set(a["cell_id"]) & set(b["cell_id"])) >= 0.95 * len(a)


def test_finished_run_is_protected(cmu1_run):
    _, out = cmu1_run
    before = (out / "cells.geojson").stat().st_mtime_ns
    with pytest.raises(OutputError, match="already holds a finished run.*--overwrite"):
        run(CMU1, load_config("he-brightfield"), out, progress=False)
    assert (out / "cells.geojson").stat().st_mtime_ns == before


def _cells(out):
    t = gpd.read_parquet(out / "cells.parquet").sort_values("cell_id").reset_index(drop=True)
    return t


def test_killed_run_resumes_to_the_same_cells(tmp_path):
    need(CMU1)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("tiling: {tile_size: 256, chunk_tiles: 2}\nreader: {workers: 1}\n")
    ref = run(CMU1, load_config(cfg_path), tmp_path / "ref", progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slidecell.cli", "run", str(CMU1), "-c", str(cfg_path), "-o", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    chunks = out / ".slidecell" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.parquet")) if chunks.exists() else []) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(chunks.glob("chunk-*.parquet")))
    assert 4 <= done < math.ceil(ref.n_tiles / 2), "the run should be killed part-way"
    assert not (out / "run.json").exists()
    # a different config must not be mixed into the unfinished run
    with pytest.raises(OutputError, match="unfinished run of a different slide or config"):
        run(CMU1, load_config(None, {"tiling": {"tile_size": 512}}), out, progress=False)
    resumed = run(CMU1, load_config(cfg_path), out, progress=False)
    assert resumed.resumed_chunks >= 4
    a, b = _cells(tmp_path / "ref"), _cells(out)
    assert list(a["cell_id"]) == list(b["cell_id"])
    assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry))
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))


def test_overwrite_replaces_a_finished_run(tmp_path):
    cfg = load_config("he-brightfield", {"roi": [800, 1200, 600, 600]})
    r1 = run(need(CMU1), cfg, tmp_path / "o", progress=False)
    r2 = run(CMU1, cfg, tmp_path / "o", overwrite=True, progress=False)
    assert r1.n_cells == r2.n_cells > 50
    cells = gpd.read_parquet(tmp_path / "o" / "cells.parquet")
    # ROI: every centroid inside the box
    assert cells["x"].between(800, 1400).all() and cells["y"].between(1200, 1800).all()


def test_run_ndpi_fluorescence_region(tmp_path):
    cfg = load_config(None, {"roi": [1000, 1500, 1500, 1500], "tiling": {"tile_size": 512}})
    r = run(need(NDPI), cfg, tmp_path / "n", progress=False)
    info = json.loads((tmp_path / "n" / "run.json").read_text())
    assert info["modality"] == "fluorescence"
    assert info["plan"]["level"] == 1  # 0.5 µm/px from the 0.456 µm/px level, resampled
    assert r.n_cells > 20
    cells = gpd.read_parquet(tmp_path / "n" / "cells.parquet")
    # DAPI nuclei are bright in the blue channel
    assert cells["mean:Blue"].median() > 60


def test_run_qptiff_multiplex_preset(tmp_path):
    r = run(need(QPTIFF), load_config("multiplex-fluorescence"), tmp_path / "q", progress=False)
    adata = ad.read_h5ad(tmp_path / "q" / "cells.h5ad")
    assert list(adata.var_names) == ["DAPI", "FITC", "Cy3"]
    assert adata.n_obs == r.n_cells > 100
    # nuclei found on DAPI are DAPI-bright relative to the image
    from slidecell import open_slide

    dapi = open_slide(QPTIFF).read_region(0, 0, 1920, 1440)[:, :, 0].astype(float)
    assert float(np.median(adata.X[:, 0])) > 3 * dapi.mean()
    assert adata.uns["slidecell"]["modality"] == "fluorescence"
