"""Streaming tile throughput vs raw read_region on the same tiles.

Builds (once) a JPEG-compressed tiled pyramidal TIFF from real H&E content (CMU-1-Small-Region
tiled and mirrored to SIZE×SIZE at 0.5 µm/px), plans 1024-px tiles with 24 µm overlap, and times:
  raw      : reader.read() of each tile, one after the other, in this process
  stream   : slidecell.TileStream with 1 and 2 workers (threads and processes), consumer idle
for the tiffslide reader and the OpenSlide reader of the same file. Prints MP/s (tile pixels
delivered per second, overlap included) and the ratio to raw.

  .venv/bin/python benchmarks/bench_streaming.py [--size 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import tifffile

from slidecell import TileStream, open_slide, plan_tiles

HERE = Path(__file__).resolve().parent
CMU1 = HERE.parent.parent / "shared" / "data" / "slides" / "cmu-1-small-region" / "CMU-1-Small-Region.svs"


def build_slide(path: Path, size: int) -> Path:
    if path.exists():
        return path
    src = open_slide(CMU1 if CMU1.exists() else HERE.parent / ".cache" / "CMU-1-Small-Region.svs")
    crop = src.read_region(0, 0, 2048, 2048)
    block = np.concatenate([np.concatenate([crop, crop[:, ::-1]], 1), np.concatenate([crop[::-1], crop[::-1, ::-1]], 1)], 0)
    reps = -(-size // block.shape[0])
    img = np.tile(block, (reps, reps, 1))[:size, :size]
    levels = [img]
    while levels[-1].shape[0] > 2048:
        levels.append(levels[-1][::2, ::2].copy())
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, lv in enumerate(levels):
            tif.write(lv, tile=(256, 256), compression="jpeg", compressionargs={"level": 85}, photometric="rgb",
                      subfiletype=1 if i else 0, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    os.replace(tmp, path)
    return path


def time_raw(reader, plan):
    t0 = time.perf_counter()
    px = 0
    for t in plan.tiles:
        x0, y0 = plan.level0_origin(t)
        px += reader.read(x0, y0, t.w, t.h, plan.mpp).shape[0] * t.w
    return px / (time.perf_counter() - t0) / 1e6


def time_stream(reader, plan, workers, parallel):
    with TileStream(reader, plan, workers=workers, prefetch=2 * workers + 2, parallel=parallel) as s:
        # pool start-up (process spawn) is paid once per run; keep it out of the steady-state rate
        list(s(plan.tiles[:workers]))
        t0 = time.perf_counter()
        px = sum(img.shape[0] * img.shape[1] for _, img in s(plan.tiles))
    return px / (time.perf_counter() - t0) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    path = build_slide(cache / f"he-{args.size}.tif", args.size)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"# slide {path.name}: {args.size}x{args.size} JPEG q85 tiled 256, tiles 1024 + 24 µm overlap at 0.5 µm/px")
    print(f"{'reader':10s} {'mode':10s} {'workers':>7s} {'MP/s':>8s} {'vs raw':>7s}")
    for backend in ("tiffslide", "openslide"):
        reader = open_slide(path, reader=backend)
        plan = plan_tiles(reader, mpp=0.5, tile_size=1024, overlap_um=24)
        raw = max(time_raw(reader, plan) for _ in range(args.repeats))
        print(f"{backend:10s} {'raw':10s} {1:7d} {raw:8.1f} {1.0:7.2f}")
        for parallel in ("threads", "processes"):
            for workers in (1, 2):
                mps = max(time_stream(reader, plan, workers, parallel) for _ in range(args.repeats))
                print(f"{backend:10s} {parallel:10s} {workers:7d} {mps:8.1f} {mps / raw:7.2f}")


if __name__ == "__main__":
    main()
