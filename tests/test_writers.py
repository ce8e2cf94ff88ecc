"""Output writers: streamed part by part they give the same files as written in one go, and
the formats' own readers (json, geopandas, anndata) read back exactly what went in."""

from __future__ import annotations

import json

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from conftest import qupath_check
from slidecell.engine import cell_ids
from slidecell.io.geojson import GeoJSONWriter, _compact, _decimal_text, geojson_features
from slidecell.io.parquet import GeoParquetWriter
from slidecell.io.h5ad import H5adWriter, write_h5ad
from slidecell.io.atomic import atomic_path
from slidecell.io.writers import CellFiles
from slidecell.table import BASE_COLUMNS, MEAN_PREFIX, schema_from_columns, to_anndata, to_arrow


def cell_table(rng, n: int, channels=("DAPI", "CD3")) -> pd.DataFrame:
    x, y = rng.uniform(0, 5000, n), rng.uniform(0, 5000, n)
    w, h = rng.integers(2, 30, n), rng.integers(2, 30, n)
    t = pd.DataFrame({
        "cell_id": cell_ids("slide", x, y), "tile": rng.integers(0, 9, n), "x": x, "y": y,
        "x_um": x * 0.25, "y_um": y * 0.25, "area_um2": rng.uniform(5, 200, n),
        "perimeter_um": rng.uniform(5, 60, n), "eccentricity": rng.uniform(0, 1, n),
        "solidity": rng.uniform(0.5, 1, n), "major_axis_um": rng.uniform(3, 20, n),
        "minor_axis_um": rng.uniform(2, 10, n), "circularity": rng.uniform(0.3, 1, n),
        "max_caliper_um": rng.uniform(5, 30, n), "min_caliper_um": rng.uniform(2, 5, n),
        "touches_tile_edge": rng.random(n) < 0.1,
    })
    for c in channels:
        t[MEAN_PREFIX + c] = rng.uniform(0, 3000, n).astype(np.float32)
    t.loc[3, MEAN_PREFIX + channels[0]] = np.nan  # a missing value is left out of the GeoJSON
    t["geometry"] = shapely.box(np.floor(x), np.floor(y), np.floor(x) + w, np.floor(y) + h)
    return t


def write_qupath_geojson(table: pd.DataFrame, path, offset=(0, 0)) -> None:
    """The cells as a QuPath GeoJSON through the run's own format registry (one part)."""
    with CellFiles({"geojson": path}, schema_from_columns(table.columns), offset) as files:
        files.write(to_arrow(table))


def test_decimal_text_round_trips(rng):
    v = np.concatenate([rng.uniform(-1e6, 1e6, 2000), rng.uniform(0, 1, 2000), [0, 1, -1, 0.5, 1e-9, 123456.7894]])
    for dec in (0, 3, 6):
        blob, starts = _compact(_decimal_text(v, dec))
        back = np.array([float(blob[a:b]) for a, b in zip(starts[:-1], starts[1:])])
        assert np.array_equal(back, np.round(v, dec))
        assert b"e" not in blob and b".0," not in blob


def test_geojson_streamed_equals_one_go(rng, tmp_path):
    t = cell_table(rng, 500)
    write_qupath_geojson(t, tmp_path / "one.geojson", offset=(10, 20))
    with atomic_path(tmp_path / "parts.geojson") as tmp, open(tmp, "wb") as fh:
        w = GeoJSONWriter(fh, offset=(10, 20))
        w.write(t.iloc[:0])
        w.write(t.iloc[:123])
        feats = geojson_features(t.iloc[123:], (10, 20), 3)
        w.write_joined(("," .join(feats) + ",").encode(), len(feats))  # as the engine's chunks hold them
        w.close()
    assert (tmp_path / "one.geojson").read_bytes() == (tmp_path / "parts.geojson").read_bytes()
    fc = json.loads((tmp_path / "one.geojson").read_text())
    assert len(fc["features"]) == 500
    f = fc["features"][3]
    assert f["id"] == t["cell_id"][3] and f["properties"]["objectType"] == "detection"
    assert "Nucleus: DAPI: Mean" not in f["properties"]["measurements"]  # NaN left out
    g = shapely.geometry.shape(fc["features"][7]["geometry"])
    assert g.equals(shapely.transform(t["geometry"][7], lambda c: c - (10, 20)))
    m = fc["features"][7]["properties"]["measurements"]
    assert m["Nucleus: Area µm^2"] == pytest.approx(t["area_um2"][7], rel=1e-6)
    assert m["Nucleus: CD3: Mean"] == pytest.approx(t["mean:CD3"][7], rel=1e-6)


def test_geoparquet_streamed(rng, tmp_path):
    t = cell_table(rng, 300)
    a, b = to_arrow(t.iloc[:100]), to_arrow(t.iloc[100:])
    with atomic_path(tmp_path / "c.parquet") as tmp:
        w = GeoParquetWriter(tmp, a.schema)
        w.write(a)
        w.write(b)
        w.close()
    g = gpd.read_parquet(tmp_path / "c.parquet")
    assert len(g) == 300 and list(g["cell_id"]) == list(t["cell_id"])
    assert g.geometry.geom_equals(gpd.GeoSeries(t["geometry"])).all()


