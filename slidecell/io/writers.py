"""Writers for the cell table: QuPath GeoJSON (streamed), GeoParquet, AnnData. Every file is
written under a temporary name and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from ..table import (NUCLEUS_SHAPE, OD_COLUMN, QUPATH_NAMES, layer_columns, mean_columns, qupath_measurement_name,
                     to_anndata)


def pid_alive(pid: int) -> bool:
    """A process with this PID exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def sweep_stale_tmp(path: Path) -> None:
    """Remove the temporary files (``.tmp-<pid>-<name>``) of ``path`` left by processes that are
    gone (killed mid-write). Files of live processes are left alone. PIDs are this machine's: two
    machines writing one path of a shared file system at once is refused nowhere else either."""
    import re
    import shutil

    pattern = re.compile(rf"\.tmp-(\d+)-{re.escape(path.name)}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.
    Temporary files of ``path`` left by killed processes are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_tmp(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o644)  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary path beside the directory store ``path`` (zarr); if the block
    succeeds, replace ``path`` (a directory or file) with it; else remove it. Temporary stores
    of ``path`` left by killed processes are removed first."""
    import shutil

    path = Path(path)
    sweep_stale_tmp(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def write_qupath_geojson(table: pd.DataFrame, path, offset=(0, 0), precision: int = 3,
                         object_type: str = "detection") -> int:
    """Write the cells to a QuPath-importable GeoJSON FeatureCollection (see
    :class:`GeoJSONWriter`). Returns the number of features written."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        w = GeoJSONWriter(fh, offset, precision, object_type)
        w.write(table)
        w.close()
    return w.n


def geoparquet_metadata(columns=("geometry",)) -> bytes:
    """GeoParquet 1.1 file metadata for the WKB geometry columns (level-0 pixels, no CRS);
    ``geometry`` is the primary one."""
    return json.dumps({
        "version": "1.1.0", "primary_column": "geometry",
        "columns": {c: {"encoding": "WKB", "crs": None, "geometry_types": ["Polygon"]} for c in columns},
        "creator": {"library": "slidecell"},
    }).encode()


class GeoParquetWriter:
    """Streams cell tables (as Arrow, geometry as WKB) into one GeoParquet file, a row group per
    part; geopandas reads it back as a GeoDataFrame."""

    def __init__(self, path, schema):
        import pyarrow.parquet as pq

        meta = dict(schema.metadata or {})
        meta[b"geo"] = geoparquet_metadata([c for c in ("geometry", "nucleus_geometry") if c in schema.names])
        self.schema = schema.with_metadata(meta)
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd", use_dictionary=["tile"])

    def write(self, arrow_table) -> None:
        if arrow_table.num_rows:
            self.writer.write_table(arrow_table.cast(self.schema))

    def close(self) -> None:
        self.writer.close()


def write_geoparquet(table: pd.DataFrame, path) -> None:
    from ..table import to_arrow

    at = to_arrow(table)
    with atomic_path(path) as tmp:
        w = GeoParquetWriter(tmp, at.schema)
        w.write(at)
        w.close()


class H5adWriter:
    """Streams cell tables into an AnnData ``.h5ad`` without holding them in memory. anndata
    writes the file's layout (var, uns, encodings) from an empty AnnData; the per-cell arrays
    (``X``, ``layers``, the ``obs`` columns and index, ``obsm['spatial']``) are then made
    resizable and filled part by part, gzip-compressed (level 1, byte-shuffled: as small as
    anndata's gzip writer for a small run, half its size for 244k cells, ~2× faster than level 4;
    ``benchmarks/bench_h5ad.py``). With ``n``, :meth:`close` checks that exactly ``n`` cells came."""

    def __init__(self, path, schema, uns: dict | None = None, n: int | None = None, var=None,
                 slide_id: str | None = None, compression: str | None = "gzip", level: int | None = 1,
                 spatial: dict | None = None):
        import h5py

        from ..table import empty_table

        self.n, self.var, self.slide_id, self.path, self.f = n, var, slide_id, Path(path), None
        images = sum(v.nbytes for v in ((spatial or {}).get("images") or {}).values())
        self._check_room(images)
        with self._failing():
            to_anndata(empty_table(schema), uns, var, slide_id, spatial).write_h5ad(path, compression=compression)
            self.f = h5py.File(path, "r+")
            self._resizable(compression, level)
        self.pos = 0

    #: free space kept beyond what a write needs: HDF5 must never meet a full disk (HDF5 2.0
    #: leaves the process unusable, and crashing at exit, after a write that failed for want of
    #: space), so a full disk is reported before it writes (ENOSPC, one line, resumable)
    HEADROOM = 64 << 20

    def _check_room(self, nbytes: int) -> None:
        import errno
        import shutil

        free = shutil.disk_usage(self.path.parent).free
        if free < nbytes + self.HEADROOM:
            raise OSError(errno.ENOSPC, f"No space left on device ({free >> 20} MiB free; the h5ad needs "
                                        f"{(nbytes + self.HEADROOM) >> 20} MiB of room)", str(self.path))

    @contextlib.contextmanager
    def _failing(self):
        """HDF5 work that may fail (a full disk): on failure the file is closed here and now, its
        objects collected, HDF5's complaints while doing so kept off stderr (the caller reports
        the failure in one line), and a plain OSError naming the file raised without references
        to HDF5 objects. A file left open behind a failure is closed later by whichever thread
        collects it, and HDF5 2.0 has crashed in the next file's work after that."""
        import gc
        import io

        failure = None
        try:
            yield
        except OSError as err:
            failure = (err.errno, err.strerror or str(err).split("(")[0].strip())
        if failure is None:
            return
        with contextlib.redirect_stderr(io.StringIO()):
            if self.f is not None:
                try:
                    self.f.close()
                except Exception:  # noqa: BLE001  (the disk is full: closing reports it again)
                    pass
                self.f = None
            gc.collect()
        raise OSError(failure[0], failure[1], str(self.path))

    def _resizable(self, compression, level) -> None:
        """The per-cell arrays anndata wrote empty, made again resizable (and compressed)."""
        import h5py

        obs = self.f["obs"]
        self.keys = ["X", "obsm/spatial", "obs/" + obs.attrs["_index"]]
        self.keys += ["layers/" + k for k in self.f.get("layers", {}).keys()]
        for c in obs.attrs["column-order"]:
            self.keys.append(f"obs/{c}/codes" if isinstance(obs[c], h5py.Group) else f"obs/{c}")
        for key in self.keys:
            old = self.f[key]
            attrs, dtype, shape = dict(old.attrs), old.dtype, old.shape
            del self.f[key]
            packed = {"compression": compression, "compression_opts": level,
                      "shuffle": dtype.kind != "O"} if compression else {}
            new = self.f.create_dataset(key, shape=(0, *shape[1:]), maxshape=(None, *shape[1:]), dtype=dtype,
                                        chunks=(max(1024, 65536 // max(1, int(np.prod(shape[1:])))), *shape[1:]),
                                        **packed)
            new.attrs.update(attrs)

    def _values(self, a, key: str):
        if key == "X":
            return a.X
        if key == "obsm/spatial":
            return a.obsm["spatial"]
        if key == self.keys[2]:
            return a.obs_names.to_numpy().astype(object)
        if key.startswith("layers/"):
            return a.layers[key[7:]]
        if key.endswith("/codes"):
            return a.obs[key[4:-6]].cat.codes.to_numpy()
        return a.obs[key[4:]].to_numpy()

    def write(self, table: pd.DataFrame) -> None:
        k = len(table)
        if not k:
            return
        if self.n is not None and self.pos + k > self.n:
            raise ValueError(f"more cells than announced ({self.n})")
        a = to_anndata(table, None, self.var, self.slide_id)
        self._check_room(2 * (a.X.nbytes + sum(v.nbytes for v in a.layers.values()) + 64 * k * a.obs.shape[1]))
        sl = slice(self.pos, self.pos + k)
        with self._failing():
            for key in self.keys:
                self.f[key].resize(self.pos + k, axis=0)
                self.f[key][sl] = self._values(a, key)
        self.pos += k

    def close(self) -> None:
        if self.f is not None:
            with self._failing():
                self.f.close()
            self.f = None
        if self.n is not None and self.pos != self.n:
            raise ValueError(f"wrote {self.pos} cells, announced {self.n}")


def write_h5ad(table: pd.DataFrame, path, uns: dict | None = None, var=None, slide_id: str | None = None) -> None:
    adata = to_anndata(table, uns, var, slide_id)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def run_uns(info: dict, config: dict, version) -> dict:
    """What a run's AnnData keeps in ``uns['slidecell']``, from its run.json-style ``info``."""
    return {"version": version, "slide": info.get("slide"), "mpp": (info.get("reader") or {}).get("mpp"),
            "working_mpp": (info.get("plan") or {}).get("mpp"), "modality": info.get("modality"),
            "reader": info.get("reader"), "config": config}


def run_var(info: dict):
    """AnnData ``var`` rows (channel, index, metal/fluorophore...) from a run.json-style ``info``."""
    reader = info.get("reader") or {}
    names = reader.get("channels") or []
    meta = reader.get("channel_meta") or [{} for _ in names]
    return pd.DataFrame([{"channel": n, "channel_index": i, **m} for i, (n, m) in enumerate(zip(names, meta))])


def slide_id(info: dict) -> str:
    """The slide's name without its extension(s): ``obs['slide_id']``."""
    name = Path(str(info.get("slide") or "")).name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


#: output formats and their file names
OUTPUT_NAMES = {"geojson": "cells.geojson", "geojson.gz": "cells.geojson.gz", "parquet": "cells.parquet",
                "h5ad": "cells.h5ad", "csv": "cells.csv", "zarr": "cells.zarr"}


def write_zarr_from_h5ad(h5ad, path) -> Path:
    """The AnnData of ``h5ad`` as a zarr store at ``path`` (replaced atomically). Holds the
    table in memory while converting (about cells × markers × (1 + layers) × 4 bytes)."""
    import anndata as ad

    import warnings

    adata = ad.read_h5ad(h5ad)
    with atomic_dir(path) as tmp, ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
        # zarr's notices about its future defaults (sharding, consolidated metadata)
        warnings.simplefilter("ignore", UserWarning)
        adata.write_zarr(tmp)
    return path


class CellFiles:
    """The output files of a run, written together part by part from Arrow cell tables (as the
    engine's chunks hold them: geometry as WKB, optionally a ``feature`` column with each cell's
    QuPath GeoJSON ready-made, followed by a comma). Each file is written under a temporary name
    and renamed into place when the ``with`` block ends without error; on error none is."""

    def __init__(self, paths: dict[str, Path], schema, offset=(0, 0), precision: int = 3, uns: dict | None = None,
                 var=None, slide_id: str | None = None, whole_cells: bool | None = None, spatial: dict | None = None):
        from ..table import as_schema

        self.paths, self.schema, self.offset, self.precision, self.uns = paths, as_schema(schema), offset, precision, uns
        self.var, self.slide_id, self.whole_cells, self.spatial = var, slide_id, whole_cells, spatial
        self.n = self.n_touch = 0

    def __enter__(self):
        import gzip

        self.stack = contextlib.ExitStack().__enter__()
        self.gj = self.pw = self.hw = self.csv = None
        try:
            for fmt in ("geojson", "geojson.gz"):
                if fmt in self.paths:
                    tmp = self.stack.enter_context(atomic_path(self.paths[fmt]))
                    fh = self.stack.enter_context(gzip.open(tmp, "wb", compresslevel=1) if fmt.endswith(".gz")
                                                  else open(tmp, "wb"))
                    self.gj = GeoJSONWriter(fh, self.offset, self.precision, cells=self.whole_cells)
            if "h5ad" in self.paths:
                self.hw = H5adWriter(self.stack.enter_context(atomic_path(self.paths["h5ad"])), self.schema, self.uns,
                                     var=self.var, slide_id=self.slide_id, spatial=self.spatial)
                self.stack.callback(self.hw.close)
        except BaseException:
            import sys

            self.stack.__exit__(*sys.exc_info())  # as a failure: nothing renamed into place
            raise
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            if "parquet" in self.paths and self.pw is None:  # no cells at all
                write_geoparquet(self._empty(), self.paths["parquet"])
            if "csv" in self.paths and self.csv is None:
                with atomic_path(self.paths["csv"]) as tmp:
                    self._empty().drop(columns=["geometry", "nucleus_geometry"], errors="ignore").to_csv(
                        tmp, index=False)
            if self.gj is not None:
                self.gj.close()
        return self.stack.__exit__(*exc)

    def _empty(self):
        from ..table import empty_table

        table = empty_table(self.schema)
        if self.slide_id is not None:
            table.insert(1, "slide_id", pd.Series(dtype="object"))
        return table

    def write(self, at) -> None:
        """One part, as an Arrow table."""
        import pyarrow.compute as pc

        if not at.num_rows:
            return
        cells = at.drop_columns([c for c in ("feature",) if c in at.column_names])
        if self.slide_id is not None and "slide_id" not in cells.column_names:  # as in the AnnData's obs
            import pyarrow as pa

            cells = cells.add_column(1, "slide_id", pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(cells.num_rows, np.int32)), pa.array([self.slide_id])))
        self.n += at.num_rows
        self.n_touch += int(pc.sum(at.column("touches_tile_edge")).as_py() or 0)
        if "parquet" in self.paths:
            if self.pw is None:
                self.pw = GeoParquetWriter(self.stack.enter_context(atomic_path(self.paths["parquet"])), cells.schema)
                self.stack.callback(self.pw.close)
            self.pw.write(cells)
        table = None
        if self.gj is not None:
            if "feature" in at.column_names:  # the features' bytes as they lie, no Python strings
                feats = at.column("feature").combine_chunks()
                offsets = np.frombuffer(feats.buffers()[1], np.int32, len(feats) + 1, feats.offset * 4)
                self.gj.write_joined(memoryview(feats.buffers()[2])[offsets[0]:offsets[-1]], len(feats))
            else:
                from ..table import from_arrow

                table = from_arrow(cells)
                self.gj.write(table)
        plain = cells.drop_columns([c for c in ("geometry", "nucleus_geometry") if c in cells.column_names])
        if self.hw is not None:
            self.hw.write(plain.to_pandas())
        if "csv" in self.paths:
            import pyarrow.csv as pcsv

            if self.csv is None:
                self.csv_schema = plain.schema
                self.csv = pcsv.CSVWriter(self.stack.enter_context(atomic_path(self.paths["csv"])), plain.schema)
                self.stack.callback(self.csv.close)
            self.csv.write_table(plain.cast(self.csv_schema))
