"""Whole-slide engine at scale: `slidecell run` on 50k×50k and 100k×100k 40× slides.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 50000,100000] [--device auto]

The slides are built once into benchmarks/.cache (synthetic_slides.py: real H&E content from
CMU-1-Small-Region in elliptical islands, the same tissue fraction on both sizes, JPEG q85,
256-px tiles, pyramid down to < 2048 px). Each run is `slidecell run SLIDE --config
he-brightfield` in a child process; this script samples the resident memory of the child and
its descendants every 0.1 s and reads the child's own peak RSS from the kernel at exit.

Printed per slide: wall time, tile pixels processed per second (windows, overlap included, at
0.5 µm/px) and tissue-core pixels per second, cells per second, peak RSS, and where the time
went (busy seconds per stage: waiting for reads, model, post-processing in its pool, chunk
writes, final outputs). Then "model + post alone": the same segmenter on 8 of the same slide's
tiles held in memory, predict then finish one after the other, and the ratio of end-to-end
window throughput to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from synthetic_slides import Islands, write_sparse_slide  # noqa: E402


def sampled(cmd: list[str]) -> dict:
    """Run ``cmd`` as a child process, sampling the resident memory of it and its descendants
    every 0.1 s; its own peak RSS from the kernel at exit. Raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak_tree = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak_tree = max(peak_tree, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode})")
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"wall": wall, "peak_tree": peak_tree, "child_peak": child_peak}


def run_child(slide: Path, out: Path, config: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "slidecell.cli", "run", str(slide), "--config", config, "--out", str(out),
           "--overwrite", "-q", *extra]
    r = sampled(cmd)
    r["info"] = json.loads((out / "run.json").read_text())
    return r


def model_post_alone(slide: Path, config: str, n: int = 8) -> float:
    """Window MP/s of predict + finish, one after the other, on ``n`` full-size tiles spread over
    the run's plan (the same mix of dense and sparse tiles), held in memory."""
    import numpy as np


    from slidecell import load_config, open_slide
    from slidecell.tiling import WINDOW_ALIGN
    from slidecell.segment import get_segmenter
    from slidecell.tiling import detect_tissue, plan_tiles

    cfg = load_config(config)
    with open_slide(slide) as r:
        tissue = detect_tissue(r, cfg.tissue.thumbnail_mpp, "brightfield", cfg.tissue.min_area_um2)
        plan = plan_tiles(r, cfg.tiling.mpp, cfg.tiling.tile_size, cfg.tiling.overlap_um,
                          cfg.tiling.snap_tolerance, tissue, cfg.tissue.min_fraction, align=WINDOW_ALIGN)
        size = max(t.w for t in plan.tiles)
        full = [t for t in plan.tiles if t.w == t.h == size]
        full = [full[i] for i in np.linspace(0, len(full) - 1, n).round().astype(int)]  # spread over the plan
        images = [r.read(*plan.level0_origin(t), t.w, t.h, plan.mpp) for t in full]
    seg = get_segmenter("builtin", cfg.segmentation.params, ("Red", "Green", "Blue"), "brightfield", plan.mpp)
    bs = seg.batch_size
    seg.segment_batch(images[:bs])  # warm-up
    t0 = time.perf_counter()
    for k in range(0, len(images), bs):
        part = images[k:k + bs]
        for raw, im in zip(seg.predict(part), part):
            seg.finish(raw, im)
    dt = time.perf_counter() - t0
    return sum(im.shape[0] * im.shape[1] for im in images) / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50000,100000")
    ap.add_argument("--config", default="he-brightfield")
    ap.add_argument("--extra", default="", help="more arguments for slidecell run")
    ap.add_argument("--alone-only", action="store_true", help="only measure model + post alone")
    args = ap.parse_args()
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {dev}, python {platform.python_version()}, "
          f"torch {torch.__version__}")
    rows = []
    if args.alone_only:
        path = cache / f"sparse-he-{args.sizes.split(',')[-1]}.tif"
        print(f"model + post alone: {model_post_alone(path, args.config):.2f} MP/s (windows)")
        return
    for size in [int(s) for s in args.sizes.split(",")]:
        path = cache / f"sparse-he-{size}.tif"
        t0 = time.perf_counter()
        write_sparse_slide(path, size)
        built = time.perf_counter() - t0
        isl = Islands(size)
        print(f"# slide {path.name}: {size}×{size} px at 0.25 µm/px, {len(isl.centres)} islands, "
              f"tissue {isl.fraction:.1%}, {path.stat().st_size / 1e6:.0f} MB (built in {built:.0f} s)", flush=True)
        r = run_child(path, cache / f"out-{size}", args.config, args.extra.split())
        info = r["info"]
        plan = info["plan"]
        t = info["timings_s"]
        tile_px = _window_pixels(cache / f"out-{size}")
        core_px = info["plan"]["tiles"] * plan["tile_size"] ** 2
        rows.append((size, r, info))
        print(f"{size:>7d}²  wall {r['wall']:7.1f} s  tiles {plan['tiles']:5d}  cells {info['n_cells']:8d}  "
              f"windows {tile_px / r['wall'] / 1e6:5.2f} MP/s  cores {core_px / r['wall'] / 1e6:5.2f} MP/s  "
              f"cells/s {info['n_cells'] / r['wall']:7.0f}  peak RSS {r['child_peak'] / 2**30:5.2f} GiB "
              f"(tree, sampled {r['peak_tree'] / 2**30:5.2f} GiB)", flush=True)
        print("          busy s: " + "  ".join(f"{k} {v:.1f}" for k, v in t.items()), flush=True)
    alone = model_post_alone(path, args.config)
    print(f"model + post alone (same segmenter, 8 of the slide's tiles in memory): {alone:.2f} MP/s (windows)")
    for size, r, info in rows:
        e2e = _window_pixels(cache / f"out-{size}") / r["wall"] / 1e6
        print(f"{size:>7d}²  end-to-end / alone = {e2e / alone:.2f}")
    if len(rows) == 2:
        a, b = rows[0][1]["child_peak"], rows[1][1]["child_peak"]
        print(f"peak RSS {rows[1][0]}² / {rows[0][0]}² = {b / a:.2f}")


def _window_pixels(out: Path) -> int:
    """Pixels of all tile windows of the run, as the engine planned them."""
    return int(json.loads((out / "run.json").read_text())["plan"]["window_pixels"])


if __name__ == "__main__":
    main()
