"""`slidecell run` end to end on real slides: outputs, QuPath schema, ownership, resume."""

from __future__ import annotations

import json
import math
import uuid

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from conftest import CMU1, NDPI, QPTIFF, need, qupath_check, write_ome_pyramid, write_rgb_pyramid
from slidecell import load_config, run
from slidecell.errors import OutputError
from slidecell.metrics import match_polygons as matched_pairs
from slidecell.metrics import max_overlap_fraction

FAST = {"reader": {"workers": 2}}


def match_cells(a: np.ndarray, b: np.ndarray, thr: float = 0.9) -> int:
    return len(matched_pairs(a, b, thr))


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
    # provenance: when, how, where, with what
    prov = summary["provenance"]
    assert prov["started"] <= prov["finished"] and prov["host"] and prov["cpu_count"] >= 1
    assert prov["packages"]["torch"].startswith("2.") and 0.1 < prov["peak_rss_gib"] < 24
    assert summary["slide_fingerprint"]["size"] == CMU1.stat().st_size and summary["roi_wkt"] is None
    weights = next(iter(summary["input_files"].values()))
    assert len(weights) == 64 and summary["segmentation"]["channels_used"]
    # nothing half-written left behind; the chunk cache goes once cells.parquet holds every cell
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert not (out / ".slidecell").exists() and not (out / ".slidecell.lock").exists()

    parquet = gpd.read_parquet(out / "cells.parquet")
    adata = ad.read_h5ad(out / "cells.h5ad")
    gj = gpd.read_file(out / "cells.geojson")
    assert len(parquet) == len(adata) == len(gj) == result.n_cells
    # AnnData: one row per polygon, channels in var, µm centroids in obsm
    assert list(adata.var_names) == ["Red", "Green", "Blue"]
    assert list(adata.obs_names) == list(parquet["cell_id"])
    # the shared identifiers in every table output
    assert (parquet["slide_id"].astype(str) == "CMU-1-Small-Region").all()
    assert list(adata.obs["slide_id"].astype(str)) == list(parquet["slide_id"].astype(str))
    assert np.allclose(adata.obsm["spatial"], parquet[["x"]].assign(y=parquet["y"]).to_numpy() * 0.499)
    assert {"area_um2", "eccentricity", "solidity", "perimeter_um"} <= set(adata.obs.columns)
    assert np.allclose(adata.X[:, 0], parquet["mean:Red"])
    # streamed, yet as small as anndata's own compressed writer makes it
    adata.write_h5ad(out.parent / "anndata-gzip.h5ad", compression="gzip")
    assert (out / "cells.h5ad").stat().st_size <= 1.5 * (out.parent / "anndata-gzip.h5ad").stat().st_size
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
    # QuPath's own import code reads every nucleus as a detection with every measurement
    q = qupath_check(out / "cells.geojson", pixel_size=0.499, image_size=(2220, 2967))
    assert q["objectsByClass"] == {"PathDetectionObject": len(feats)}
    names = set(feats[0]["properties"]["measurements"])
    assert {k for k, v in q["measurements"]["objectsWithMeasurement"].items() if v == len(feats)} == names
    ratio = q["measurements"]["areaMeasurementOverRoiArea"]["'Nucleus: Area µm^2' / ROI area"]
    assert ratio["offBy5Percent"] <= 0.01 * len(feats), ratio


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


#: side of the H&E mosaic of the seam tests (px at 0.5 µm/px)
MOSAIC = 2048


@pytest.fixture(scope="module")
def he_mosaic(tmp_path_factory):
    """2048×2048 px of real H&E at 0.5 µm/px: CMU-1-Small-Region (2220×2967) cut to its bottom-left
    2048², a JPEG tiled TIFF (extended by mirroring when MOSAIC is larger than the slide).
    benchmarks/bench_seams.py measures the same on a 4096² mirrored mosaic."""
    from slidecell import open_slide

    with open_slide(need(CMU1)) as r:
        img = r.read(0, 0, *r.dimensions, r.mpp)
    img = img[-MOSAIC:, :MOSAIC]  # the tissue-richest 2048² (CMU-1 is 2220 × 2967)
    canvas = np.pad(img, ((0, MOSAIC - img.shape[0]), (0, MOSAIC - img.shape[1]), (0, 0)), mode="symmetric")
    path = tmp_path_factory.mktemp("he_mosaic") / "he_mosaic.tif"
    write_rgb_pyramid(path, canvas, 0.5, levels=2)
    with open_slide(path) as r:
        pixels = r.read(0, 0, MOSAIC, MOSAIC, 0.5)
    return path, pixels


