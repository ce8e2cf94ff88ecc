"""Writers for the cell table: QuPath GeoJSON (streamed), GeoParquet, AnnData. Every file is
written under a temporary name and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from ..table import MEAN_PREFIX, QUPATH_NAMES, mean_columns, to_anndata, to_geodataframe


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _measurement_names(table: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = [(col, name) for col, name in QUPATH_NAMES.items() if col in table.columns]
    pairs += [(c, f"Nucleus: {c[len(MEAN_PREFIX):]}: Mean") for c in mean_columns(table)]
    return pairs


def write_qupath_geojson(table: pd.DataFrame, path, offset=(0, 0), precision: int = 2,
                         object_type: str = "detection", batch: int = 20000) -> int:
    """Stream the cells to a QuPath-importable GeoJSON FeatureCollection.

    Each feature: ``id`` (UUID), ``geometry`` in full-resolution pixels as QuPath shows the slide
    (level-0 minus ``offset``, OpenSlide's bounds origin), ``properties.objectType``,
    ``properties.measurements`` as a name→number map (non-finite values omitted). Returns the
    number of features written."""
    pairs = _measurement_names(table)
    cols = [c for c, _ in pairs]
    names = [json.dumps(n, ensure_ascii=False) for _, n in pairs]
    ox, oy = offset
    n = len(table)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        first = True
        for start in range(0, n, batch):
            part = table.iloc[start : start + batch]
            geoms = np.asarray(part["geometry"].to_numpy(), dtype=object)
            if ox or oy:
                geoms = shapely.transform(geoms, lambda c: c - (ox, oy))
            geoms = shapely.set_precision(geoms, 10.0**-precision) if precision is not None else geoms
            gj = shapely.to_geojson(geoms)
            values = part[cols].to_numpy(np.float64) if cols else np.zeros((len(part), 0))
            ids = part["cell_id"].astype(str).to_numpy()
            for i in range(len(part)):
                meas = ",".join(
                    f"{names[j]}:{_num(v)}" for j, v in enumerate(values[i]) if math.isfinite(v)
                )
                feat = (
                    f'{{"type":"Feature","id":"{ids[i]}","geometry":{gj[i]},'
                    f'"properties":{{"objectType":"{object_type}","measurements":{{{meas}}}}}}}'
                )
                fh.write(feat if first else "," + feat)
                first = False
        fh.write("]}\n")
    return n


def _num(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def write_geoparquet(table: pd.DataFrame, path) -> None:
    gdf = to_geodataframe(table)
    with atomic_path(path) as tmp:
        gdf.to_parquet(tmp, index=False)


def write_h5ad(table: pd.DataFrame, path, uns: dict | None = None) -> None:
    adata = to_anndata(table, uns)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
