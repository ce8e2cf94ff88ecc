"""Multiplexed images end to end (slidecell.io.multiplex and the multiplex preset): IMC .txt, MIBI and
channel-folder readers, per-cell quantification checked against steinbock's recorded numbers, AnnData layout."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile

import slidecell
from slidecell.errors import SlideOpenError
from slidecell.io import open_slide

from conftest import MIBI_PANEL, REPO, SHARED, mask_config, need, write_mibitiff

CYTOMAPPER = SHARED / "multiplex" / "imc-cytomapper"
MOCK = SHARED / "multiplex" / "imc-mockdata"
STEINBOCK = REPO / "benchmarks" / "peers" / "steinbock"
IMC_CHANNELS = ["H3", "CD99", "PIN", "CD8a", "CDH"]


@pytest.mark.parametrize("name", ["E34", "G01", "J02"])
def test_quantification_equals_steinbock(name, tmp_path):
    """The study's masks measured by slidecell (tile by tile, 64-px tiles so cells cross seams)
    give steinbock's per-cell means, medians, areas and centroids (steinbock 0.16.5's recorded
    table, benchmarks/peers/steinbock/)."""
    image = need(CYTOMAPPER / f"{name}_imc.tiff")
    peer = pd.read_csv(STEINBOCK / f"{name}.csv", index_col="Object")
    (tmp_path / "markers.csv").write_text("marker_name\n" + "\n".join(IMC_CHANNELS) + "\n")
    cfg = slidecell.config_from_dict({**mask_config(CYTOMAPPER / f"{name}_mask.tiff"),
                                      "reader": {"markers": str(tmp_path / "markers.csv")}})
    res = slidecell.run(image, cfg, tmp_path / "out", mpp=1.0, progress=False)
    mask = tifffile.imread(CYTOMAPPER / f"{name}_mask.tiff")
    assert res.n_cells == len(peer) == len(np.unique(mask)) - 1
    a = ad.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert list(a.var_names) == IMC_CHANNELS
    obs = a.obs.set_index("mask_label")
    assert obs.index.is_unique and set(obs.index) == set(peer.index)
    order = [obs.index.get_loc(k) for k in peer.index]
    ours = pd.DataFrame(a.X[order], columns=a.var_names, index=peer.index)
    med = pd.DataFrame(a.layers["cell_median"][order], columns=a.var_names, index=peer.index)
    for ch in IMC_CHANNELS:
        np.testing.assert_allclose(ours[ch], peer[f"mean:{ch}"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(med[ch], peer[f"median:{ch}"], rtol=1e-4, atol=1e-6)
    o = obs.loc[peer.index]
    np.testing.assert_array_equal(o["area_um2"].to_numpy(), peer["area"].to_numpy())
    # slidecell's centroids put pixel centres at i + 0.5, skimage's at i
    np.testing.assert_allclose(o["x"] - 0.5, peer["centroid-1"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(o["y"] - 0.5, peer["centroid-0"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.obsm["spatial"][order], o[["x_um", "y_um"]].to_numpy())
    np.testing.assert_allclose(o["eccentricity"], peer["eccentricity"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(o["major_axis_um"], peer["major_axis_length"], rtol=1e-4)
    np.testing.assert_allclose(o["minor_axis_um"], peer["minor_axis_length"], rtol=1e-4, atol=1e-6)
    # the QuPath export names the compartment: these objects are whole cells
    feats = json.loads((tmp_path / "out" / "cells.geojson").read_text())["features"]
    assert feats[0]["properties"]["objectType"] == "cell"
    assert "Cell: CD8a: Mean" in feats[0]["properties"]["measurements"]
    assert "Cell: CD8a: Median" in feats[0]["properties"]["measurements"]


# -- readers ----------------------------------------------------------------------------------
def test_imc_txt_channels_from_labels():
    path = need(MOCK / "raw" / "20210305_NE_mockData2_ROI_001_1.txt")
    with open_slide(path) as r:
        assert r.name == "imc-txt" and r.dimensions == (103, 87) and r.mpp == 1.0
        assert r.channel_names == ("Ag107", "Cytoker_651", "Laminin_681", "YBX1_2987", "H3K27Ac_1977")
        assert [m["metal"] for m in r.channel_meta] == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
        assert r.channel_meta[1]["label"] == "Cytoker_651((3356))Pr141"
        from readimc import TXTFile

        with TXTFile(path) as f:
            raw = f.read_acquisition()
        np.testing.assert_array_equal(r.read_region(10, 20, 30, 40), np.moveaxis(raw, 0, -1)[20:60, 10:40])
    # a steinbock panel renames by metal
    with open_slide(path, markers=MOCK / "steinbock" / "panel.csv") as r:
        assert r.channel_names == ("Ag107", "Cytokeratin 5", "Laminin", "YBX1", "H3K27Ac")
        assert r.channel_table()["metal"].tolist() == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]


def test_mibi_pages_named_from_their_json(tmp_path):
    """MIBI multipage TIFF: one page per channel, the target and mass in each page's JSON."""
    targets = [("dsDNA", 89), ("CD45", 154), ("Pan-Keratin", 148)]
    data = np.random.default_rng(0).integers(0, 50, (3, 40, 60)).astype(np.float32)
    with tifffile.TiffWriter(tmp_path / "mibi.tiff") as tif:
        for (target, mass), page in zip(targets, data):
            desc = json.dumps({"image.type": "SIMS", "channel.mass": mass, "channel.target": target})
            tif.write(page, description=desc, metadata=None, extratags=[(285, "s", 0, f"{target} ({mass})", False)])
    with open_slide(tmp_path / "mibi.tiff", mpp=0.39) as r:
        assert r.channel_names == ("dsDNA", "CD45", "Pan-Keratin")
        assert [m["metal"] for m in r.channel_meta] == ["89", "154", "148"]
        np.testing.assert_array_equal(r.read_region(0, 0, 60, 40), np.moveaxis(data, 0, -1))


