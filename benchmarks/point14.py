"""Whole cells on the real MIBI field of view Point14, through `slidecell run`, for any backend:
agreement with the study's whole-cell mask and invariance to the tiling.

    .venv-cellpose/bin/python benchmarks/point14.py --backend cellpose \
        --params '{"model": "../shared/models/cellpose-scellseg/scellseg_cellpose_cellpose3.pth", \
                   "diameter_um": 8.8, "cell_channels": "auto", "nuclei": false}' --tiles 256,1024

The image is ../shared/data/multiplex/mibi-granuloma-point14/channels (47 single-channel TIFFs,
read by the channel-folder reader) at 0.49 µm/px, HH3 the nuclear channel, run with the
multiplex preset at its working resolution. Per tiling: cells, F1@0.5 / mSA / precision /
recall of the outlines (filled at the image's native resolution) against cell_mask.tif (1,830
cells; its label 1 is the background, 0 the cell boundaries; a model's output, the study's Mesmer-era segmentation: agreement, not accuracy), seconds. Between
the first tiling and each other: cells matched one-to-one at IoU ≥ 0.9 (% of the larger set)
and pairs of output cells overlapping by more than 5 % of the smaller one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import shapely
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell import config_from_dict, load_config, run  # noqa: E402
from slidecell.evaluate import outlines_to_labels  # noqa: E402
from slidecell.metrics import SetScore, match_polygons, overlapping_pairs  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "multiplex" / "mibi-granuloma-point14"
MPP = 0.49


def run_tiling(backend: str, params: dict, tile: int, work: Path, nuclear: list[str], expansion: float | None = None,
               growth: dict | None = None):
    """One run of the multiplex preset with ``backend`` (its parameters merged into the preset's
    for the built-in model; replacing them for another backend, which then draws the cells
    itself: no nucleus expansion)."""
    data = load_config("multiplex-fluorescence").model_dump(mode="json")
    seg = data["segmentation"]
    same = seg["backend"] == backend
    data["segmentation"] = {**seg, "backend": backend, "nuclear_channels": nuclear,
                            "params": {**seg["params"], **params} if same else params,
                            "cell_expansion_um": seg["cell_expansion_um"] if same else 0.0}
    if expansion is not None:
        data["segmentation"]["cell_expansion_um"] = expansion
    if growth:
        data["segmentation"]["cell_growth"] = {**data["segmentation"]["cell_growth"], **growth}
    data["tiling"]["tile_size"] = tile
    data["measure"]["compartments"] = ["cell"]
    data["output"] = {**data["output"], "geojson": False, "h5ad": False, "zarr": False, "parquet": True}
    data["analysis"] = None
    cfg = config_from_dict(data, "point14 benchmark")
    t0 = time.perf_counter()
    res = run(DATA / "channels", cfg, work / f"t{tile}", mpp=MPP, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    t = pq.read_table(res.outputs["parquet"], columns=["geometry", "mean:HH3"])
    return shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False)), t.column("mean:HH3").to_numpy(), seconds


def means_error(polys: np.ndarray, means: np.ndarray, channel: str, shape) -> dict:
    """Each cell's reported mean of ``channel`` against numpy's mean over the pixels whose
    centres lie inside its outline: median and max relative error (%)."""
    img = tifffile.imread(DATA / "channels" / f"{channel}.tif").astype(np.float64)
    lab = outlines_to_labels(polys, shape, 1.0)
    n = len(polys) + 1
    area = np.bincount(lab.ravel(), minlength=n)[1:]
    ref = np.bincount(lab.ravel(), img.ravel(), minlength=n)[1:] / np.maximum(area, 1)
    ok = (area > 0) & (ref > 0)
    err = np.abs(means[ok] - ref[ok]) / ref[ok] * 100
    return {"median_pct": round(float(np.median(err)), 2), "max_pct": round(float(err.max()), 1),
            "cells_compared": int(ok.sum())}


def score_external(folder: Path, mask: np.ndarray, json_path: Path | None) -> dict:
    import geopandas as gpd

    cells = gpd.read_parquet(folder / "sopa_cells.parquet")
    run_info = json.loads((folder / "sopa_run.json").read_text())
    polys = cells.geometry.to_numpy()
    sc = SetScore()
    sc.add(mask, outlines_to_labels(polys, mask.shape, 1.0))
    r = sc.summary()
    out = {"label": "sopa", **run_info, "F1_50": round(r["F1_50"], 3), "mSA": round(r["mSA"], 3),
           "precision": round(r["precision"], 3), "recall": round(r["recall"], 3),
           "overlapping_pairs": overlapping_pairs(polys, 0.05),
           "HH3_mean_error": means_error(polys, cells["mean:HH3"].to_numpy(), "HH3", mask.shape)}
    print(json.dumps(out))
    if json_path:
        rows = json.loads(json_path.read_text()) if json_path.exists() else []
        json_path.write_text(json.dumps([*rows, out], indent=1))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="builtin")
    ap.add_argument("--params", default="{}", help="backend parameters as JSON")
    ap.add_argument("--nuclear", default="HH3", help="nuclear channel(s), comma-separated; \"\": the preset's choice by name")
    ap.add_argument("--tiles", default="256,1024")
    ap.add_argument("--expansion", type=float, default=None, help="cell_expansion_um instead of the preset's")
    ap.add_argument("--growth", default="{}", help='segmentation.cell_growth as JSON, e.g. \'{"method": "membrane"}\'')
    ap.add_argument("--label", default=None)
    ap.add_argument("--json", type=Path, default=None, help="append the result to this JSON list")
    ap.add_argument("--external", type=Path, default=None,
                    help="score another tool's cells instead (a folder with sopa_cells.parquet and sopa_run.json "
                         "from benchmarks/peers/sopa_point14.py)")
    a = ap.parse_args(argv)
    params = json.loads(a.params)
    mask = tifffile.imread(DATA / "cell_mask.tif").astype(np.int32)
    mask[mask == 1] = 0  # label 1 is the background around the cells (0 marks their boundaries)
    if a.external:
        return score_external(a.external, mask, a.json)
    tiles = [int(t) for t in a.tiles.split(",")]
    out = {"label": a.label or a.backend, "backend": a.backend, "params": params, "tilings": {}}
    polys = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in tiles:
            p, means, sec = run_tiling(a.backend, params, t, Path(tmp), [c for c in a.nuclear.split(",") if c], a.expansion,
                                   json.loads(a.growth))
            polys[t] = p
            sc = SetScore()
            sc.add(mask, outlines_to_labels(p, mask.shape, 1.0))
            r = sc.summary()
            out["tilings"][t] = {"cells": len(p), "F1_50": round(r["F1_50"], 3), "mSA": round(r["mSA"], 3),
                                 "precision": round(r["precision"], 3), "recall": round(r["recall"], 3),
                                 "overlapping_pairs": overlapping_pairs(p, 0.05), "seconds": round(sec, 1),
                                 "HH3_mean_error": means_error(p, means, "HH3", mask.shape)}
            print(f"{out['label']} tile {t}: {out['tilings'][t]}", flush=True)
    ref = tiles[0]
    for t in tiles[1:]:
        pairs = match_polygons(polys[ref], polys[t], 0.9)
        frac = len(pairs) / max(len(polys[ref]), len(polys[t]), 1)
        out["tilings"][t][f"matched_vs_{ref}"] = round(100 * frac, 2)
        print(f"{out['label']} tiles {ref} vs {t}: {len(pairs)} matched at IoU>=0.9 ({100 * frac:.2f} %)")
    if a.json:
        rows = json.loads(a.json.read_text()) if a.json.exists() else []
        a.json.write_text(json.dumps([*rows, out], indent=1))
    return out


if __name__ == "__main__":
    main()
