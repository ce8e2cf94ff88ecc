"""A million cells stitched and written, inference excluded.

    .venv/bin/python benchmarks/bench_stitch.py [--cells 1000000] [--post-workers 2]

Runs the engine's own pipeline (slidecell.engine.pipeline.Pipeline: ownership, outlines, measurements in
the post-processing pool, chunk files) and final output writing (GeoJSON + GeoParquet + h5ad)
on a virtual slide made of N×N copies of a 4096² real H&E canvas (CMU-1-Small-Region mirrored,
0.5 µm/px) whose label image was computed once by the built-in model (cached in
benchmarks/.cache). The segmenter replays those labels, and tiles are views into the canvas, so
neither inference nor decoding is timed: what is timed is everything from label images to the
files on disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from synthetic_slides import CANVAS, he_canvas  # noqa: E402

from slidecell import load_config  # noqa: E402
from slidecell.engine import TileContext  # noqa: E402
from slidecell.engine.outputs import OutputStream  # noqa: E402
from slidecell.engine.pipeline import Pipeline  # noqa: E402
from slidecell.segment import Segmenter  # noqa: E402
from slidecell.tiling import WINDOW_ALIGN, plan_tiles  # noqa: E402


class VirtualSlide:
    """What the planner and the output writers need to know about a slide."""

    channel_names = ("Red", "Green", "Blue")
    bounds_offset = (0, 0)
    level_count = 1

    def __init__(self, size: int, mpp: float = 0.5):
        self.dimensions = (size, size)
        self.mpp = mpp

    def level_mpp(self, level):
        return self.mpp

    def best_level(self, mpp):
        return 0


class Replay(Segmenter):
    """Returns the precomputed labels of each tile (looked up by the tile image's identity)."""

    name = "replay"

    def __init__(self):
        super().__init__({}, VirtualSlide.channel_names, "brightfield", 0.5)
        self.pending: dict[int, np.ndarray] = {}

    def predict(self, images):
        # a model hands over fresh contiguous label images: copy the views (timed as "model")
        return [np.ascontiguousarray(self.pending.pop(id(im))) for im in images]


def canvas_labels(canvas: np.ndarray) -> np.ndarray:
    cache = HERE / ".cache" / "canvas-labels.npy"
    if cache.exists():
        return np.load(cache)
    from slidecell.segment import get_segmenter

    seg = get_segmenter("builtin", {}, VirtualSlide.channel_names, "brightfield", 0.5)
    labels = seg.segment(canvas)
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, labels)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--post-workers", type=int, default=2)
    ap.add_argument("--post-parallel", default="processes", choices=["threads", "processes"])
    ap.add_argument("--tile-size", type=int, default=None, help="default: the he-brightfield preset's")
    ap.add_argument("--out", default=str(HERE / ".cache" / "stitch-out"))
    args = ap.parse_args()
    canvas = he_canvas()
    labels = canvas_labels(canvas)
    per_canvas = int(labels.max())
    n = math.ceil(math.sqrt(args.cells / per_canvas))
    size = n * CANVAS
    # wrap-padded copies so that any window is a plain view
    ext_img = np.pad(canvas, ((0, 2048), (0, 2048), (0, 0)), mode="wrap")
    ext_lab = np.pad(labels, ((0, 2048), (0, 2048)), mode="wrap")

    cfg = load_config("he-brightfield", {"engine": {"post_workers": args.post_workers,
                                                    "post_parallel": args.post_parallel}})
    if args.tile_size:
        cfg.tiling.tile_size = args.tile_size
    slide = VirtualSlide(size)
    plan = plan_tiles(slide, 0.5, cfg.tiling.tile_size, cfg.tiling.overlap_um, align=WINDOW_ALIGN)
    seg = Replay()
    ctx = TileContext("bench", 1.0, 0.5, size, size, VirtualSlide.channel_names,
                      geojson=(0, 0, cfg.output.geojson_precision))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / ".slidecell" / "chunks").mkdir(parents=True)
    chunk_path = lambda k: out / ".slidecell" / "chunks" / f"chunk-{k:06d}.parquet"  # noqa: E731

    def stream(tiles):
        for t in tiles:
            x, y = t.x % CANVAS, t.y % CANVAS
            img = ext_img[y:y + t.h, x:x + t.w]
            seg.pending[id(img)] = ext_lab[y:y + t.h, x:x + t.w]
            yield t, img

    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPU cores, python {platform.python_version()}")
    print(f"# virtual slide {size}×{size} at 0.5 µm/px ({n}×{n} canvases of {per_canvas} nuclei), "
          f"{len(plan.tiles)} tiles of {cfg.tiling.tile_size} + {plan.overlap} px, "
          f"post-processing in {args.post_workers} {args.post_parallel}")
    timings = {"read_wait": 0.0, "model": 0.0, "post": 0.0, "write_chunks": 0.0, "retry": 0.0}
    chunks = [chunk_path(k) for k in range(math.ceil(len(plan.tiles) / cfg.tiling.chunk_tiles))]
    info = {"slide": "virtual", "plan": plan.summary(), "modality": "brightfield", "reader": {}}
    t0 = time.perf_counter()
    # as engine.run: outputs are written from the chunks while the pipeline goes on
    with OutputStream(chunks, out, cfg, slide, info) as writer:
        pipe = Pipeline(None, plan, seg, ctx, cfg, chunk_path, timings, on_chunk=writer.feed)
        pipe.run(stream, plan.tiles, False, 0)
        t_pipe = time.perf_counter() - t0
        outputs, n_cells, n_touch = writer.finish()
    t_out = time.perf_counter() - t0 - t_pipe
    total = time.perf_counter() - t0
    # what `slidecell export` needs to treat the folder as a finished run (bench_export.py)
    (out / "run.json").write_text(json.dumps({"status": "complete", "n_cells": n_cells, "reader": {"bounds_offset": [0, 0]},
                                              "modality": "brightfield", "slide": "virtual"}))
    (out / "config.yaml").write_text(cfg.to_yaml())
    sizes = {k: f"{v.stat().st_size / 1e6:.0f} MB" for k, v in outputs.items()}
    print(f"cells {n_cells}  (cut at the canvas joins: {n_touch})  total {total:.1f} s  = {n_cells / total:,.0f} cells/s")
    print(f"  tiles → chunk files {t_pipe:.1f} s (label copies {timings['model']:.1f} s, post busy {timings['post']:.1f} s over {args.post_workers} "
          f"workers, chunk writes {timings['write_chunks']:.1f} s, retries {pipe.retried})")
    print(f"  outputs: written alongside ({writer.busy:.1f} s busy), {t_out:.1f} s after the last tile  "
          f"{json.dumps(sizes)}")


if __name__ == "__main__":
    main()
