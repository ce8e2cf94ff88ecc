"""A label image from another tool as the segmentation (slidecell.segment.mask): sizes checked, cell
naming kept, per-cell means equal to the label image's."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import tifffile

import slidecell
from slidecell.errors import ConfigError
from slidecell.io import open_slide

from conftest import SHARED, mask_config, need

CYTOMAPPER = SHARED / "multiplex" / "imc-cytomapper"


def test_mask_must_match_the_slide(tmp_path):
    image = need(CYTOMAPPER / "E34_imc.tiff")
    small = tmp_path / "small_mask.tiff"
    tifffile.imwrite(small, np.ones((50, 50), np.uint16))
    with pytest.raises(ConfigError, match="label image is 50x50 but the slide is 100x100"):
        slidecell.run(image, slidecell.config_from_dict(mask_config(small)), tmp_path / "o", mpp=1.0, progress=False)
    with pytest.raises(ConfigError, match="needs nuclei"):
        slidecell.run(image, slidecell.config_from_dict(mask_config(CYTOMAPPER / "E34_mask.tiff",
                                                                     compartments=["cytoplasm"])),
                      tmp_path / "o2", mpp=1.0, progress=False)


def test_cell_mask_export_keeps_the_cell_naming(tmp_path):
    """A whole-cell mask measured with means only (no layer says "cell"): the run's GeoJSON and
    one exported later from its GeoParquet are the same bytes, both naming ``Cell:``."""
    from slidecell.export import export

    image = need(CYTOMAPPER / "G01_imc.tiff")
    cfg = slidecell.config_from_dict({**mask_config(CYTOMAPPER / "G01_mask.tiff", statistics=["mean"])})
    slidecell.run(image, cfg, tmp_path / "out", mpp=1.0, progress=False)
    again = export(tmp_path / "out", "geojson", tmp_path / "again.geojson")
    assert again.read_bytes() == (tmp_path / "out" / "cells.geojson").read_bytes()
    feats = json.loads(again.read_text())["features"]
    assert "Cell: Channel 3: Mean" in feats[0]["properties"]["measurements"]
    assert feats[0]["properties"]["objectType"] == "cell"


def test_multiplex_preset_on_qptiff_matches_the_label_image(tmp_path):
    """The real Vectra QPTIFF: every cell's per-compartment means equal the means recomputed
    from the run's own label image and nucleus outlines (exact intensities)."""
    import squidpy as sq

    from conftest import QPTIFF

    cfg = slidecell.load_config("multiplex-fluorescence", {"output": {"label_image": True, "zarr": False},
                                                           "roi": [0, 0, 700, 600]})
    res = slidecell.run(need(QPTIFF), cfg, tmp_path / "out", progress=False)
    a = ad.read_h5ad(res.outputs["h5ad"])
    assert list(a.var_names) == ["DAPI", "FITC", "Cy3"] and a.var["fluorophore"].tolist() == ["DAPI", "FITC", "Cy3"]
    assert len(a) > 100
    labels = tifffile.imread(res.outputs["labels"])
    with open_slide(QPTIFF) as r:
        img = r.read_region(0, 0, labels.shape[1], labels.shape[0]).astype(np.float64)
    import geopandas as gpd

    from slidecell.io.label_image import rasterize_outlines

    g = gpd.read_parquet(tmp_path / "out" / "cells.parquet")
    nuc = np.zeros_like(labels)
    rasterize_outlines(nuc, np.arange(1, len(g) + 1), g["nucleus_geometry"].to_numpy(), 0, 0, 1)
    for k in range(0, len(a), max(1, len(a) // 40)):
        cell = labels == k + 1
        np.testing.assert_allclose(a.X[k], img[cell].mean(axis=0), rtol=1e-5)
        cyto = cell & (nuc != k + 1)
        np.testing.assert_allclose(a.layers["cytoplasm_mean"][k], img[cyto].mean(axis=0), rtol=1e-5)
    assert (a.obs["area_um2"] > a.obs["nucleus_area_um2"]).mean() > 0.9
    sq.gr.spatial_neighbors(a, coord_type="generic", delaunay=True)
