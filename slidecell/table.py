"""The cell table: the one structure passed between stages (segment → measure → export).

A :class:`pandas.DataFrame`, one row per cell, with these columns:

========================  =====================================================================
``cell_id``               deterministic UUID (from the slide and the cell's level-0 centroid)
``tile``                  index of the tile that owns the cell
``x``, ``y``              centroid in level-0 pixels of the slide
``x_um``, ``y_um``        centroid in µm
``area_um2``              area (pixel count × pixel area)
``perimeter_um``          outline length
``eccentricity``          of the ellipse with the same second moments (0 = circle)
``solidity``              area / convex hull area
``major_axis_um``         axes of that ellipse
``minor_axis_um``
``touches_tile_edge``     the cell reached the edge of its tile's read window: it is larger than
                          the overlap and may be cut (increase ``tiling.overlap_um``)
``mean:<channel>``        mean intensity of each channel over the cell
``geometry``              shapely Polygon in level-0 pixels
========================  =====================================================================
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import shapely

MORPHOLOGY = ["area_um2", "perimeter_um", "eccentricity", "solidity", "major_axis_um", "minor_axis_um"]
BASE_COLUMNS = ["cell_id", "tile", "x", "y", "x_um", "y_um", *MORPHOLOGY, "touches_tile_edge"]
MEAN_PREFIX = "mean:"

#: QuPath-style measurement names for the GeoJSON export
QUPATH_NAMES = {
    "area_um2": "Nucleus: Area µm^2",
    "perimeter_um": "Nucleus: Perimeter µm",
    "eccentricity": "Nucleus: Eccentricity",
    "solidity": "Nucleus: Solidity",
    "major_axis_um": "Nucleus: Major axis µm",
    "minor_axis_um": "Nucleus: Minor axis µm",
}


def mean_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(MEAN_PREFIX)]


def channel_names(table: pd.DataFrame) -> list[str]:
    return [c[len(MEAN_PREFIX):] for c in mean_columns(table)]


def empty_table(channels) -> pd.DataFrame:
    cols = {c: pd.Series(dtype="float64") for c in BASE_COLUMNS}
    cols["cell_id"] = pd.Series(dtype="object")
    cols["tile"] = pd.Series(dtype="int64")
    cols["touches_tile_edge"] = pd.Series(dtype="bool")
    for ch in channels:
        cols[MEAN_PREFIX + ch] = pd.Series(dtype="float32")
    cols["geometry"] = pd.Series(dtype="object")
    return pd.DataFrame(cols)


def to_arrow(table: pd.DataFrame):
    """Arrow table with geometry as WKB (for chunk files)."""
    import pyarrow as pa

    df = table.drop(columns=["geometry"])
    at = pa.Table.from_pandas(df, preserve_index=False)
    if at.schema.field("cell_id").type == pa.null():  # an empty table: keep the column's type
        at = at.set_column(at.schema.get_field_index("cell_id"), "cell_id", pa.array([], pa.string()))
    wkb = shapely.to_wkb(np.asarray(table["geometry"].to_numpy(), dtype=object))
    return at.append_column("geometry", pa.array(list(wkb), type=pa.binary()))


def from_arrow(at) -> pd.DataFrame:
    df = at.drop(["geometry"]).to_pandas()
    df["geometry"] = shapely.from_wkb(at.column("geometry").to_numpy(zero_copy_only=False))
    return df


def to_geodataframe(table: pd.DataFrame):
    import geopandas as gpd

    return gpd.GeoDataFrame(table.drop(columns=["geometry"]), geometry=list(table["geometry"]), crs=None)


def to_anndata(table: pd.DataFrame, uns: dict | None = None):
    """AnnData: ``X`` = mean intensity per channel, ``obs`` = morphology and pixel centroids,
    ``obsm['spatial']`` = centroids in µm, ``var`` indexed by channel name."""
    import anndata as ad

    channels = channel_names(table)
    X = table[mean_columns(table)].to_numpy(np.float32) if len(table) else np.zeros((0, len(channels)), np.float32)
    obs = table[BASE_COLUMNS].copy()
    obs.index = obs.pop("cell_id").astype(str).to_numpy()
    obs.index.name = "cell_id"
    obs["touches_tile_edge"] = obs["touches_tile_edge"].astype(bool)
    var = pd.DataFrame({"channel_index": np.arange(len(channels))}, index=pd.Index(channels, name="channel"))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = table[["x_um", "y_um"]].to_numpy(np.float64)
    adata.uns["slidecell"] = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in (uns or {}).items() if v is not None}
    return adata
