"""The tissue under the cells (slidecell.io.tissue_image): squidpy draws a run's cells on it."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from conftest import need


@pytest.mark.parametrize("which", ["cmu1", "qptiff"])
def test_squidpy_draws_the_cells_on_the_tissue(tmp_path, which):
    """`sq.pl.spatial_scatter(adata, color=...)` with no other argument draws a run's cells on
    its slide: cells.h5ad carries uns['spatial'][slide_id] (images + scale factors); the points
    fall on tissue (darker than the background in H&E, brighter than the median in DAPI); the
    exported h5ad carries the same images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    import slidecell
    from conftest import CMU1, QPTIFF
    from slidecell.export import export

    slide, preset, roi = {"cmu1": (CMU1, "he-brightfield", [700, 1700, 600, 600]),
                          "qptiff": (QPTIFF, "multiplex-fluorescence", None)}[which]
    cfg = slidecell.load_config(preset, {"roi": roi, "output": {"geojson": False, "zarr": False}})
    slidecell.run(need(slide), cfg, tmp_path / "run", progress=False)
    a = ad.read_h5ad(tmp_path / "run" / "cells.h5ad")
    lib = a.obs["slide_id"].iloc[0]
    assert list(a.uns["spatial"]) == [lib]
    hires = a.uns["spatial"][lib]["images"]["hires"]
    assert hires.dtype == np.uint8 and max(hires.shape[:2]) <= 2000 and hires.shape[2] == 3
    sq.pl.spatial_scatter(a, color="area_um2")
    fig = plt.gcf()
    ax = fig.axes[0]
    assert len(ax.images) == 1  # the tissue
    paths = ax.collections[0].get_paths()  # a circle per cell, in the image's pixels
    assert len(paths) == a.n_obs
    xy = np.array([[(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2] for b in (q.get_extents() for q in paths)])
    sf = a.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"]
    assert np.allclose(xy, a.obsm["spatial"] * sf, atol=0.5)
    grey = hires.astype(float).mean(2)
    under = grey[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    if which == "cmu1":
        assert np.median(under) < np.percentile(grey, 90) - 60  # tissue, not white background
    else:
        assert np.median(under) > np.median(grey)
    fig.savefig(tmp_path / "scatter.png")
    plt.close(fig)
    assert (tmp_path / "scatter.png").stat().st_size > 10_000
    b = ad.read_h5ad(export(tmp_path / "run", "h5ad", tmp_path / "exported.h5ad"))
    assert np.array_equal(b.uns["spatial"][lib]["images"]["lowres"], a.uns["spatial"][lib]["images"]["lowres"])