@pytest.fixture(scope="module")
def he_whole(he_mosaic):
    """The mosaic segmented as one image (no tiles) by the default model."""
    from slidecell.engine import TileContext, cells_from_labels
    from slidecell.segment import get_segmenter
    from slidecell.tiling import Tile

    _, pixels = he_mosaic
    seg = get_segmenter("builtin", {}, ("Red", "Green", "Blue"), "brightfield", 0.5)
    labels = seg.segment(pixels)
    h, w = labels.shape
    ctx = TileContext("whole", 1.0, 0.5, w, h, ("Red", "Green", "Blue"))
    return cells_from_labels(Tile(0, 0, 0, 0, 0, w, h, (0, 0, w, h)), pixels, labels, ctx)


@pytest.mark.parametrize("tile_size,offset", [(512, (0, 0)), (1000, (200, 333))])
def test_seams_tiled_equals_whole_image(he_mosaic, he_whole, tile_size, offset, tmp_path):
    """The tiled engine gives the cells of the image segmented whole, whatever the tile size and
    where the seams fall: ≥ 99% matched one-to-one at IoU ≥ 0.9 (also among the cells that
    straddle a seam), no two cells overlapping by more than 5%, none cut at a tile edge."""
    path, _ = he_mosaic
    cfg = load_config(None, {**FAST, "tissue": {"enabled": False},
                             "tiling": {"tile_size": tile_size, "grid_offset": list(offset)},
                             "output": {"geojson": False, "h5ad": False}})
    r = run(path, cfg, tmp_path / "t", progress=False)
    assert r.n_tiles == len(set(range(offset[0] % tile_size or tile_size, MOSAIC, tile_size)) | {0}) * \
        len(set(range(offset[1] % tile_size or tile_size, MOSAIC, tile_size)) | {0})
    tiled = gpd.read_parquet(tmp_path / "t" / "cells.parquet")
    ref = he_whole
    a, b = ref["geometry"].to_numpy(), tiled.geometry.to_numpy()
    pairs = matched_pairs(a, b, 0.9)
    assert len(a) > 1200  # 1,381 on 2048² (6,956 on a 4096² mosaic) with the shipped confidence threshold
    assert len(pairs) >= 0.99 * max(len(a), len(b)), (len(pairs), len(a), len(b))
    assert max_overlap_fraction(b) <= 0.05
    assert not tiled["touches_tile_edge"].any()
    assert shapely.is_valid(b).all()
    # cells of the whole image that a seam (core boundary) crosses come out whole as well
    lines = [shapely.LineString([(x, 0), (x, MOSAIC)]) for x in range(offset[0] % tile_size or tile_size, MOSAIC, tile_size)]
    lines += [shapely.LineString([(0, y), (MOSAIC, y)]) for y in range(offset[1] % tile_size or tile_size, MOSAIC, tile_size)]
    on_seam = np.flatnonzero(shapely.intersects(a[:, None], np.array(lines)[None, :]).any(axis=1))
    assert len(on_seam) > 30  # 48 with 1000-px tiles on 2048² (under 100: every one must match)
    assert np.isin(on_seam, pairs[:, 0]).mean() >= 0.99


def test_finished_run_is_protected(cmu1_run):
    _, out = cmu1_run
    before = (out / "cells.geojson").stat().st_mtime_ns
    with pytest.raises(OutputError, match="already holds a finished run.*--overwrite"):
        run(CMU1, load_config("he-brightfield"), out, progress=False)
    assert (out / "cells.geojson").stat().st_mtime_ns == before



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
    # the scan's filter record names its one channel: DAPI (RGB's blue)
    assert info["segmentation"]["channels_used"] == {"nuclear": ["DAPI"]}
    assert cells["mean:DAPI"].median() > 60