def test_mibitiff_as_ionpath_writes_it_runs_end_to_end(tmp_path):
    """Pages after the first arrive as TiffFrames: names and masses still come from each page's
    JSON, HH3/dsDNA are found as the nuclear channels, and `slidecell run` finds the nuclei."""
    path = tmp_path / "fov1.tiff"
    data, nuclei = write_mibitiff(path)
    with tifffile.TiffFile(path) as tf:
        # as a real MIBItiff loads
        assert "TiffFrame" in {type(pg).__name__ for pg in tf.series[0].pages}
    with open_slide(path) as r:
        assert r.channel_names == tuple(t for t, _ in MIBI_PANEL)
        assert [m["metal"] for m in r.channel_meta] == [str(m) for _, m in MIBI_PANEL]
        assert r.mpp == pytest.approx(0.39, rel=1e-3)
        np.testing.assert_array_equal(r.read_region(0, 0, 128, 96), np.moveaxis(data, 0, -1))
    cfg = slidecell.load_config("multiplex-fluorescence", {"output": {"zarr": False, "geojson": False},
                                                            "tissue": {"enabled": False}})
    res = slidecell.run(path, cfg, tmp_path / "out", progress=False)
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["segmentation"]["channels_used"] == {"nuclear": ["dsDNA", "HH3"]}
    assert res.n_cells == 5
    adata = ad.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert list(adata.var_names) == [t for t, _ in MIBI_PANEL]


def test_channel_folder_runs_end_to_end(tmp_path):
    """`slidecell run` on a folder of single-channel TIFFs: fingerprinted by its files (a changed
    file is a different slide for resume), channels named by the file names."""
    _, nuclei = write_mibitiff(tmp_path / "fov.tiff")
    folder = tmp_path / "fov1"
    folder.mkdir()
    with tifffile.TiffFile(tmp_path / "fov.tiff") as tf:
        stack = tf.asarray()
    for (target, _), page in zip(MIBI_PANEL, stack):
        tifffile.imwrite(folder / f"{target}.tif", page)
    cfg = slidecell.load_config("multiplex-fluorescence", {"output": {"zarr": False, "geojson": False},
                                                            "tissue": {"enabled": False}})
    res = slidecell.run(folder, cfg, tmp_path / "out", mpp=0.39, progress=False)
    assert res.n_cells == 5
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["segmentation"]["channels_used"] == {"nuclear": ["HH3", "dsDNA"]}  # file-name order
    from slidecell.fingerprint import slide_fingerprint

    before = slide_fingerprint(folder)
    assert before == slide_fingerprint(folder)
    tifffile.imwrite(folder / "CD3.tif", stack[0])
    assert slide_fingerprint(folder)["sha256_head_tail"] != before["sha256_head_tail"]


