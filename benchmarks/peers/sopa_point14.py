"""SOPA (2.2.11, Cellpose 3.1 with the offline weights) on the real MIBI field of view Point14, as
its documentation runs a multiplex image; in .venv-sopa (benchmarks/peers/setup_sopa.sh).

    .venv-sopa/bin/python benchmarks/peers/sopa_point14.py OUT_DIR [--patch 512 --overlap 50]

Writes OUT_DIR/point14.ome.tif (the 47 channel TIFFs as one OME-TIFF, 0.49 µm/px),
OUT_DIR/sopa_cells.parquet (SOPA's cell boundaries, pixel coordinates, with its per-cell channel
means) and OUT_DIR/sopa_run.json (seconds for segmentation + aggregation, peak RSS, versions).
benchmarks/point14.py --external OUT_DIR scores them like slidecell's cells.

    .venv-sopa/bin/python benchmarks/peers/sopa_point14.py OUT_DIR --ome IMAGE.ome.tif --channels DAPI --diameter 16

runs SOPA the same way on another OME-TIFF (benchmarks/sopa_compare.py writes one from any slide
slidecell reads, e.g. the Vectra QPTIFF, and compares).

    .venv-sopa/bin/python benchmarks/peers/sopa_point14.py OUT_DIR --membrane-mean \
        NaKATPase,HLA-Class-1,CD45,Vimentin,Keratin-pan,E-cadherin --channels Membrane,HH3

adds a channel "Membrane" to Point14's OME-TIFF: the mean of those channels, each divided by the
99th percentile of its non-zero pixels (what slidecell's Cellpose backend feeds the network with
``cell_channels: auto``), so SOPA can be run with the same combined membrane input by hand.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent.parent / "shared"
DATA = SHARED / "data" / "multiplex" / "mibi-granuloma-point14"
MODEL = SHARED / "models" / "cellpose-scellseg" / "scellseg_cellpose_cellpose3.pth"
MPP = 0.49


def write_ome(path: Path, membrane_mean: list[str] | None = None) -> list[str]:
    files = sorted((DATA / "channels").glob("*.tif"))
    names = [f.stem for f in files]
    stack = np.stack([tifffile.imread(f) for f in files])
    if membrane_mean:
        sys.path.insert(0, str(HERE.parent.parent))  # slidecell's own rule (pure numpy; no install needed)
        from slidecell.segment.channels import channel_scales, scaled_mean

        image = np.moveaxis(stack, 0, -1)
        idx = [names.index(n) for n in membrane_mean]
        mean = scaled_mean(image, idx, channel_scales([image], idx))
        # on the counts' scale (uint16 like the others): 1.0 = the 99th percentile → 1000
        stack = np.concatenate([stack, np.clip(mean * 1000, 0, 65535).astype(stack.dtype)[None]])
        names = [*names, "Membrane"]
    tifffile.imwrite(path, stack, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": MPP,
                               "PhysicalSizeY": MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--patch", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=50)
    ap.add_argument("--diameter", type=int, default=18, help="cell diameter in pixels (SOPA's unit)")
    ap.add_argument("--ome", type=Path, default=None, help="an OME-TIFF to segment instead of Point14")
    ap.add_argument("--channels", default="NaKATPase,HH3",
                    help="SOPA's channels: a nuclear one, or a cytoplasm/membrane one then a nuclear one")
    ap.add_argument("--membrane-mean", default="",
                    help='Point14: add a channel "Membrane", the mean of these channels each on its 99th percentile')
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    ome = a.ome or a.out / "point14.ome.tif"
    if a.ome is None:
        write_ome(ome, [c for c in a.membrane_mean.split(",") if c])

    import sopa

    t0 = time.perf_counter()
    sdata = sopa.io.ome_tif(str(ome))
    sopa.make_image_patches(sdata, patch_width=a.patch, patch_overlap=a.overlap)
    sopa.segmentation.cellpose(sdata, channels=a.channels.split(","), diameter=a.diameter,
                               pretrained_model=str(MODEL))
    t_seg = time.perf_counter() - t0
    sopa.aggregate(sdata)
    seconds = time.perf_counter() - t0

    shapes = sdata["cellpose_boundaries"]
    table = sdata["table"]
    means = table.to_df()
    cells = shapes.loc[table.obs_names] if set(table.obs_names) <= set(shapes.index) else shapes.iloc[: len(means)]
    cells = cells[["geometry"]].copy()
    cells.attrs = {}  # spatialdata's transformations (not JSON) would go into the parquet metadata
    for c in means.columns:
        cells[f"mean:{c}"] = means[c].to_numpy()
    cells.to_parquet(a.out / "sopa_cells.parquet")
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    run = {"seconds_total": round(seconds, 1), "seconds_segmentation": round(t_seg, 1),
           "peak_rss_gb": round(rss / 1024**2, 2), "cells": int(len(cells)),
           "patch": a.patch, "overlap": a.overlap, "diameter_px": a.diameter, "image": str(ome),
           "channels": a.channels.split(","),
           "versions": {p: version(p) for p in ("sopa", "cellpose", "spatialdata", "torch")},
           "command": " ".join([Path(sys.executable).name, *sys.argv])}
    (a.out / "sopa_run.json").write_text(json.dumps(run, indent=1))
    print(json.dumps(run))


if __name__ == "__main__":
    main()