def test_run_qptiff_multiplex_preset(tmp_path):
    r = run(need(QPTIFF), load_config("multiplex-fluorescence"), tmp_path / "q", progress=False)
    adata = ad.read_h5ad(tmp_path / "q" / "cells.h5ad")
    assert list(adata.var_names) == ["DAPI", "FITC", "Cy3"]
    assert adata.n_obs == r.n_cells > 100
    # nuclei found on DAPI are DAPI-bright relative to the image, and brighter than their cells
    from slidecell import open_slide

    dapi = open_slide(QPTIFF).read_region(0, 0, 1920, 1440)[:, :, 0].astype(float)
    assert float(np.median(adata.layers["nucleus_mean"][:, 0])) > 3 * dapi.mean()
    assert (adata.layers["nucleus_mean"][:, 0] > adata.X[:, 0]).mean() > 0.95
    assert adata.uns["slidecell"]["modality"] == "fluorescence"
    # QuPath's own import code: whole cells, each with its nucleus inside, every marker kept
    q = qupath_check(tmp_path / "q" / "cells.geojson", pixel_size=adata.uns["slidecell"]["mpp"])
    assert q["objectsByClass"] == {"PathCellObject": r.n_cells}
    assert q["cells"]["withNucleusRoi"] == r.n_cells and q["cells"]["nucleusNotCoveredByCell"] == 0
    have = q["measurements"]["objectsWithMeasurement"]
    assert all(have.get(f"{c}: {m}: Mean") == r.n_cells for c in ("Cell", "Nucleus") for m in ("DAPI", "FITC", "Cy3"))


def _giant_nucleus_image(path):
    """Fluorescence at 1 µm/px: one 60 µm nucleus straddling the corner of four 128 px tile
    cores (far larger than the 8 µm overlap) and four ordinary 8 µm nuclei."""
    from skimage.draw import disk

    img = np.full((384, 384), 10, np.uint16)
    giant = np.zeros(img.shape, bool)
    giant[disk((138, 133), 30, shape=img.shape)] = True
    img[giant] = 1000
    for c in [(40, 40), (40, 330), (330, 40), (330, 330)]:
        img[disk(c, 4, shape=img.shape)] = 1000
    write_ome_pyramid(path, img[None], ["DAPI"], 1.0, levels=1, tile=64)
    return int(giant.sum())


@pytest.mark.parametrize("max_overlap_um,whole", [(64, True), (8, False)])
def test_cells_larger_than_the_overlap(tmp_path, max_overlap_um, whole):
    """A cell larger than the overlap reaches the edge of its tile's window: the engine reads
    that tile (and any neighbour that owns a piece of it) again with more context, so it comes out whole and
    once; when the context may not grow enough, the cut pieces are flagged and counted."""
    path = tmp_path / "giant.ome.tif"
    giant_px = _giant_nucleus_image(path)
    cfg = load_config(None, {
        "tissue": {"enabled": False, "modality": "fluorescence"},
        "tiling": {"mpp": 1.0, "tile_size": 128, "overlap_um": 8, "max_overlap_um": max_overlap_um},
        "segmentation": {"backend": "watershed", "params": {
            "background_radius_um": 0, "min_distance_um": 50, "max_area_um2": 10000, "threshold": 0.5}},
        "output": {"geojson": False, "h5ad": False}})
    r = run(path, cfg, tmp_path / "o", progress=False)
    cells = gpd.read_parquet(tmp_path / "o" / "cells.parquet")
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    small = cells[cells["area_um2"] < 100]
    assert len(small) == 4 and not small["touches_tile_edge"].any()
    big = cells[cells["area_um2"] >= 100]
    if whole:
        assert len(big) == 1
        assert big["area_um2"].iloc[0] == giant_px  # exact pixel count: nothing cut
        assert abs(big.geometry.iloc[0].area - giant_px) < 1e-6
        assert not big["touches_tile_edge"].any() and info["cells_touching_tile_edge"] == 0
        assert info["tiles_reread_for_large_cells"] >= 1
    else:
        assert big["touches_tile_edge"].all() and len(big) >= 1
        assert info["cells_touching_tile_edge"] == len(big)
        assert big["area_um2"].max() < giant_px
    assert max_overlap_fraction(cells.geometry[~cells["touches_tile_edge"]].to_numpy()) <= 0.05
    assert r.n_cells == len(cells)


def _cells(out):
    return gpd.read_parquet(out / "cells.parquet").sort_values("cell_id").reset_index(drop=True)


