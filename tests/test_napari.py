"""slidecell's napari reader, through napari's own plug-in engine (npe2: what ``viewer.open``
calls), headless: the label OME-TIFF and the SpatialData store of a run open as layers in µm that
lie on each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import write_ome_pyramid
from slidecell import load_config, run

npe2 = pytest.importorskip("npe2")

MPP = 0.65  # µm per pixel of the synthetic slide (read as is)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """A two-channel fluorescence slide over 2k px (so both outputs are pyramids) of discs on a
    grid, segmented by the watershed with the label image and the SpatialData store written."""
    d = tmp_path_factory.mktemp("napari")
    h, w = 2400, 2200
    yy, xx = np.mgrid[:h, :w]
    centres = [(y, x) for y in range(40, h - 20, 60) for x in range(40, w - 20, 60)]
    mask = np.zeros((h, w), bool)
    for y, x in centres[::7]:  # a sparse subset: 1 in 7
        mask[(yy - y) ** 2 + (xx - x) ** 2 < 14 ** 2] = True
    dapi = (200 + 3000 * ndi.gaussian_filter(mask.astype(np.float32), 1.5)).astype(np.uint16)
    other = np.full((h, w), 300, np.uint16)
    write_ome_pyramid(d / "discs.ome.tif", np.stack([dapi, other]), ["DAPI", "CD3"], MPP, levels=2, tile=256)
    cfg = load_config(None, {
        "tissue": {"enabled": False, "modality": "fluorescence"},
        "tiling": {"mpp": MPP, "tile_size": 1024},
        "segmentation": {"backend": "watershed", "nuclear_channels": ["DAPI"], "params": {"min_distance_um": 10}},
        "output": {"geojson": False, "label_image": True, "spatialdata": True}, "analysis": None})
    res = run(d / "discs.ome.tif", cfg, d / "run", progress=False)
    return res, len(centres[::7])


def _read(path: Path):
    pm = npe2.PluginManager.instance()
    if "slidecell" not in pm._manifests:  # an install without the entry point (source checkout)
        pm.register(npe2.PluginManifest.from_file(Path(__file__).parents[1] / "slidecell" / "napari.yaml"))
    return npe2.read([str(path)], stack=False, plugin_name="slidecell")


def test_label_ome_tiff_opens_as_a_multiscale_labels_layer_in_um(run_out):
    res, n = run_out
    assert res.n_cells == n
    layers = _read(res.outputs["labels"])
    assert len(layers) == 1
    data, meta, kind = layers[0]
    assert kind == "labels" and meta["multiscale"] and len(data) >= 2
    assert meta["scale"] == pytest.approx((MPP, MPP))
    assert data[0].shape == (2400, 2200) and data[1].shape == (1200, 1100)
    full = np.asarray(data[0])
    np.testing.assert_array_equal(full, tifffile.imread(res.outputs["labels"]))
    assert len(np.unique(full[full > 0])) == n
    # the labels' pixel centres in µm (scale and translate as napari applies them) hold the cells' centroids
    import anndata as ad

    xy = ad.read_h5ad(res.outputs["h5ad"]).obsm["spatial"]
    iy = np.round((xy[:, 1] - meta["translate"][0]) / meta["scale"][0]).astype(int)
    ix = np.round((xy[:, 0] - meta["translate"][1]) / meta["scale"][1]).astype(int)
    assert (full[iy, ix] > 0).all()


def test_spatialdata_store_opens_as_image_outlines_and_centroids_in_um(run_out):
    res, n = run_out
    layers = {meta["name"] if isinstance(meta["name"], str) else "image": (data, meta, kind)
              for data, meta, kind in _read(res.outputs["spatialdata"])}
    assert set(layers) == {"image", "cells", "cell centroids"}
    data, meta, kind = layers["image"]
    assert kind == "image" and meta["multiscale"] and meta["channel_axis"] == 0
    assert meta["name"] == ["DAPI", "CD3"]
    assert meta["scale"] == pytest.approx((MPP, MPP))
    assert data[0].shape == (2, 2400, 2200)
    outlines, smeta, skind = layers["cells"]
    assert skind == "shapes" and len(outlines) == n
    points, pmeta, pkind = layers["cell centroids"]
    assert pkind == "points" and points.shape == (n, 2) and len(pmeta["features"]) == n
    # each outline (µm) surrounds its centroid, and the image is bright there
    for poly, (y, x) in zip(outlines[:50], points[:50]):
        assert poly[:, 0].min() < y < poly[:, 0].max() and poly[:, 1].min() < x < poly[:, 1].max()
        iy = int(round((y - meta["translate"][0]) / MPP))
        ix = int(round((x - meta["translate"][1]) / MPP))
        assert int(data[0][0, iy, ix].compute()) > 1500  # DAPI inside a disc


def test_reader_leaves_other_files_to_other_readers(tmp_path):
    from slidecell.napari import get_reader

    rgb = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), ome=True)
    assert get_reader(str(rgb)) is None  # not a label image
    assert get_reader(str(tmp_path / "missing.spatialdata.zarr")) is None
    assert get_reader([str(rgb), str(rgb)]) is None
