"""A finished run as a SpatialData zarr store: the image (multiscale, at the run's working
resolution, read lazily from the slide), the cell outlines (and nuclei) as shapes, and the cell
table annotating them, so ``spatialdata.read_zarr`` gives squidpy/napari-spatialdata users
everything in one object.

Coordinates: the ``global`` coordinate system is the slide's level-0 pixels (the shapes'
frame); the image carries a scale to it. ``obsm['spatial']`` stays in µm as in the h5ad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_dir

SPATIALDATA_NAME = "cells.spatialdata.zarr"
#: instance key of the table: the row number, which is also the shapes' index (and label - 1)
INSTANCE_KEY = "instance_id"


def _lazy_image(record, block: int = 2048):
    """The slide at the run's working resolution as a dask array (c, y, x), read block by block
    when written."""
    import dask
    import dask.array as da

    plan = record.plan
    reader = record.open_slide()
    mpp, scale = plan["mpp"], plan["scale"]
    w, h = plan["width"], plan["height"]
    nch = reader.n_channels

    def read(x, y, bw, bh):
        return np.moveaxis(reader.read(int(round(x * scale)), int(round(y * scale)), bw, bh, mpp), -1, 0)

    rows = []
    for y in range(0, h, block):
        row = []
        for x in range(0, w, block):
            bw, bh = min(block, w - x), min(block, h - y)
            row.append(da.from_delayed(dask.delayed(read)(x, y, bw, bh), (nch, bh, bw), dtype=reader.dtype))
        rows.append(da.concatenate(row, axis=2))
    return reader, da.concatenate(rows, axis=1), list(reader.channel_names), scale


def write_spatialdata(run_dir, out, table_h5ad, cells_parquet, image: bool = True, record=None) -> Path:
    """Write the SpatialData store ``out`` (replaced atomically) from a run's folder (its
    run.json, or its ``record`` while the run writes it), its h5ad table and GeoParquet outlines."""
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    run_dir, out = Path(run_dir), Path(out)
    if record is None:
        from ..records import RunDir

        record = RunDir(run_dir).record()
    adata = ad.read_h5ad(table_h5ad)
    adata.obs[INSTANCE_KEY] = np.arange(adata.n_obs, dtype=np.int64)
    gdf = gpd.read_parquet(cells_parquet)
    if len(gdf) != adata.n_obs:
        raise InputError(f"{cells_parquet}: {len(gdf)} outlines but {adata.n_obs} cells in {table_h5ad}")
    shapes = {"cells": ShapesModel.parse(gpd.GeoDataFrame(geometry=gdf.geometry.to_numpy(), index=adata.obs[INSTANCE_KEY].to_numpy()))}
    if "nucleus_geometry" in gdf.columns:
        nuc = gpd.GeoSeries(gdf["nucleus_geometry"])  # a GeoParquet geometry column: decoded
        has = ~(nuc.isna() | nuc.is_empty).to_numpy()  # cells without a nucleus have none
        shapes["nuclei"] = ShapesModel.parse(gpd.GeoDataFrame(geometry=nuc.to_numpy()[has],
                                                              index=adata.obs[INSTANCE_KEY].to_numpy()[has]))
    table = TableModel.parse(adata, region="cells", region_key="region", instance_key=INSTANCE_KEY)
    images, reader = {}, None
    try:
        if image:
            reader, arr, names, scale = _lazy_image(record)
            factors = []
            size = max(arr.shape[1:])
            while size > 2048 and len(factors) < 8:
                factors.append(2)
                size //= 2
            images["image"] = Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=names, scale_factors=factors or None,
                                                 chunks=(1, 1024, 1024),
                                                 transformations={"global": Scale([scale, scale], axes=("y", "x"))})
        sdata = SpatialData(images=images, shapes=shapes, tables={"table": table})
        with atomic_dir(out) as tmp:
            sdata.write(tmp)
    finally:
        if reader is not None:
            reader.close()
    return out


__all__ = ["write_spatialdata", "SPATIALDATA_NAME", "INSTANCE_KEY"]
