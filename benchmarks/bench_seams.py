"""Seams: the tiled engine against the same 4096² of real H&E segmented as one image.

    .venv/bin/python benchmarks/bench_seams.py [--overlaps 40,64]

The image is CMU-1-Small-Region mirrored to 4096×4096 at 0.5 µm/px (synthetic_slides.he_canvas),
written as a JPEG tiled TIFF; the reference is the built-in model on the whole image at once.
For each overlap and each (tile size, grid offset): cells in both, cells matched one-to-one at
IoU ≥ 0.9 (all, and among the reference cells a seam crosses), the largest overlap between two
output cells (a duplicate shows as 1.0) and cells flagged as cut. tests/test_engine.py checks the
same at the default overlap.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from synthetic_slides import he_canvas  # noqa: E402

from slidecell import load_config, open_slide, run  # noqa: E402
from slidecell.engine import TileContext, cells_from_labels  # noqa: E402
from slidecell.metrics import match_polygons, max_overlap_fraction  # noqa: E402
from slidecell.segment import get_segmenter  # noqa: E402
from slidecell.tiling import Tile  # noqa: E402

CASES = [(512, (0, 0)), (1000, (200, 333)), (1536, (700, 90)), (1024, (0, 0))]


def seam_lines(size: int, tile: int, offset) -> np.ndarray:
    xs = range(offset[0] % tile or tile, size, tile)
    ys = range(offset[1] % tile or tile, size, tile)
    return np.array([shapely.LineString([(x, 0), (x, size)]) for x in xs]
                    + [shapely.LineString([(0, y), (size, y)]) for y in ys])


def main() -> None:
    import geopandas as gpd
    import tifffile

    ap = argparse.ArgumentParser()
    ap.add_argument("--overlaps", default="40,64")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    canvas = he_canvas()
    path = tmp / "he4096.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(canvas, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                  resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(path) as r:
        pixels = r.read(0, 0, 4096, 4096, 0.5)
    seg = get_segmenter("builtin", {}, ("Red", "Green", "Blue"), "brightfield", 0.5)
    t0 = time.perf_counter()
    labels = seg.segment(pixels)
    ctx = TileContext("whole", 1.0, 0.5, 4096, 4096, ("Red", "Green", "Blue"))
    ref = cells_from_labels(Tile(0, 0, 0, 0, 0, 4096, 4096, (0, 0, 4096, 4096)), pixels, labels, ctx)
    a = ref["geometry"].to_numpy()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}; whole image: {len(a)} cells in {time.perf_counter() - t0:.1f} s")
    print(f"{'overlap':>7s} {'tile':>5s} {'offset':>10s} {'cells':>6s} {'matched':>8s} {'on seams':>14s} "
          f"{'max overlap':>11s} {'cut':>4s}")
    for ov in [float(v) for v in args.overlaps.split(",")]:
        for tile, offset in CASES:
            cfg = load_config(None, {"tissue": {"enabled": False},
                                     "tiling": {"tile_size": tile, "grid_offset": list(offset), "overlap_um": ov},
                                     "output": {"geojson": False, "h5ad": False}})
            out = tmp / f"o-{ov}-{tile}-{offset[0]}"
            run(path, cfg, out, progress=False)
            b = gpd.read_parquet(out / "cells.parquet")
            bp = b.geometry.to_numpy()
            pairs = match_polygons(a, bp, 0.9)
            on_seam = np.flatnonzero(shapely.intersects(a[:, None], seam_lines(4096, tile, offset)[None, :]).any(axis=1))
            seam_ok = np.isin(on_seam, pairs[:, 0]).mean()
            print(f"{ov:7.0f} {tile:5d} {str(offset):>10s} {len(bp):6d} {len(pairs) / max(len(a), len(bp)):8.2%} "
                  f"{seam_ok:8.2%} of {len(on_seam):4d} {max_overlap_fraction(bp):11.3f} "
                  f"{int(b['touches_tile_edge'].sum()):4d}", flush=True)


if __name__ == "__main__":
    main()