def test_h5ad_streamed_equals_anndata(rng, tmp_path):
    t = cell_table(rng, 400)
    uns = {"slide": "s.svs", "mpp": 0.25, "config": {"a": 1}}
    write_h5ad(t, tmp_path / "ref.h5ad", uns)
    with atomic_path(tmp_path / "s.h5ad") as tmp:
        w = H5adWriter(tmp, ["DAPI", "CD3"], uns, n=400)
        for part in (t.iloc[:0], t.iloc[:150], t.iloc[150:].drop(columns="geometry")):
            w.write(part)
        w.close()
    a, b = ad.read_h5ad(tmp_path / "ref.h5ad"), ad.read_h5ad(tmp_path / "s.h5ad")
    assert np.array_equal(a.X, b.X, equal_nan=True)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.uns["slidecell"] == b.uns["slidecell"]
    assert list(b.obs.columns) == ["slide_id", "region", *BASE_COLUMNS[1:]]


def test_h5ad_writer_refuses_a_wrong_count(rng, tmp_path):
    t = cell_table(rng, 10)
    w = H5adWriter(tmp_path / "x.h5ad", ["DAPI", "CD3"], n=5)
    with pytest.raises(ValueError, match="more cells than announced"):
        w.write(t)
    w.write(t.iloc[:4])
    with pytest.raises(ValueError, match="wrote 4 cells, announced 5"):
        w.close()


def test_cell_ids_are_uuids(rng):
    import uuid

    x, y = rng.uniform(0, 1e5, 10000), rng.uniform(0, 1e5, 10000)
    ids = cell_ids("k", x, y)
    assert len(set(ids)) == 10000
    assert all(uuid.UUID(i).version == 8 and str(uuid.UUID(i)) == i for i in ids[:100])
    assert cell_ids("k", x[:5], y[:5]) == ids[:5]  # deterministic
    assert cell_ids("other", x[:5], y[:5]) != ids[:5]
    assert to_anndata(cell_table(rng, 10)).obs_names.is_unique


def test_classes_and_cells_follow_qupath_conventions(rng, tmp_path):
    """``class`` → ``properties.classification = {name, color}`` with one stable colour per class
    (QuPath's own for its standard classes); a ``nucleus_geometry`` column makes QuPath cells:
    ``objectType: cell`` and ``nucleusGeometry`` beside ``geometry`` (not in properties)."""
    from slidecell.io.qupath import read_qupath_geojson
    from slidecell.io.geojson import class_color

    t = cell_table(rng, 50)
    t["class"] = np.where(np.arange(50) % 3 == 0, "Tumor", np.where(np.arange(50) % 3 == 1, "CD8 T cell", None))
    t["nucleus_geometry"] = shapely.buffer(t["geometry"].to_numpy(), -0.5)
    t["geometry"] = shapely.buffer(t["geometry"].to_numpy(), 3, join_style="mitre")
    write_qupath_geojson(t, tmp_path / "c.geojson")
    fc = json.loads((tmp_path / "c.geojson").read_text())
    f0, f2 = fc["features"][0], fc["features"][2]
    assert set(f0) == {"type", "id", "geometry", "nucleusGeometry", "properties"}
    assert f0["properties"]["objectType"] == "cell"
    assert f0["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert "classification" not in f2["properties"]  # unclassified
    colors = {tuple(f["properties"]["classification"]["color"]) for f in fc["features"][1::3]}
    assert colors == {class_color("CD8 T cell")} and class_color("CD8 T cell") == class_color("CD8 T cell")
    back = read_qupath_geojson(tmp_path / "c.geojson")
    assert list(back["classification"][:3]) == ["Tumor", "CD8 T cell", None]
    assert all(a.equals(b) for a, b in zip(back["nucleus_geometry"], t["nucleus_geometry"]))
    assert all(a.equals(b) for a, b in zip(back["geometry"], t["geometry"]))
    # geopandas (GDAL's GeoJSON driver) reads the classes and colours too
    g = gpd.read_file(tmp_path / "c.geojson")
    assert g["classification"][0] == {"name": "Tumor", "color": [200, 0, 0]} and g["objectType"][0] == "cell"
    # and QuPath's own import code: cells with their nuclei, the classes with QuPath's colours
    q = qupath_check(tmp_path / "c.geojson")
    assert q["objectsByClass"] == {"PathCellObject": 50} and q["cells"]["withNucleusRoi"] == 50
    assert q["cells"]["nucleusNotCoveredByCell"] == 0
    classes = q["classifications"]["classes"]
    assert set(classes) == {"Tumor", "CD8 T cell"} and q["classifications"]["unclassified"] == 16


def test_class_colours_are_qupaths(tmp_path):
    """QuPath's default classes keep QuPath's colours (its PathClass cache ignores a file's)."""
    from slidecell.io.geojson import QUPATH_CLASS_COLORS

    t = cell_table(np.random.default_rng(3), len(QUPATH_CLASS_COLORS))
    t["class"] = list(QUPATH_CLASS_COLORS)
    write_qupath_geojson(t, tmp_path / "c.geojson")
    q = qupath_check(tmp_path / "c.geojson")
    assert {k: tuple(v) for k, v in q["defaultClassesCreatedFirst"].items()} == QUPATH_CLASS_COLORS