@pytest.mark.parametrize("engine", [{"post_workers": 0}, {"post_workers": 2, "post_parallel": "processes"}])
def test_post_processing_pool_does_not_change_cells(cmu1_run, tmp_path, engine):
    """Post-processing in the model's thread, or in processes fed through shared memory, gives
    the same cells, bit for bit, as the default thread pool: on a region over four tiles, the
    whole slide's cells in it (a region's cells are the whole slide's: test below)."""
    _, out = cmu1_run
    x, y, w, h = 700, 1500, 900, 900
    cfg = load_config("he-brightfield", {**FAST, "engine": engine, "roi": [x, y, w, h]})
    res = run(CMU1, cfg, tmp_path / "p", progress=False)
    assert res.n_tiles == 4
    full = _cells(out)
    a = full[(full.x >= x) & (full.x < x + w) & (full.y >= y) & (full.y < y + h)].reset_index(drop=True)
    b = _cells(tmp_path / "p")
    assert len(a) > 300
    assert list(a["cell_id"]) == list(b["cell_id"])
    assert all(p.equals_exact(q, 0) for p, q in zip(a.geometry, b.geometry))
    # every column but the tile's number in its plan (a region's plan numbers its own tiles)
    pd.testing.assert_frame_equal(a.drop(columns=["geometry", "tile"]), b.drop(columns=["geometry", "tile"]))


def test_resume_refuses_swapped_weights(tmp_path):
    """Files the run reads are fingerprinted by content: weights replaced at the same path
    between a stop and a resume make the resume refuse to mix two models' cells; the original
    weights resume."""
    import shutil

    from slidecell.segment.builtin.weights import WEIGHTS_DIR

    weights = tmp_path / "w.safetensors"
    shutil.copy(WEIGHTS_DIR / "nuclei.safetensors", weights)
    cfg = load_config("he-brightfield", {"roi": [800, 1200, 400, 400],
                                         "output": {"geojson": False, "h5ad": False, "keep_chunks": True},
                                         "segmentation": {"params": {"model": str(weights)}}})
    out = tmp_path / "o"
    first = run(need(CMU1), cfg, out, progress=False)
    summary = json.loads((out / "run.json").read_text())
    assert list(summary["input_files"]) == [f"segmentation:{weights}"]
    (out / "run.json").unlink()  # as if stopped after its last chunk
    shutil.copy(WEIGHTS_DIR / "nuclei-research.safetensors", weights)
    with pytest.raises(OutputError, match="input_files"):
        run(CMU1, cfg, out, progress=False)
    shutil.copy(WEIGHTS_DIR / "nuclei.safetensors", weights)
    again = run(CMU1, cfg, out, progress=False)
    assert again.n_cells == first.n_cells and again.resumed_chunks == 1


@pytest.mark.parametrize("expansion,stains", [(0.0, "auto"), (3.0, "auto"), (0.0, "estimate")],
                         ids=["nuclei", "cells", "estimated-stains"])
def test_stain_od_and_shape_as_qupath(tmp_path, expansion, stains):
    """H&E: each object's mean Hematoxylin and Eosin optical density equals a plain numpy colour
    deconvolution (QuPath's: OD = -log10(max(v, 1) / 255), unit stain vectors, the residual as
    their cross product) of its pixels in the label image, with QuPath's default vectors or the
    slide's own (estimated, recorded in run.json, near the defaults); QuPath reads them under its
    names, with circularity, calipers and, for whole cells, the nucleus' shape and area ratio."""
    import tifffile

    from slidecell import open_slide

    cfg = load_config("he-brightfield", {"roi": [700, 1700, 600, 600], "tiling": {"tile_size": 256},
                                         "segmentation": {"cell_expansion_um": expansion},
                                         "measure": {"stains": stains},
                                         "output": {"label_image": True, "h5ad": False}})
    res = run(need(CMU1), cfg, tmp_path / "o", progress=False)
    (hn, h), (en, e) = res.info["stain_vectors"]
    default_h, default_e = np.array([0.65, 0.70, 0.29]), np.array([0.2159, 0.8012, 0.5581])
    if stains == "auto":
        assert (hn, en) == ("Hematoxylin", "Eosin") and np.allclose(h, default_h) and np.allclose(e, default_e)
    else:  # the slide's own: within 15° of the defaults, not equal to them
        for v, ref in ((h, default_h), (e, default_e)):
            angle = np.degrees(np.arccos(np.dot(v, ref) / np.linalg.norm(v) / np.linalg.norm(ref)))
            assert 0.5 < angle < 15, angle
    cells = gpd.read_parquet(tmp_path / "o" / "cells.parquet")
    labels = tifffile.imread(tmp_path / "o" / "cells_labels.ome.tif")  # label k = row k - 1
    rgb = open_slide(CMU1).read_region(0, 0, labels.shape[1], labels.shape[0])[:, :, :3].astype(np.float64)
    od = np.maximum(0, -np.log10(np.maximum(rgb, 1) / 255)).reshape(-1, 3)
    h, e = np.asarray(h) / np.linalg.norm(h), np.asarray(e) / np.linalg.norm(e)
    r = np.cross(h, e)
    stains = od @ np.linalg.inv(np.stack([h, e, r / np.linalg.norm(r)]))[:, :2]
    flat = labels.ravel()
    count = np.bincount(flat, minlength=len(cells) + 1)[1:]
    comp = "cell" if expansion else "nucleus"
    for k, name in enumerate(("Hematoxylin", "Eosin")):
        expect = np.bincount(flat, stains[:, k], minlength=len(cells) + 1)[1:] / count
        np.testing.assert_allclose(cells[f"{comp}_od_{name}"], expect, rtol=1e-4)
    assert (cells["nucleus_od_Hematoxylin"] > cells["nucleus_od_Eosin"]).mean() > 0.9  # nuclei are haematoxylin
    assert cells["circularity"].between(0.1, 1).all() and (cells["max_caliper_um"] >= cells["min_caliper_um"]).all()
    assert np.allclose(cells["circularity"], 4 * np.pi * cells["area_um2"] / cells["perimeter_um"] ** 2)
    q = qupath_check(tmp_path / "o" / "cells.geojson", pixel_size=0.499)
    have = {k for k, v in q["measurements"]["objectsWithMeasurement"].items() if v == res.n_cells}
    prim = "Cell" if expansion else "Nucleus"
    want = {f"{prim}: Circularity", f"{prim}: Max caliper µm", f"{prim}: Min caliper µm",
            "Nucleus: Hematoxylin OD mean", "Nucleus: Eosin OD mean"}
    if expansion:
        want |= {"Cytoplasm: Eosin OD mean", "Cell: Eosin OD mean", "Nucleus/Cell area ratio", "Nucleus: Circularity",
                 "Nucleus: Max caliper µm", "Nucleus: Area µm^2"}
        assert cells["nucleus_cell_area_ratio"].between(0, 1).all()
        assert (cells["cytoplasm_od_Eosin"] > 0).mean() > 0.9
    assert want <= have, want - have


