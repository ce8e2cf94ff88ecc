"""QuPath GeoJSON: reading QuPath's layouts (and slidecell's own output back), restricting a run
to an annotation, and coordinates that land on the nuclei of the real slide."""

from __future__ import annotations

import gzip
import os
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from skimage.draw import polygon as draw_polygon

from conftest import CMU1, NDPI, SHARED, need, qupath_check
from slidecell import load_config, open_slide, read_qupath_geojson, run
from slidecell.errors import InputError

REFERENCE = SHARED / "qupath-geojson-reference" / "detection_feature_excerpt.json"


def test_reads_qupath_reference_feature():
    objs = read_qupath_geojson(need(REFERENCE))
    assert len(objs) == 1
    o = objs.iloc[0]
    assert o["id"] == "9fe79dec-ccfd-40ed-ae46-4dfedd7a5c13"
    assert o["object_type"] == "detection"
    assert o["measurements"] == {"Feature 1": pytest.approx(3.093561887741089),
                                 "Feature 2": pytest.approx(3.0025811195373535),
                                 "Feature 3": pytest.approx(2.813955307006836)}


def test_reads_the_variants_qupath_reads(tmp_path):
    sq = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    small = {"type": "Polygon", "coordinates": [[[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]}
    feats = [
        {"type": "Feature", "id": "a", "geometry": sq,  # QuPath ≥ 0.4 cell
         "nucleusGeometry": small,
         "properties": {"objectType": "cell", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Cell: Area µm^2": 100.0}}},
        {"type": "Feature", "geometry": sq,  # QuPath 0.2: object_type, measurement list, packed colour
         "properties": {"object_type": "detection", "classification": {"names": ["Immune", "CD8"], "colorRGB": -16711936},
                        "measurements": [{"name": "Nucleus: Area", "value": 4.0}]}},
        {"type": "Feature", "objectType": "annotation", "geometry": sq,  # misplaced objectType, class as string
         "properties": {"classification": "Stroma", "name": "region 1"}},
        {"type": "Feature", "geometry": sq, "properties": {}},  # plain GeoJSON: an annotation
        {"type": "Feature", "geometry": sq, "properties": {"type": "Detection"}},  # a "type" property
    ]
    path = tmp_path / "objs.geojson.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(feats, fh)  # a bare list, gzipped
    objs = read_qupath_geojson(path, offset=(100, 50))
    assert list(objs["object_type"]) == ["cell", "detection", "annotation", "annotation", "detection"]
    assert list(objs["classification"]) == ["Tumor", "Immune: CD8", "Stroma", None, None]
    assert objs["color"][0] == (200, 0, 0) and objs["color"][1] == (0, 255, 0)
    assert objs["measurements"][1] == {"Nucleus: Area": 4.0}
    assert objs["geometry"][0].equals(shapely.box(100, 50, 110, 60))  # offset added
    assert objs["nucleus_geometry"][0].equals(shapely.box(102, 52, 104, 54))
    assert objs["name"][2] == "region 1"


@pytest.mark.parametrize("text,match", [("{", "not readable"), ('{"type": "Point"}', "not GeoJSON features"),
                                        ('[{"type": "Feature"}]', "feature 0 has no geometry")])
def test_bad_files_are_clear_errors(tmp_path, text, match):
    p = tmp_path / "bad.geojson"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        read_qupath_geojson(p)


@pytest.fixture(scope="module")
def cmu1_cells(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    run(need(CMU1), load_config("he-brightfield", {"roi": [0, 0, 1400, 1400]}), out, progress=False)
    return out


def test_own_output_round_trips(cmu1_cells):
    objs = read_qupath_geojson(cmu1_cells / "cells.geojson")
    cells = gpd.read_parquet(cmu1_cells / "cells.parquet")
    assert len(objs) == len(cells) > 500
    assert list(objs["id"]) == list(cells["cell_id"])
    assert set(objs["object_type"]) == {"detection"}
    a, b = objs["geometry"].to_numpy(), cells.geometry.to_numpy()
    iou = shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b))
    assert iou.min() >= 0.999
    areas = np.array([m["Nucleus: Area µm^2"] for m in objs["measurements"]])
    assert np.allclose(areas, cells["area_um2"], rtol=1e-6)
    blue = np.array([m["Nucleus: Blue: Mean"] for m in objs["measurements"]])
    assert np.allclose(blue, cells["mean:Blue"], rtol=1e-6)
    # geopandas (pyogrio/GDAL) reads the same file: ids, outlines, measurements
    g = gpd.read_file(cmu1_cells / "cells.geojson")
    assert list(g["id"]) == list(cells["cell_id"]) and set(g["objectType"]) == {"detection"}
    gi = shapely.area(shapely.intersection(g.geometry.to_numpy(), b)) / shapely.area(shapely.union(g.geometry.to_numpy(), b))
    assert gi.min() >= 0.999
    assert np.allclose([m["Nucleus: Area µm^2"] for m in g["measurements"]], cells["area_um2"], rtol=1e-6)


def test_groovy_import_script(cmu1_cells):
    """scripts/qupath_import_cells.groovy, run by Groovy on QuPath's core classes with the
    scripting calls bound to a plain hierarchy: every cell of the run lands in it; an image of
    another size is refused. Skipped without groovy (apt: groovy) or the QuPath classes."""
    import shutil
    import subprocess

    from conftest import QUPATH_CHECK, REPO

    groovy, java = shutil.which("groovy"), shutil.which("java")
    jars = sorted((QUPATH_CHECK.parent / "lib").glob("*.jar"))
    if not (groovy and java and jars):
        pytest.skip("groovy, java or QuPath's core classes (../shared/tools/qupath-geojson/lib) not available")
    env = {**os.environ, "JAVA_HOME": str(Path(java).resolve().parent.parent)}
    n = len(gpd.read_parquet(cmu1_cells / "cells.parquet"))

    def script(w, h):
        return subprocess.run([groovy, "-cp", ":".join(map(str, jars)), str(REPO / "tests" / "qupath_script_harness.groovy"),
                               str(REPO / "scripts" / "qupath_import_cells.groovy"), str(cmu1_cells), str(w), str(h)],
                              capture_output=True, text=True, timeout=300, env=env)

    ok = script(2220, 2967)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"Imported {n} objects" in ok.stdout and f"hierarchy: {n} detections" in ok.stdout
    other = script(1000, 1000)
    assert other.returncode != 0 and "The run was made on a 2220 x 2967 image" in other.stderr + other.stdout


def test_classify_apply_writes_classes_qupath_reads(cmu1_cells, tmp_path, capsys):
    """`slidecell classify train` on cells labelled in QuPath, then `classify apply`: the run's
    cells as QuPath GeoJSON with their classes (QuPath's colours for its own), read by QuPath's
    own import code with every class and probability; the classes follow the labels' rule."""
    from slidecell.cli import main

    cells = gpd.read_parquet(cmu1_cells / "cells.parquet")
    truth = np.where(cells["area_um2"] > cells["area_um2"].median(), "Tumor", "Stroma")
    pick = np.random.default_rng(0).choice(len(cells), 300, replace=False)
    feats = [{"type": "Feature", "geometry": shapely.geometry.mapping(shapely.Point(cells["x"].iloc[i], cells["y"].iloc[i]).buffer(2)),
              "properties": {"objectType": "detection", "classification": {"name": str(truth[i])}}} for i in pick]
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    assert main(["classify", "train", str(cmu1_cells), "--labels", str(tmp_path / "labels.geojson"),
                 "-o", str(tmp_path / "m.skops")]) == 0
    capsys.readouterr()
    assert main(["classify", "apply", str(cmu1_cells), "--model", str(tmp_path / "m.skops")]) == 0
    counts = json.loads(capsys.readouterr().out)["classes"]
    out = cmu1_cells / "cells_classified.geojson"
    q = qupath_check(out, pixel_size=0.499)
    assert q["objectsByClass"] == {"PathDetectionObject": len(cells)}
    assert q["classifications"]["unclassified"] == 0
    assert {k: v["count"] if isinstance(v, dict) else v for k, v in q["classifications"]["classes"].items()} == counts
    assert q["measurements"]["objectsWithMeasurement"]["Classification probability"] == len(cells)
    got = [f["properties"]["classification"]["name"] for f in json.loads(out.read_text())["features"]]
    assert np.mean(np.array(got) == truth) > 0.85
    assert main(["classify", "apply", str(cmu1_cells), "--model", str(tmp_path / "m.skops")]) == 2  # exists


def test_annotation_restricts_the_run(tmp_path):
    need(CMU1)
    tri = [[300, 300], [1500, 400], [700, 1600], [300, 300]]
    ann = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "t", "geometry": {"type": "Polygon", "coordinates": [tri]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "s", "geometry": {"type": "Polygon", "coordinates": [[[1800, 2200], [2100, 2200],
                                                                                       [2100, 2600], [1800, 2200]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},
    ]}
    path = tmp_path / "ann.geojson"
    path.write_text(json.dumps(ann))
    r = run(CMU1, load_config("he-brightfield"), tmp_path / "o", annotations=path, annotation_classes=["Tumor"],
            progress=False)
    cells = gpd.read_parquet(tmp_path / "o" / "cells.parquet")
    assert r.n_cells == len(cells) > 100
    assert shapely.contains_xy(shapely.Polygon(tri), cells["x"], cells["y"]).all()
    with pytest.raises(InputError, match="no polygon annotation of class Necrosis"):
        run(CMU1, load_config("he-brightfield"), tmp_path / "o2", annotations=path, annotation_classes=["Necrosis"],
            progress=False)


def _inside_vs_shifted(reader, polys, bright: bool, shift=(9, 9), n=150) -> float:
    """Mean channel intensity inside each polygon read at level 0, minus the same polygon moved
    by ``shift``; positive when the polygons sit on their (bright or dark) nuclei."""
    diffs = []
    for p in polys[:n]:
        x0, y0, x1, y1 = (int(v) for v in p.bounds)
        pad = 12
        img = reader.read_region(x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad, 0).astype(float).mean(axis=2)
        c = np.asarray(p.exterior.coords)
        rr, cc = draw_polygon(c[:, 1] - y0 + pad, c[:, 0] - x0 + pad, img.shape)
        inside = img[rr, cc].mean()
        moved = img[np.clip(rr + shift[1], 0, img.shape[0] - 1), np.clip(cc + shift[0], 0, img.shape[1] - 1)].mean()
        diffs.append(inside - moved if bright else moved - inside)
    return float(np.median(diffs))


@pytest.mark.parametrize("slide,preset,roi,bright", [
    (CMU1, "he-brightfield", [600, 900, 900, 900], False),
    (NDPI, None, [1200, 1800, 1000, 1000], True),
])
def test_geojson_coordinates_land_on_the_nuclei(tmp_path, slide, preset, roi, bright):
    """Outlines from the GeoJSON (QuPath's coordinates, plus the bounds origin) drawn on the
    slide's own level 0 cover the nuclei: darker (H&E) or brighter (DAPI) than the same outline
    moved by 9 px."""
    cfg = load_config(preset, {"roi": roi, "tiling": {"tile_size": 512}})
    run(need(slide), cfg, tmp_path / "o", progress=False)
    with open_slide(slide) as reader:
        objs = read_qupath_geojson(tmp_path / "o" / "cells.geojson", offset=reader.bounds_offset)
        assert len(objs) > 30
        # measured: 39 (CMU-1) and 30 (NDPI); outlines 12 px off score -0.1 and 10
        assert _inside_vs_shifted(reader, objs["geometry"].to_numpy(), bright) > 20