def test_channel_folder(tmp_path):
    rng = np.random.default_rng(1)
    chans = {"DAPI": rng.integers(0, 999, (70, 90), dtype=np.uint16), "CD3": rng.integers(0, 999, (70, 90), dtype=np.uint16)}
    folder = tmp_path / "codex"
    folder.mkdir()
    for name, arr in chans.items():
        tifffile.imwrite(folder / f"{name}.tif", arr, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(folder) as r:
        assert r.channel_names == ("CD3", "DAPI") and r.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(r.read_region(5, 6, 20, 10)[:, :, 1], chans["DAPI"][6:16, 5:25])
    (folder / "markers.csv").write_text("marker_name\nDAPI\nCD3\n")  # names the files: their order
    with open_slide(folder) as r:
        assert r.channel_names == ("DAPI", "CD3")
        np.testing.assert_array_equal(r.read_region(5, 6, 20, 10)[:, :, 0], chans["DAPI"][6:16, 5:25])
    (folder / "markers.csv").unlink()
    tifffile.imwrite(folder / "bad.tif", np.zeros((10, 10), np.uint16))
    with pytest.raises(SlideOpenError, match="bad.tif: size/levels"):
        open_slide(folder)


def test_qptiff_channel_meta():
    from conftest import QPTIFF

    with open_slide(need(QPTIFF)) as r:
        assert r.channel_names == ("DAPI", "FITC", "Cy3")
        assert [m["fluorophore"] for m in r.channel_meta] == ["DAPI", "FITC", "Cy3"]


# -- whole cells ------------------------------------------------------------------------------
def test_cell_expansion_geometry():
    """Nuclei of known geometry grown by d: cells never overlap, each holds its nucleus whole,
    an isolated cell is exactly the pixels within d of its nucleus, and between two close
    nuclei every pixel goes to the nearer one."""
    from scipy import ndimage as ndi

    from slidecell.measure import expand_nuclei

    yy, xx = np.mgrid[0:120, 0:200]
    nuclei = np.zeros((120, 200), np.int32)
    centres = {1: (60, 40, 8), 2: (60, 120, 6), 3: (60, 140, 6)}  # 2 and 3: 20 px apart
    for k, (cy, cx, r) in centres.items():
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    d = 10
    cells = expand_nuclei(nuclei, d)
    for k in centres:
        assert np.all(cells[nuclei == k] == k)  # the nucleus is inside its cell, unchanged
    dist1 = ndi.distance_transform_edt(nuclei != 1)
    assert np.array_equal(cells == 1, dist1 <= d)  # isolated: exactly the pixels within d
    d2 = ndi.distance_transform_edt(nuclei != 2)
    d3 = ndi.distance_transform_edt(nuclei != 3)
    grown = (cells > 0) & (nuclei == 0) & (np.minimum(d2, d3) <= d)
    clear = grown & (np.abs(d2 - d3) > 1)  # ties may go either way
    assert np.all(cells[clear & (d2 < d3)] == 2) and np.all(cells[clear & (d3 < d2)] == 3)
    assert not np.any(cells[np.minimum(np.minimum(dist1, d2), d3) > d])  # nothing beyond d


def test_cells_grown_along_the_membrane():
    """Two nuclei 40 px apart with a stained membrane 10 px from the left one: the boundary
    between their cells settles on the membrane (fixed growth splits half-way), no cell reaches
    past the growth distance, nuclei stay whole and unchanged; with no membrane signal the
    split falls half-way, as distance growth's."""
    from scipy import ndimage as ndi

    from slidecell.measure import expand_nuclei, grow_along_membrane

    yy, xx = np.mgrid[0:80, 0:160]
    nuclei = np.zeros((80, 160), np.int32)
    nuclei[(yy - 40) ** 2 + (xx - 50) ** 2 <= 25] = 1
    nuclei[(yy - 40) ** 2 + (xx - 90) ** 2 <= 25] = 2
    membrane = np.zeros((80, 160), np.float32)
    membrane[:, 64:66] = 1.0  # a wall 9-10 px right of nucleus 1's edge
    d = 25
    cells = grow_along_membrane(nuclei, membrane, d, sigma_px=1.0, compactness=0.001)
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])
    row = cells[40]
    right1 = np.flatnonzero(row == 1).max()
    assert 63 <= right1 <= 66, right1  # on the wall; distance growth: half-way, at x = 70
    assert np.flatnonzero(expand_nuclei(nuclei, d)[40] == 1).max() in (69, 70)
    far = ndi.distance_transform_edt(nuclei == 0) > d
    assert not cells[far].any()
    assert {1, 2} <= set(np.unique(cells)) <= {0, 1, 2}
    for k in (1, 2):  # each cell is one piece
        assert ndi.label(cells == k)[1] == 1
    flat = grow_along_membrane(nuclei, np.zeros_like(membrane), d, sigma_px=1.0, compactness=0.01)
    assert abs(np.flatnonzero(flat[40] == 1).max() - 69.5) <= 1.5


