"""Exports: the run config choosing what to write (GeoJSON gzipped, CSV), and `slidecell export`
converting a finished run's cells into each format, identical to what the run writes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from conftest import CMU1, need, qupath_check
from slidecell import load_config, run
from slidecell.errors import InputError, OutputError
from slidecell.export import export


@pytest.fixture(scope="module")
def cmu1_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("x") / "run"
    cfg = load_config("he-brightfield", {"roi": [0, 0, 1400, 1400],
                                         "output": {"geojson_gzip": True, "csv": True}})
    run(need(CMU1), cfg, out, progress=False)
    return out


def test_run_writes_gzipped_geojson_and_csv(cmu1_out):
    cells = gpd.read_parquet(cmu1_out / "cells.parquet")
    assert not (cmu1_out / "cells.geojson").exists()
    with gzip.open(cmu1_out / "cells.geojson.gz", "rt") as fh:
        fc = json.load(fh)
    assert [f["id"] for f in fc["features"]] == list(cells["cell_id"])
    q = qupath_check(cmu1_out / "cells.geojson.gz", pixel_size=0.499)  # QuPath reads the gzipped file
    assert q["objectsByClass"] == {"PathDetectionObject": len(cells)}
    csv = pd.read_csv(cmu1_out / "cells.csv")
    assert list(csv.columns) == [c for c in cells.columns if c != "geometry"]
    assert list(csv["cell_id"]) == list(cells["cell_id"])
    assert np.allclose(csv["area_um2"], cells["area_um2"]) and np.allclose(csv["mean:Red"], cells["mean:Red"])


def test_export_equals_what_the_run_writes(cmu1_out, tmp_path):
    gj = export(cmu1_out, "geojson", tmp_path / "c.geojson")
    with gzip.open(cmu1_out / "cells.geojson.gz", "rb") as fh:
        assert gj.read_bytes() == fh.read()  # byte for byte: one feature writer for both
    assert qupath_check(gj)["objectsByClass"]["PathDetectionObject"] > 100
    h = export(cmu1_out, "h5ad", tmp_path / "c.h5ad")
    a, b = ad.read_h5ad(cmu1_out / "cells.h5ad"), ad.read_h5ad(h)
    assert np.array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("mpp", "working_mpp", "modality", "slide"):  # the same run metadata
        assert a.uns["slidecell"][key] == b.uns["slidecell"][key]
    c = export(cmu1_out, "csv", tmp_path / "c.csv")
    assert c.read_bytes() == (cmu1_out / "cells.csv").read_bytes()


def test_export_errors(cmu1_out, tmp_path):
    with pytest.raises(InputError, match="not a finished slidecell run"):
        export(tmp_path, "geojson")
    with pytest.raises(InputError, match="unknown export format 'shp'"):
        export(cmu1_out, "shp")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        export(cmu1_out, "csv")
    res = subprocess.run([sys.executable, "-m", "slidecell.cli", "export", str(tmp_path), "--to", "csv"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a finished slidecell run" in res.stderr and "Traceback" not in res.stderr


def test_label_image_pyramid(cmu1_out, tmp_path):
    """The label OME-TIFF: label k is row k - 1 of the tables, each cell's pixels exactly those
    inside its outline, a pyramid down to < 1024 px, µm/px in the OME metadata; the run writes
    the same image when its config asks."""
    import tifffile

    p = export(cmu1_out, "labels", tmp_path / "l.ome.tif")
    cells = gpd.read_parquet(cmu1_out / "cells.parquet")
    info = json.loads((cmu1_out / "run.json").read_text())
    with tifffile.TiffFile(p) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        lab = levels[0].asarray()
        assert 'PhysicalSizeX="0.499' in tif.ome_metadata
        assert levels[-1].shape[0] < 1024 and levels[1].shape == (-(-lab.shape[0] // 2), -(-lab.shape[1] // 2))
    assert lab.shape == (info["plan"]["height"], info["plan"]["width"])
    counts = np.bincount(lab.ravel(), minlength=len(cells) + 1)[1:]
    poly_px = cells.geometry.area.to_numpy() / info["plan"]["scale"] ** 2
    assert np.mean(counts == poly_px) > 0.99  # the rest: pinched outlines drawn over by a neighbour
    # a cell's label sits at its centroid
    k = np.arange(0, len(cells), 37)
    ys, xs = (cells["y"].to_numpy()[k] / info["plan"]["scale"]).astype(int), (cells["x"].to_numpy()[k] / info["plan"]["scale"]).astype(int)
    assert np.mean(lab[ys, xs] == k + 1) > 0.95
    cfg = load_config("he-brightfield", {"roi": [0, 0, 1400, 1400], "output": {"label_image": True, "geojson": False,
                                                                              "h5ad": False}})
    r = run(CMU1, cfg, tmp_path / "run", progress=False)
    assert np.array_equal(tifffile.imread(r.outputs["labels"]), lab)


def test_run_writes_a_spatialdata_store_that_spatialdata_plot_renders(tmp_path):
    """`output.spatialdata: true`: the run writes cells.spatialdata.zarr (a multiscale image,
    ≥ 2 scales for a slide over 2k px, with named channels; the cell shapes; the table), which
    `spatialdata.read_zarr` reads and spatialdata-plot draws (image under the shapes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers .pl)

    from slidecell.errors import ConfigError

    with pytest.raises(ConfigError, match="spatialdata: the store is made from the run.s h5ad and parquet"):
        load_config(None, {"output": {"spatialdata": True, "parquet": False}})
    cfg = load_config("he-brightfield", {"roi": [700, 1700, 600, 600], "output": {"spatialdata": True, "geojson": False}})
    res = run(need(CMU1), cfg, tmp_path / "run", progress=False)
    assert res.outputs["spatialdata"] == tmp_path / "run" / "cells.spatialdata.zarr"
    s = sd.read_zarr(res.outputs["spatialdata"])
    img = s.images["image"]
    assert list(img.keys()) == ["scale0", "scale1"]  # 2220 × 2967 px: two scales
    assert img["scale0"]["image"].shape == (3, 2967, 2220)
    assert list(img["scale0"]["image"].coords["c"].values) == ["Red", "Green", "Blue"]
    assert len(s.shapes["cells"]) == res.n_cells == s.tables["table"].n_obs
    fig, ax = plt.subplots(figsize=(4, 5))
    s.pl.render_images("image").pl.render_shapes("cells", color="area_um2").pl.show(ax=ax)
    assert len(ax.images) == 1 and len(ax.collections) >= 1
    fig.savefig(tmp_path / "sdata.png")
    plt.close(fig)
    assert (tmp_path / "sdata.png").stat().st_size > 10_000
