"""QuPath GeoJSON: each cell as a QuPath detection or cell object (outline, nucleus, measurements
with QuPath's names, classification and its colour), made as text in bulk and streamed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import shapely

from ..table import NUCLEUS_SHAPE, OD_COLUMN, QUPATH_NAMES, layer_columns, mean_columns, qupath_measurement_name


def _measurement_names(table: pd.DataFrame, cells: bool | None = None) -> list[tuple[str, str]]:
    if cells is None:  # whole cells when nuclei are outlined too, or when cell layers exist
        cells = "nucleus_geometry" in table.columns or any(lay.startswith("cell_") for lay in layer_columns(table))
    cols = [c for c in QUPATH_NAMES if c in table.columns] + [c for c in (*NUCLEUS_SHAPE, "confidence", "class_probability")
                                                               if c in table.columns]
    cols += [c for c in table.columns if OD_COLUMN.match(c)]
    cols += mean_columns(table) + [c for cs in layer_columns(table).values() for c in cs]
    return [(c, qupath_measurement_name(c, cells)) for c in cols]


def _decimal_text(v: np.ndarray, decimals) -> np.ndarray:
    """ASCII decimal text of each finite value, rounded to ``decimals`` places (a number, or one
    per value), trailing zeros (and a bare point) dropped: an ``(n, width)`` uint8 matrix padded
    with zero bytes. Vectorized; this is what keeps GeoJSON output fast (Python's repr or GEOS's
    writer cost ~10 µs per cell)."""
    v = np.asarray(v, np.float64)
    dec = np.broadcast_to(np.asarray(decimals, np.int64), v.shape)
    top = int(dec.max()) if len(v) else 0
    a = np.abs(v)
    ip = np.trunc(a)
    fp = np.round((a - ip) * 10.0**dec)
    carry = fp >= 10.0**dec  # e.g. 0.9999999 → 1
    ip, fp = (ip + carry).astype(np.int64), np.where(carry, 0, fp).astype(np.int64) * 10 ** (top - dec)
    neg = (v < 0) & ((ip > 0) | (fp > 0))
    nd = len(str(int(ip.max()))) if len(ip) else 1
    digits = (ip[:, None] // 10 ** np.arange(nd - 1, -1, -1, dtype=np.int64)) % 10
    keep = np.cumsum(digits, axis=1) > 0
    keep[:, -1] = True  # "0"
    parts = [np.where(neg, ord("-"), 0)[:, None], np.where(keep, digits + 48, 0)]
    if top and fp.any():
        fd = (fp[:, None] // 10 ** np.arange(top - 1, -1, -1, dtype=np.int64)) % 10
        fkeep = np.cumsum(fd[:, ::-1], axis=1)[:, ::-1] > 0  # up to the last non-zero digit
        parts += [np.where(fp > 0, ord("."), 0)[:, None], np.where(fkeep, fd + 48, 0)]
    return np.concatenate(parts, axis=1).astype(np.uint8)


def _significant(v: np.ndarray, digits: int = 7) -> np.ndarray:
    """Decimals that keep ``digits`` significant digits of each value (at most 9)."""
    ip = np.abs(np.trunc(v))
    ndig = np.where(ip >= 1, np.floor(np.log10(np.maximum(ip, 1))) + 1, 0)
    return np.clip(digits - ndig, 0, 9).astype(np.int64)


def _compact(matrix: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Row-major concatenation of the non-zero bytes of each row, and each row's start offset
    (one more at the end)."""
    mask = matrix != 0
    lengths = mask.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return matrix[mask].tobytes(), starts


def _polygon_json(geoms: np.ndarray, decimals: int) -> list[str]:
    """GeoJSON geometry text of polygons without holes, vectorized over all vertices (GEOS's
    writer if a polygon has holes)."""
    coords, ring = shapely.get_coordinates(geoms, return_index=True)  # (outlines have no holes)
    if len(coords) == 0 or shapely.get_num_interior_rings(geoms).any():
        return shapely.to_geojson(geoms).tolist()
    n = len(coords)
    last = np.ones(n, bool)
    last[:-1] = ring[1:] != ring[:-1]
    x, y = _decimal_text(coords[:, 0], decimals), _decimal_text(coords[:, 1], decimals)
    col = lambda c: np.full((n, 1), ord(c), np.uint8)  # noqa: E731
    sep = np.where(last, 0, ord(",")).astype(np.uint8)[:, None]
    blob, starts = _compact(np.concatenate([col("["), x, col(","), y, col("]"), sep], axis=1))
    ring_start = starts[np.concatenate([[0], np.flatnonzero(last) + 1])]
    text = blob.decode("ascii")
    head, tail = '{"type":"Polygon","coordinates":[[', "]]}"
    return [head + text[a:b] + tail for a, b in zip(ring_start[:-1].tolist(), ring_start[1:].tolist())]