def _synthetic_multiplex(tmp_path, n_markers=23, size=640, mpp=0.5, seed=3):
    """A pyramidal OME-TIFF with DAPI nuclei and ``n_markers`` named markers, each expressed in
    the cytoplasm of a known random half of the cells. Returns (path, centres, truth)."""
    from conftest import write_ome_pyramid

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    step = 28
    centres = [(y + rng.integers(-3, 4), x + rng.integers(-3, 4))
               for y in range(24, size - 20, step) for x in range(24, size - 20, step)]
    nuc = np.zeros((size, size), np.int32)
    ring = np.zeros((size, size), np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nuc[d2 <= 7 ** 2] = k
        ring[(d2 > 8 ** 2) & (d2 <= 11 ** 2)] = k
    truth = rng.random((len(centres), n_markers)) < 0.5
    data = np.zeros((1 + n_markers, size, size), np.uint16)
    data[0] = np.where(nuc > 0, 3000, 100)
    for m in range(n_markers):
        on = np.concatenate([[False], truth[:, m]])
        data[1 + m] = np.where(on[ring], 2000, 50)
    data = (data + rng.integers(0, 30, data.shape)).astype(np.uint16)
    names = ["DAPI"] + [f"Marker{m:02d}" for m in range(n_markers)]
    path = tmp_path / "synthetic.ome.tif"
    write_ome_pyramid(path, data, names, mpp, levels=3, tile=128)
    return path, np.array(centres), truth, names


def test_multiplex_preset_on_a_synthetic_ome_tiff(tmp_path):
    """≥ 20 named channels, pyramidal: nuclei found on DAPI, cells grown, every marker measured
    per compartment; positives and negatives separate in the cytoplasm; squidpy runs on it."""
    import squidpy as sq

    path, centres, truth, names = _synthetic_multiplex(tmp_path)
    res = slidecell.run(path, "multiplex-fluorescence", tmp_path / "out", progress=False)
    a = ad.read_h5ad(res.outputs["h5ad"])
    assert list(a.var_names) == names and a.var["channel_index"].tolist() == list(range(len(names)))
    assert set(a.layers) == {"nucleus_mean", "cytoplasm_mean"}
    assert a.obs["slide_id"].unique().tolist() == ["synthetic"] and a.obs["region"].unique().tolist() == ["cells"]
    # every synthetic cell found once: match by centroid
    xy = a.obs[["x", "y"]].to_numpy()
    dist = np.hypot(xy[:, None, 0] - (centres[None, :, 1] + 0.5), xy[:, None, 1] - (centres[None, :, 0] + 0.5))
    nearest = dist.argmin(axis=1)
    assert len(a) == len(centres) and len(set(nearest)) == len(centres) and dist.min(axis=1).max() < 1.5
    cyto = a.layers["cytoplasm_mean"][:, 1:]
    t = truth[nearest]
    assert cyto[t].min() > 5 * cyto[~t].max()  # expressed vs not, in every marker
    assert a.layers["nucleus_mean"][:, 1:].max() < 100  # markers are not in the nuclei
    assert (a.X[:, 0] > a.layers["cytoplasm_mean"][:, 0]).all()  # DAPI is
    # a disc of radius 7 px is 149 px = 37.25 µm² at 0.5 µm/px
    np.testing.assert_allclose(a.obs["nucleus_area_um2"], 37.25, rtol=0.1)
    assert (a.obs["area_um2"] > 2 * a.obs["nucleus_area_um2"]).all()
    sq.gr.spatial_neighbors(a, coord_type="generic", delaunay=True)
    assert a.obsp["spatial_connectivities"].shape == (len(a), len(a))
    assert a.obsp["spatial_connectivities"].sum(axis=1).min() >= 2
    z = ad.read_zarr(res.outputs["zarr"])
    assert np.array_equal(z.X, a.X) and set(z.layers) == set(a.layers)


def test_multiplex_preset_on_imc_txt(tmp_path):
    path = need(MOCK / "raw" / "20210305_NE_mockData2_ROI_001_1.txt")
    res = slidecell.run(path, "multiplex-fluorescence", tmp_path / "out", progress=False)
    a = ad.read_zarr(res.outputs["zarr"])
    assert list(a.var_names) == ["Ag107", "Cytoker_651", "Laminin_681", "YBX1_2987", "H3K27Ac_1977"]
    assert a.var["metal"].tolist() == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
    assert res.info["segmentation"]["backend"] == "builtin"
    assert 20 < len(a) < 80  # steinbock's Mesmer masks hold 55 cells for this acquisition
    assert (a.obsm["spatial"] >= 0).all() and (a.obsm["spatial"][:, 0] <= 103).all()


def test_spatialdata_and_zarr_export(tmp_path):
    """`slidecell export --to spatialdata`: image (named channels, multiscale), cell and
    nucleus shapes, and the table annotating the cells, readable by spatialdata."""
    import spatialdata as sd
    from typer.testing import CliRunner

    from slidecell.cli import app

    path, centres, _, names = _synthetic_multiplex(tmp_path, n_markers=4, size=320)
    cfg = slidecell.load_config("multiplex-fluorescence", {"output": {"zarr": False, "h5ad": False, "geojson": False}})
    res = slidecell.run(path, cfg, tmp_path / "out", progress=False)
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(tmp_path / "out"), "--to", "spatialdata"])
    assert r.exit_code == 0, r.output
    s = sd.read_zarr(tmp_path / "out" / "cells.spatialdata.zarr")
    assert set(s.shapes) == {"cells", "nuclei"} and len(s.shapes["cells"]) == res.n_cells == len(centres)
    table = s.tables["table"]
    assert table.uns["spatialdata_attrs"] == {"region": "cells", "region_key": "region", "instance_key": "instance_id"}
    assert list(table.var_names) == names
    img = s.images["image"]
    level0 = img["scale0"]["image"] if hasattr(img, "children") else img
    assert level0.shape == (len(names), 320, 320) and list(level0.coords["c"].values) == names
    # the shapes are the run's outlines; the table rows are in the same order
    import geopandas as gpd

    g = gpd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert s.shapes["cells"].geometry.reset_index(drop=True).geom_equals(g.geometry).all()
    assert list(table.obs_names) == list(g["cell_id"])
    # the AnnData as zarr, from a run that wrote no h5ad
    r = runner.invoke(app, ["export", str(tmp_path / "out"), "--to", "zarr"])
    assert r.exit_code == 0, r.output
    z = ad.read_zarr(tmp_path / "out" / "cells.zarr")
    assert np.array_equal(z.X, table.X) and set(z.layers) == {"nucleus_mean", "cytoplasm_mean"}
    assert not list((tmp_path / "out").glob(".tmp-*"))