def test_resume_refuses_changed_annotations(tmp_path):
    """The annotations choosing the region are fingerprinted by content: a file edited between a
    stop and a resume is refused, even where its region is the same; the original resumes."""
    feature = {"type": "Feature", "geometry": shapely.geometry.mapping(shapely.box(800, 1200, 1200, 1600)),
               "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}
    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    original = ann.read_bytes()
    cfg = load_config("he-brightfield", {"output": {"geojson": False, "h5ad": False, "keep_chunks": True}})
    out = tmp_path / "o"
    first = run(need(CMU1), cfg, out, annotations=ann, progress=False)
    assert f"annotations:{ann}" in json.loads((out / "run.json").read_text())["input_files"]
    (out / "run.json").unlink()  # as if stopped after its last chunk
    feature["properties"]["classification"]["name"] = "Stroma"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(OutputError, match="input_files"):
        run(CMU1, cfg, out, annotations=ann, progress=False)
    ann.write_bytes(original)
    again = run(CMU1, cfg, out, annotations=ann, progress=False)
    assert again.n_cells == first.n_cells > 50 and again.resumed_chunks == 1


def test_a_region_gives_the_whole_slides_cells_in_it(cmu1_run, tmp_path):
    """`--roi` reads the region and its context only (its tiles' cores cut to the region), and
    its cells are exactly the whole slide's cells whose centroid lies in it: same ids, outlines,
    measurements."""
    _, out = cmu1_run
    full = gpd.read_parquet(out / "cells.parquet")
    x, y, w, h = 700, 1700, 500, 500
    res = run(CMU1, load_config("he-brightfield", {**FAST, "roi": [x, y, w, h]}), tmp_path / "roi", progress=False)
    part = gpd.read_parquet(tmp_path / "roi" / "cells.parquet").set_index("cell_id")
    plan = json.loads((tmp_path / "roi" / "run.json").read_text())["plan"]
    assert plan["window_pixels"] < 0.3 * plan["tiles"] * 1024**2  # not whole 1024-px tiles
    inside = full[(full.x >= x) & (full.x < x + w) & (full.y >= y) & (full.y < y + h)].set_index("cell_id")
    assert res.n_cells == len(part) == len(inside) > 100
    assert set(part.index) == set(inside.index)
    inside = inside.loc[part.index]
    assert part.geometry.geom_equals_exact(inside.geometry, 1e-6).all()
    cols = [c for c in part.columns if c.startswith("mean:") or c in ("area_um2", "confidence")]
    assert np.array_equal(part[cols].to_numpy(), inside[cols].to_numpy())


def test_confidence_column_and_threshold(cmu1_run, tmp_path):
    """Every nucleus carries the model's confidence (parquet, h5ad obs, QuPath 'Detection
    probability'); raising params.min_confidence keeps exactly the cells at or above it."""
    result, out = cmu1_run
    cells = gpd.read_parquet(out / "cells.parquet")
    floor = json.loads((out / "run.json").read_text())["segmentation"]["min_confidence"]
    assert cells["confidence"].between(floor, 1).all()
    adata = ad.read_h5ad(out / "cells.h5ad")
    assert np.allclose(adata.obs["confidence"], cells["confidence"])
    feat = json.loads((out / "cells.geojson").read_text())["features"][0]
    assert feat["properties"]["measurements"]["Detection probability"] == pytest.approx(cells["confidence"].iloc[0],
                                                                                         abs=1e-3)
    roi = {"roi": [700, 1700, 500, 500], "output": {"geojson": False, "h5ad": False}}
    counts = []
    base = None
    for thr in (0.0, 0.8, 0.9):
        cfg = load_config("he-brightfield", {**roi, "segmentation": {"params": {"min_confidence": thr}}})
        run(CMU1, cfg, tmp_path / f"c{thr}", progress=False)
        t = gpd.read_parquet(tmp_path / f"c{thr}" / "cells.parquet")
        assert (t["confidence"] >= thr).all()
        counts.append(len(t))
        if base is None:
            base = t
        else:  # the cells kept are the ones the unfiltered run scored at or above the threshold
            assert set(t["cell_id"]) == set(base.loc[base["confidence"] >= thr, "cell_id"])
    assert counts[0] > counts[1] > counts[2] > 0


def test_cmu1_demo_specificity(cmu1_run):
    """The demo slide (H&E skin): almost no tiny fragments or near-white objects, few objects on
    the teal tissue-marking ink (mean colour greener than red, which haematoxylin never is),
    and the nuclei of the epidermis and dermis still found. Shipped nuclei (min_confidence 0.82,
    4 µm²): 2,442 nuclei, 1.1 % under 5 µm², 1 near-white, 132 ink-coloured (before the
    confidence threshold: 4,569, 18.7 %, 151 and 338); 23 in the epidermis box, 106 in the
    dermis box."""
    _, out = cmu1_run
    d = gpd.read_parquet(out / "cells.parquet")
    assert (d["area_um2"] < 5).mean() < 0.03
    R, G, B = d["mean:Red"], d["mean:Green"], d["mean:Blue"]
    assert ((R > 200) & (G > 200) & (B > 200)).sum() <= 5
    assert (G > R + 10).sum() <= 160  # not yet none (benchmarks/RESULTS.md, specificity)
    boxes = {"epidermis": ((1120, 1820, 1300, 2000), 18), "dermis": ((680, 2200, 1000, 2600), 80)}
    for name, ((x0, y0, x1, y1), least) in boxes.items():
        n = int(((d.x > x0) & (d.x < x1) & (d.y > y0) & (d.y < y1)).sum())
        assert n >= least, (name, n)


def test_memory_estimate_refuses_what_cannot_fit(cmu1_run, tmp_path, monkeypatch):
    """The run estimates its peak memory from the plan before reading a tile (recorded in
    run.json) and refuses, with one line naming the knobs, a plan that needs more than is
    available."""
    import slidecell.engine.plan as engine_plan
    from slidecell.errors import ConfigError
    from slidecell.tiling import TileStream

    _, out = cmu1_run
    est = json.loads((out / "run.json").read_text())["memory_estimate_gib"]
    assert 1.0 < est < 4.0  # 1280² RGB windows, batch 2 on the CPU: ~2 GiB, mostly the model
    reads = []
    monkeypatch.setattr(engine_plan, "available_memory", lambda: 512 * 2**20)
    monkeypatch.setattr(TileStream, "__enter__", lambda self: reads.append(1) or self)
    cfg = load_config("he-brightfield", {"reader": {"prefetch": 64}, "roi": [0, 0, 2048, 2048]})
    with pytest.raises(ConfigError, match=r"needs about .* GiB of memory .* reader.prefetch 64.* 0.5 GiB are "
                                          r"available: lower tiling.tile_size or reader.prefetch"):
        run(need(CMU1), cfg, tmp_path / "big", progress=False)
    assert not reads  # refused before any tile was read