def _measurements_json(values: np.ndarray, names: list[str]) -> list[str]:
    """``"name":value`` pairs per row (non-finite values left out), vectorized; values keep 7
    significant digits (as QuPath's float measurements)."""
    n = len(values)
    blocks = []
    for j, name in enumerate(names):
        col = values[:, j]
        fin = np.isfinite(col)
        col = np.where(fin, col, 0.0)
        txt = _decimal_text(col, _significant(col))
        key = np.frombuffer((json.dumps(name, ensure_ascii=False) + ":").encode(), np.uint8)
        block = np.concatenate([np.broadcast_to(key, (n, len(key))), txt, np.full((n, 1), ord(","), np.uint8)], axis=1)
        block[~fin] = 0
        blocks.append(block)
    if not blocks:
        return [""] * n
    blob, starts = _compact(np.concatenate(blocks, axis=1))
    # keys may hold "µ": slice the bytes, then decode (dropping each row's last comma)
    return [blob[a:b - 1].decode("utf-8") if b > a else "" for a, b in zip(starts[:-1].tolist(), starts[1:].tolist())]


#: QuPath's own colours for its standard classes; other classes get a colour hashed from the name
QUPATH_CLASS_COLORS = {
    "Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Immune cells": (160, 90, 160), "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0), "Region*": (0, 0, 180), "Ignore*": (180, 180, 180), "Positive": (250, 62, 62),
    "Negative": (112, 112, 225),
}


def class_color(name: str) -> tuple[int, int, int]:
    """A stable colour for a class: QuPath's for its standard classes, otherwise a saturated
    colour from a hash of the name (the same in every run and every file)."""
    import colorsys
    import hashlib

    if name in QUPATH_CLASS_COLORS:
        return QUPATH_CLASS_COLORS[name]
    h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, 0.65 + (h >> 9) % 30 / 100, 0.75 + (h >> 17) % 20 / 100)
    return int(r * 255), int(g * 255), int(b * 255)


def _classification_json(classes) -> list[str]:
    cache: dict = {}
    out = []
    for c in classes:
        if c is None or (isinstance(c, float) and np.isnan(c)):
            out.append("")
            continue
        if c not in cache:
            cache[c] = ',"classification":' + json.dumps({"name": str(c), "color": list(class_color(str(c)))},
                                                          ensure_ascii=False, separators=(",", ":"))
        out.append(cache[c])
    return out


def geojson_features(table: pd.DataFrame, offset=(0, 0), precision: int | None = 3,
                     object_type: str = "detection", cells: bool | None = None) -> list[str]:
    """One QuPath GeoJSON Feature (a JSON string) per cell: ``id`` (UUID), ``geometry`` in
    full-resolution pixels as QuPath shows the slide (level-0 minus ``offset``, OpenSlide's
    bounds origin), rounded to ``precision`` decimals, ``properties.objectType``,
    ``properties.classification`` ``{name, color}`` from a ``class`` column, and
    ``properties.measurements`` as a name→number map (non-finite values left out). With a
    ``nucleus_geometry`` column (``geometry`` then being the whole cell) the objects are QuPath
    cells: ``objectType: cell`` and ``nucleusGeometry`` beside ``geometry``."""
    if not len(table):
        return []
    pairs = _measurement_names(table, cells)
    values = table[[c for c, _ in pairs]].to_numpy(np.float64)
    meas = _measurements_json(values, [name for _, name in pairs])
    ox, oy = offset
    dec = 12 if precision is None else precision

    def geometry_text(geoms):
        if ox or oy:
            geoms = shapely.transform(geoms, lambda c: c - (ox, oy))
        return _polygon_json(geoms, dec)

    gj = geometry_text(np.asarray(table["geometry"].to_numpy(), dtype=object))
    with_nuc = "nucleus_geometry" in table.columns
    nuc = [""] * len(table)
    if with_nuc:  # a cell without a nucleus has an empty nucleus outline: no nucleusGeometry
        ng = np.asarray(table["nucleus_geometry"].to_numpy(), dtype=object)
        has = np.flatnonzero(~(shapely.is_missing(ng) | shapely.is_empty(ng)))
        for i, g in zip(has.tolist(), geometry_text(ng[has]) if len(has) else []):
            nuc[i] = ',"nucleusGeometry":' + g
    cls = _classification_json(table["class"]) if "class" in table.columns else [""] * len(table)
    otype = "cell" if with_nuc or cells else object_type
    head = '{"type":"Feature","id":"'
    mid = '","geometry":'
    props = ',"properties":{"objectType":"' + otype + '"'
    return [head + i + mid + g + n + props + c + ',"measurements":{' + m + "}}}" for i, g, n, c, m in
            zip(table["cell_id"].astype(str).tolist(), gj, nuc, cls, meas)]


class GeoJSONWriter:
    """Streams cells into a QuPath-importable GeoJSON FeatureCollection, part by part, into a
    binary file (see :func:`geojson_features`). :meth:`write_joined` takes features already made
    and joined, each followed by a comma (as the engine's chunk files hold them)."""

    def __init__(self, fh, offset=(0, 0), precision: int | None = 3, object_type: str = "detection",
                 cells: bool | None = None):
        self.fh = fh
        self.cells = cells
        self.offset = offset
        self.precision = precision
        self.object_type = object_type
        self.n = 0
        fh.write(b'{"type":"FeatureCollection","features":[')

    def write(self, table: pd.DataFrame) -> None:
        feats = geojson_features(table, self.offset, self.precision, self.object_type, self.cells)
        if feats:
            self.write_joined(("," .join(feats) + ",").encode("utf-8"), len(feats))

    def write_joined(self, data, count: int) -> None:
        if count:
            if self.n:
                self.fh.write(b",")
            self.fh.write(memoryview(data)[:-1])  # the last comma waits for the next part
            self.n += count

    def close(self) -> None:
        self.fh.write(b"]}\n")