@pytest.mark.cellpose
def test_cellpose_two_channel_whole_cells(tmp_path):
    """Cellpose's two-channel mode (membrane + nuclear marker, both found by name) gives whole
    cells, and its nuclear segmentation their nuclei: compartments as with grown nuclei."""
    pytest.importorskip("cellpose")
    from conftest import write_ome_pyramid

    model = need(SHARED.parent / "models" / "cellpose-scellseg" / "scellseg_cellpose_cellpose3.pth")
    size = 256
    yy, xx = np.mgrid[0:size, 0:size]
    centres = [(y, x) for y in range(30, size - 20, 40) for x in range(30, size - 20, 40)]
    dapi = np.full((size, size), 50.0)
    memb = np.full((size, size), 50.0)
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        dapi[d <= 7] = 3000
        memb[(d > 14) & (d <= 16.5)] = 2500
    data = np.stack([dapi, memb]).astype(np.uint16)
    write_ome_pyramid(tmp_path / "cells.ome.tif", data, ["DAPI", "Membrane"], 0.5, levels=1, tile=64)
    cfg = slidecell.config_from_dict({
        "tissue": {"enabled": False, "modality": "fluorescence"},
        "segmentation": {"backend": "cellpose",  # both channels found by name
                         "params": {"model": str(model), "diameter_um": 16, "cell_channels": "auto"}},
        "measure": {"compartments": ["cell", "nucleus", "cytoplasm"]},
        "output": {"geojson": True, "h5ad": True, "parquet": False},
    })
    res = slidecell.run(tmp_path / "cells.ome.tif", cfg, tmp_path / "out", progress=False)
    used = json.loads((tmp_path / "out" / "run.json").read_text())["segmentation"]["channels_used"]
    assert used["membrane"] == ["Membrane"] and "DAPI" in str(used)
    a = ad.read_h5ad(res.outputs["h5ad"])
    assert abs(len(a) - len(centres)) <= 2
    with_nucleus = a.obs["nucleus_area_um2"] > 0
    assert with_nucleus.mean() > 0.9
    ok = a[with_nucleus.to_numpy()]
    assert (ok.obs["area_um2"] > 2 * ok.obs["nucleus_area_um2"]).mean() > 0.9
    m = list(a.var_names).index("Membrane")
    assert (ok.layers["cytoplasm_mean"][:, m] > ok.layers["nucleus_mean"][:, m]).all()
    feats = json.loads((tmp_path / "out" / "cells.geojson").read_text())["features"]
    assert all(f["properties"]["objectType"] == "cell" for f in feats)
    assert sum("nucleusGeometry" in f for f in feats) == int(with_nucleus.sum())
