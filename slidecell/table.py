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
``circularity``           4π area / perimeter² (QuPath's ``Circularity``)
``max_caliper_um``        largest and smallest Feret diameters of the outline (QuPath's
``min_caliper_um``        ``Max caliper``/``Min caliper``)
``touches_tile_edge``     the cell reached the edge of its tile's read window: it is larger than
                          the overlap and was still cut after reading it again with more context,
                          up to ``tiling.max_overlap_um`` (raise that)
``confidence``            when the backend scores its objects (the built-in model): the mean
                          foreground probability over the nucleus, in [0, 1] (QuPath:
                          ``Detection probability``)
``mean:<channel>``        mean intensity of each channel over the cell (the AnnData ``X``)
``<layer>:<channel>``     other statistics and compartments, ``<compartment>_<statistic>``,
                          e.g. ``nucleus_mean:CD3``, ``cytoplasm_median:CD3``, ``cell_p90:CD3``
                          (AnnData ``layers``)
``nucleus_area_um2``      with whole cells (nuclei expanded): the nucleus' area, and its shape
``nucleus_<shape>``       (``nucleus_perimeter_um``, ``nucleus_circularity``, calipers) and
                          ``nucleus_cell_area_ratio``
``<compartment>_od_<stain>``  brightfield: mean optical density of each stain (colour
                          deconvolution, as QuPath), e.g. ``nucleus_od_Hematoxylin``,
                          ``cytoplasm_od_Eosin`` (QuPath: ``Nucleus: Hematoxylin OD mean``)
``geometry``              shapely Polygon in level-0 pixels (the cell; the nucleus when cells
                          are the nuclei)
``nucleus_geometry``      with whole cells: the nucleus outline
========================  =====================================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

MORPHOLOGY = ["area_um2", "perimeter_um", "eccentricity", "solidity", "major_axis_um", "minor_axis_um",
              "circularity", "max_caliper_um", "min_caliper_um"]
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
    "circularity": "Nucleus: Circularity",
    "max_caliper_um": "Nucleus: Max caliper µm",
    "min_caliper_um": "Nucleus: Min caliper µm",
}
#: with whole cells: the nucleus' own shape, under QuPath's names
NUCLEUS_SHAPE = {
    "nucleus_area_um2": "Nucleus: Area µm^2",
    "nucleus_perimeter_um": "Nucleus: Perimeter µm",
    "nucleus_circularity": "Nucleus: Circularity",
    "nucleus_max_caliper_um": "Nucleus: Max caliper µm",
    "nucleus_min_caliper_um": "Nucleus: Min caliper µm",
    "nucleus_cell_area_ratio": "Nucleus/Cell area ratio",
}
#: per-object columns that go into ``obs`` and QuPath as they are (when the table has them)
EXTRA_OBS = ("mask_label", "confidence", *NUCLEUS_SHAPE)
#: a stain column: ``<compartment>_od_<stain>`` (mean optical density of the stain)
#: (an ``obs`` column: letters, digits, ``_.-`` only, as SpatialData requires)
OD_COLUMN = re.compile(r"^(?P<comp>cell|nucleus|cytoplasm)_od_(?P<stain>[A-Za-z0-9_.-]+)$")
CONFIDENCE_NAME = "Detection probability"  # as QuPath's StarDist detections call it


#: a layer column: ``<compartment>_<statistic>:<channel>``
LAYER_COLUMN = re.compile(r"^(?P<layer>(?:cell|nucleus|cytoplasm|membrane)_(?:mean|median|sum|std|min|max|p[0-9.]+)):")
COMPARTMENT_LABEL = {"cell": "Cell", "nucleus": "Nucleus", "cytoplasm": "Cytoplasm", "membrane": "Membrane"}
STAT_LABEL = {"mean": "Mean", "median": "Median", "sum": "Sum", "std": "Std.Dev.", "min": "Min", "max": "Max"}


