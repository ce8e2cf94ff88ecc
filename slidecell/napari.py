"""slidecell's outputs in napari: a reader plug-in (npe2 manifest ``slidecell/napari.yaml``,
registered by the ``napari.manifest`` entry point) for the label OME-TIFF
(``cells_labels.ome.tif``) and the SpatialData store (``cells.spatialdata.zarr``). ``napari
cells_labels.ome.tif`` or ``viewer.open(path, plugin="slidecell")`` then gives layers in µm.

World coordinates are µm on the slide, continuous, with the slide's top-left corner at 0 (the
convention of ``obsm['spatial']`` and of the outlines × the slide's µm/px): a pixel of an image
layer at ``mpp`` µm/px has its centre at ``(i + 0.5) × mpp``, so labels, image, outlines and
centroids of one run lie on each other. Pyramids open as multiscale layers, read lazily.
Nothing here imports napari.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: outlines beyond this many cells are given as centroids only (a napari Shapes layer of
#: hundreds of thousands of polygons is slow to draw); the points layer is always there
MAX_OUTLINES = 20_000

_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3}


def get_reader(path):
    """npe2 reader command: a function that reads ``path``, or None for what is not ours."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if p.is_dir() and p.name.endswith(".zarr") and (p / "tables").is_dir() and \
            any((p / f).exists() for f in ("zarr.json", ".zgroup")):  # a SpatialData store (zarr v3 or v2)
        return read_spatialdata
    if p.is_file() and p.name.lower().endswith((".ome.tif", ".ome.tiff")) and _label_series(p) is not None:
        return read_labels
    return None


def _label_series(path: Path):
    """(levels, mpp) of a single-channel integer OME-TIFF (a label image), else None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            if s.dtype.kind not in "iu" or s.axes.replace("Y", "").replace("X", "").strip("1") or s.ndim != 2:
                return None
            return len(s.levels), _ome_mpp(tf.ome_metadata)
    except Exception:
        return None


def _ome_mpp(ome_xml: str | None) -> float | None:
    """µm per pixel from an OME-XML's Pixels element (PhysicalSizeX and its unit)."""
    if not ome_xml:
        return None
    import xml.etree.ElementTree as ET

    for el in ET.fromstring(ome_xml).iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            return float(el.get("PhysicalSizeX")) * _UNIT_UM.get(el.get("PhysicalSizeXUnit", "µm"), 1.0)
    return None


def read_labels(path):
    """The label OME-TIFF as one labels layer (multiscale when it is a pyramid), in µm."""
    import tifffile
    import zarr

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    n_levels, mpp = _label_series(path)
    group = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    levels = [group[str(i)] for i in range(n_levels)] if n_levels > 1 else [group]
    meta = {"name": path.name.split(".")[0], "multiscale": n_levels > 1}
    if mpp:
        meta |= {"scale": (mpp, mpp), "translate": (mpp / 2, mpp / 2)}
    return [(levels if n_levels > 1 else levels[0], meta, "labels")]


def _slide_mpp(table) -> float:
    info = table.uns.get("slidecell", {})
    if isinstance(info, str):
        info = json.loads(info)
    mpp = info.get("mpp") if isinstance(info, dict) else None
    if not mpp:
        raise ValueError("the store's table has no uns['slidecell']['mpp']: not written by slidecell")
    return float(mpp)


def read_spatialdata(path):
    """A slidecell SpatialData store as napari layers in µm: the image (multiscale, one layer per
    channel), the cell outlines (up to :data:`MAX_OUTLINES`) and the cells' centroids with
    their table's columns as features."""
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    sdata = sd.read_zarr(path)
    table = sdata.tables["table"]
    mpp0 = _slide_mpp(table)
    layers = []
    if "image" in sdata.images:
        img = sdata.images["image"]
        if hasattr(img, "keys"):  # a DataTree: scale0, scale1, ...
            arrays = [img[k]["image"] for k in sorted(img.keys(), key=lambda k: int(k.replace("scale", "")))]
        else:
            arrays = [img]
        factor = float(get_transformation(arrays[0], "global").to_affine_matrix(("y", "x"), ("y", "x"))[0, 0])
        mpp = factor * mpp0  # µm per pixel of the first level
        names = [str(c) for c in arrays[0].coords["c"].values]
        data = [a.data for a in arrays]
        rgb = names == ["Red", "Green", "Blue"]
        meta = {"name": "image" if rgb else names, "scale": (mpp, mpp), "translate": (mpp / 2, mpp / 2),
                "multiscale": len(data) > 1}
        if rgb:
            data = [d.transpose(1, 2, 0) for d in data]
            meta["rgb"] = True
        else:
            meta |= {"channel_axis": 0, "blending": "additive"}
        layers.append((data if len(data) > 1 else data[0], meta, "image"))
    obs = table.obs
    features = obs[[c for c in obs.columns if c not in ("region",)]].reset_index(drop=True)
    xy = np.asarray(table.obsm["spatial"], float)
    if "cells" in sdata.shapes and len(sdata.shapes["cells"]) <= MAX_OUTLINES:
        import shapely

        polys = shapely.get_exterior_ring(sdata.shapes["cells"].geometry.to_numpy())
        outlines = [shapely.get_coordinates(r)[:, ::-1] * mpp0 for r in polys]  # closed rings, (y, x) in µm
        # paths, not polygons: napari triangulates a polygon's face (8 s for 1,400 cells; paths 0.2 s)
        layers.append((outlines, {"name": "cells", "shape_type": "path", "edge_width": 0.5,
                                  "edge_color": "yellow"}, "shapes"))
    layers.append((xy[:, ::-1], {"name": "cell centroids", "features": features, "size": 3,
                                 "face_color": "cyan"}, "points"))
    return layers
