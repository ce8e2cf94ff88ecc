"""Reading QuPath GeoJSON: annotations (regions to restrict a run) and cells/detections with
their classifications and measurements.

Accepts the layouts QuPath itself reads: a ``FeatureCollection``, a bare list of features or a
single feature; ``objectType`` inside ``properties`` (QuPath ≥ 0.4), the legacy
``object_type`` (0.2/0.3), a ``type`` property or a misplaced top-level ``objectType``; ``measurements`` as a
name→value map or a list of ``{name, value}``; ``classification`` as ``{name, color}``,
``{names: [...], color}`` (derived classes, joined with ": " as QuPath shows them) or a bare
string; colours as ``[r, g, b]`` or a packed integer; cells' ``nucleusGeometry``; ``.gz`` files.
Coordinates are QuPath's (full-resolution pixels as QuPath opens the slide); ``offset`` adds
OpenSlide's bounds origin back to give slidecell's level-0 pixels.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from ..errors import InputError

_TYPES = {"annotation", "detection", "cell", "tile", "tma_core", "tmacore"}
COLUMNS = ["id", "object_type", "name", "classification", "color", "geometry", "nucleus_geometry", "measurements"]


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _features(data, path: Path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if data.get("type") == "Feature":
            return [data]
        if isinstance(data.get("features"), list):
            return data["features"]
    raise InputError(f"{path}: not GeoJSON features (expected a FeatureCollection, a list of features or a Feature)")


def _color(value):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):  # packed (A)RGB as QuPath stores it
        v = int(value) & 0xFFFFFF
        return (v >> 16 & 255, v >> 8 & 255, v & 255)
    if isinstance(value, (list, tuple)) and len(value) >= 3:
        return tuple(int(c) for c in value[:3])
    return None


def _classification(value):
    """(name, colour) from any of QuPath's classification layouts."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        name = value.get("name")
        if name is None and isinstance(value.get("names"), list):
            name = ": ".join(str(n) for n in value["names"])
        return name, _color(value.get("color", value.get("colorRGB")))
    return None, None


def _measurements(value) -> dict:
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}
    if isinstance(value, list):  # QuPath 0.2: [{"name": ..., "value": ...}]
        return {str(m["name"]): float(m["value"]) for m in value
                if isinstance(m, dict) and "name" in m and isinstance(m.get("value"), (int, float))}
    return {}


def read_qupath_geojson(path, offset=(0, 0)) -> pd.DataFrame:
    """QuPath objects in a GeoJSON file, one row each: ``id``, ``object_type`` (annotation,
    detection, cell, tile, ...; QuPath's default for a plain feature is annotation), ``name``,
    ``classification``, ``color`` (r, g, b), ``geometry`` and ``nucleus_geometry`` (shapely, in
    level-0 pixels: QuPath coordinates plus ``offset``) and ``measurements`` (dict)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with _open(path) as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as err:
        raise InputError(f"{path}: not readable as (gzipped) GeoJSON: {err}") from None
    except RecursionError:
        raise InputError(f"{path}: not usable as GeoJSON: nested too deeply") from None
    rows = []
    ox, oy = offset
    move = (lambda g: shapely.transform(g, lambda c: c + (ox, oy))) if (ox or oy) else (lambda g: g)
    for k, feat in enumerate(_features(data, path)):
        if not isinstance(feat, dict) or "geometry" not in feat:
            raise InputError(f"{path}: feature {k} has no geometry")
        props = feat.get("properties") or {}
        try:
            geom = move(shapely.geometry.shape(feat["geometry"]))
            nuc = feat.get("nucleusGeometry") or props.get("nucleusGeometry")
            nuc = move(shapely.geometry.shape(nuc)) if nuc else None
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as err:
            raise InputError(f"{path}: feature {k}: invalid geometry ({err})") from None
        otype = props.get("objectType") or props.get("object_type") or feat.get("objectType")
        if otype is None and str(props.get("type", "")).lower() in _TYPES:  # some exporters' "type"
            otype = props["type"]
        otype = otype or "annotation"
        cls, color = _classification(props.get("classification"))
        rows.append({
            "id": str(feat.get("id") or props.get("id") or ""),
            "object_type": str(otype).lower(),
            "name": props.get("name"),
            "classification": cls,
            "color": color or _color(props.get("color")),
            "geometry": geom,
            "nucleus_geometry": nuc,
            "measurements": _measurements(props.get("measurements")),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def annotation_region(path, offset=(0, 0), classes=None):
    """The union of the annotations in a QuPath GeoJSON file (optionally only those whose
    classification is in ``classes``), as one shapely geometry in level-0 pixels, to restrict a
    run to it."""
    objs = read_qupath_geojson(path, offset)
    ann = objs[objs["object_type"] == "annotation"]
    if classes:
        ann = ann[ann["classification"].isin(list(classes))]
    polys = [g for g in ann["geometry"] if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0]
    if not polys:
        what = f" of class {', '.join(classes)}" if classes else ""
        raise InputError(f"{path}: no polygon annotation{what} to restrict the run to")
    return shapely.make_valid(shapely.union_all(polys))


__all__ = ["read_qupath_geojson", "annotation_region"]