@dataclass(frozen=True)
class CellSchema:
    """Which columns a run's cell table has beyond :data:`BASE_COLUMNS`: the channels measured
    (``mean:<channel>``), the layers (``<compartment>_<statistic>``, one column per channel
    each) and whether objects are whole cells (``nucleus_area_um2``, ``nucleus_geometry``)."""

    channels: tuple[str, ...]
    layers: tuple[str, ...] = ()
    whole_cells: bool = False
    #: ``mask_label``: the object's id in a given label image (backend ``mask``)
    source_labels: bool = False
    #: ``confidence``: the segmentation's score of each object
    confidence: bool = False
    #: stain columns (``nucleus_od_Hematoxylin``...) of a brightfield image
    od: tuple[str, ...] = ()

    def intensity_columns(self) -> list[str]:
        return [MEAN_PREFIX + c for c in self.channels] + [f"{lay}:{c}" for lay in self.layers for c in self.channels]


def schema_from_columns(names) -> CellSchema:
    """The :class:`CellSchema` of a table (or Arrow schema) with these column names."""
    names = list(names)
    channels = tuple(n[len(MEAN_PREFIX):] for n in names if n.startswith(MEAN_PREFIX))
    layers = tuple(dict.fromkeys(m.group("layer") for m in map(LAYER_COLUMN.match, names) if m))
    return CellSchema(channels, layers, "nucleus_geometry" in names, "mask_label" in names, "confidence" in names,
                      tuple(n for n in names if OD_COLUMN.match(n)))


def as_schema(schema) -> CellSchema:
    """A :class:`CellSchema`, or a list of channel names (means only, objects = nuclei)."""
    return schema if isinstance(schema, CellSchema) else CellSchema(tuple(schema))


def layer_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    """``{layer: [its columns in channel order]}``."""
    out: dict[str, list[str]] = {}
    for c in table.columns:
        m = LAYER_COLUMN.match(c)
        if m:
            out.setdefault(m.group("layer"), []).append(c)
    return out


def qupath_measurement_name(column: str, whole_cells: bool) -> str | None:
    """QuPath's name for a cell-table column: ``Cell: CD3: Mean``, ``Nucleus: Area µm^2``..."""
    primary = "Cell" if whole_cells else "Nucleus"
    if column in QUPATH_NAMES:
        return QUPATH_NAMES[column].replace("Nucleus:", primary + ":", 1)
    if column in NUCLEUS_SHAPE:
        return NUCLEUS_SHAPE[column]
    m = OD_COLUMN.match(column)
    if m:
        return f"{COMPARTMENT_LABEL[m.group('comp')]}: {m.group('stain')} OD mean"
    if column == "confidence":
        return CONFIDENCE_NAME
    if column == "class_probability":  # of the class a classifier gave (slidecell classify apply)
        return "Classification probability"
    if column.startswith(MEAN_PREFIX):
        return f"{primary}: {column[len(MEAN_PREFIX):]}: Mean"
    m = LAYER_COLUMN.match(column)
    if m:
        comp, stat = m.group("layer").split("_", 1)
        label = STAT_LABEL.get(stat) or f"Percentile {stat[1:]}"
        return f"{COMPARTMENT_LABEL[comp]}: {column[m.end():]}: {label}"
    return None


def mean_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(MEAN_PREFIX)]


def channel_names(table: pd.DataFrame) -> list[str]:
    return [c[len(MEAN_PREFIX):] for c in mean_columns(table)]


def empty_table(schema) -> pd.DataFrame:
    """A table with no cells and every column of ``schema`` (a :class:`CellSchema` or channel
    names)."""
    schema = as_schema(schema)
    cols = {c: pd.Series(dtype="float64") for c in BASE_COLUMNS}
    cols["cell_id"] = pd.Series(dtype="object")
    cols["tile"] = pd.Series(dtype="int64")
    cols["touches_tile_edge"] = pd.Series(dtype="bool")
    if schema.source_labels:
        cols["mask_label"] = pd.Series(dtype="int64")
    if schema.confidence:
        cols["confidence"] = pd.Series(dtype="float32")
    if schema.whole_cells:
        for c in NUCLEUS_SHAPE:
            cols[c] = pd.Series(dtype="float64")
    for c in schema.intensity_columns():
        cols[c] = pd.Series(dtype="float32")
    for c in schema.od:
        cols[c] = pd.Series(dtype="float32")
    cols["geometry"] = pd.Series(dtype="object")
    if schema.whole_cells:
        cols["nucleus_geometry"] = pd.Series(dtype="object")
    return pd.DataFrame(cols)


GEOMETRY_COLUMNS = ("geometry", "nucleus_geometry")


def to_arrow(table: pd.DataFrame):
    """Arrow table with the geometries as WKB (for chunk files)."""
    import pyarrow as pa

    geoms = [c for c in GEOMETRY_COLUMNS if c in table.columns]
    df = table.drop(columns=geoms)
    at = pa.Table.from_pandas(df, preserve_index=False)
    if at.schema.field("cell_id").type == pa.null():  # an empty table: keep the column's type
        at = at.set_column(at.schema.get_field_index("cell_id"), "cell_id", pa.array([], pa.string()))
    for g in geoms:
        wkb = shapely.to_wkb(np.asarray(table[g].to_numpy(), dtype=object))
        at = at.append_column(g, pa.array(list(wkb), type=pa.binary()))
    return at


def from_arrow(at) -> pd.DataFrame:
    geoms = [c for c in GEOMETRY_COLUMNS if c in at.column_names]
    df = at.drop(geoms).to_pandas()
    for g in geoms:
        df[g] = shapely.from_wkb(at.column(g).to_numpy(zero_copy_only=False))
    return df


#: ``obs['region']`` of every cell and the SpatialData element the table annotates
REGION = "cells"


def to_anndata(table: pd.DataFrame, uns: dict | None = None, var: pd.DataFrame | None = None,
               slide_id: str | None = None, spatial: dict | None = None):
    """AnnData (scverse conventions): ``X`` = mean intensity per channel over the cell;
    ``layers`` = the other statistics/compartments (``nucleus_mean``, ``cell_median``...);
    ``obs`` = cell id (index), ``slide_id``, ``region``, morphology, centroids in level-0
    pixels; ``obsm['spatial']`` = centroids in µm; ``var`` indexed by marker name with the
    channel index and what the image says of it (``var`` rows from the reader's
    :meth:`~slidecell.io.SlideReader.channel_table`); ``uns['slidecell']`` = ``uns``;
    ``uns['spatial'][slide_id]`` = ``spatial`` (the tissue images, :mod:`slidecell.io.tissue_image`)."""
    import anndata as ad

    channels = channel_names(table)
    n = len(table)
    X = table[mean_columns(table)].to_numpy(np.float32) if n else np.zeros((0, len(channels)), np.float32)
    cols = BASE_COLUMNS + [c for c in EXTRA_OBS if c in table.columns] + [c for c in table.columns if OD_COLUMN.match(c)]
    obs = table[cols].copy()
    obs.index = obs.pop("cell_id").astype(str).to_numpy()
    obs.index.name = "cell_id"
    obs["touches_tile_edge"] = obs["touches_tile_edge"].astype(bool)
    obs.insert(0, "slide_id", pd.Categorical([slide_id or ""] * n, categories=[slide_id or ""]))
    obs.insert(1, "region", pd.Categorical([REGION] * n, categories=[REGION]))
    v = pd.DataFrame({"channel_index": np.arange(len(channels))}, index=pd.Index(channels, name="channel"))
    if var is not None and len(var):
        extra = var.set_index("channel").drop(columns=["channel_index"], errors="ignore")
        extra = extra.reindex(channels)
        for col in extra.columns:
            v[col] = extra[col].fillna("").astype(str).to_numpy()
    layers = {name: table[c].to_numpy(np.float32) if n else np.zeros((0, len(channels)), np.float32)
              for name, c in layer_columns(table).items()}
    adata = ad.AnnData(X=X, obs=obs, var=v, layers=layers)
    adata.obsm["spatial"] = table[["x_um", "y_um"]].to_numpy(np.float64)
    adata.uns["slidecell"] = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in (uns or {}).items() if v is not None}
    if spatial is not None:
        adata.uns["spatial"] = {slide_id or "slide": spatial}
    return adata
