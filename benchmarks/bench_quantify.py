"""Multiplexed quantification at scale: a 20,000 × 20,000 × 40-channel uint16 OME-TIFF with
about a million nuclei, measured end to end by `slidecell run` with its nuclear mask
(backend: mask), nuclei grown 3 µm into cells, every marker's mean in the cell, nucleus and
cytoplasm (the multiplex preset's measurements).

    .venv/bin/python benchmarks/bench_quantify.py [--size 20000] [--channels 40] [--post-workers 1] [--preset]
        [--growth membrane]

With ``--preset`` the nuclei are found by the built-in model on the DAPI channel with the
multiplex preset (its tiling, tissue detection and 2 µm growth) instead of read from the mask.

The image and mask are built once into benchmarks/.cache (tiled 512², zlib level 1; nuclei are
discs of radius 4-6 px on a jittered 20-px grid, so cells grown by 6 px fill the tissue; each
cell has its own level per channel, nuclei and cytoplasm differ). The run is a child process;
its resident memory (with descendants) is sampled every 0.1 s and its own peak read from the
kernel at exit. Printed: cells, wall time, cells/s, image MP/s (area) and channel-MP/s, peak
RSS, the stage times from run.json, and a check that the measured means equal the
constructed values for a sample of cells.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
STEP, MPP = 20, 0.5


def centres(size: int, seed: int = 7):
    n = size // STEP
    rng = np.random.default_rng(seed)
    jit = rng.integers(-3, 4, (2, n, n))
    radius = rng.integers(4, 7, (n, n))
    return n, jit, radius


def mask_band(y0: int, y1: int, size: int, n, jit, radius) -> np.ndarray:
    """Nuclear labels of rows [y0, y1): label = 1 + grid index, inside its disc."""
    yy = np.arange(y0, y1)[:, None]
    xx = np.arange(size)[None, :]
    gi, gj = np.minimum(yy // STEP, n - 1), np.minimum(xx // STEP, n - 1)
    cy = gi * STEP + STEP // 2 + jit[0][gi, gj]
    cx = gj * STEP + STEP // 2 + jit[1][gi, gj]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius[gi, gj] ** 2
    return np.where(inside, gi * n + gj + 1, 0).astype(np.uint32)


def levels(n_cells: int, channels: int, seed: int = 11):
    """Per cell and channel: (nucleus level, cytoplasm level), uint16."""
    rng = np.random.default_rng(seed)
    nuc = rng.integers(100, 4000, (n_cells + 1, channels)).astype(np.uint16)
    cyto = rng.integers(100, 4000, (n_cells + 1, channels)).astype(np.uint16)
    # channel 0 is a nuclear stain (DAPI): bright nuclei, dim cytoplasm, for --preset to find them
    nuc[:, 0] = rng.integers(1500, 4000, n_cells + 1)
    cyto[:, 0] = rng.integers(50, 200, n_cells + 1)
    nuc[0] = cyto[0] = 0
    return nuc, cyto


def build(size: int, channels: int) -> tuple[Path, Path]:
    import tifffile

    CACHE.mkdir(exist_ok=True)
    img_path = CACHE / f"multiplex-{size}-{channels}-v2.ome.tif"  # v2: DAPI dim outside nuclei
    mask_path = CACHE / f"multiplex-{size}-nuclei.tif"
    if img_path.exists() and mask_path.exists():
        return img_path, mask_path
    n, jit, radius = centres(size)
    band = 512
    t0 = time.perf_counter()

    def mask_tiles():
        for y0 in range(0, size, band):
            m = mask_band(y0, min(size, y0 + band), size, n, jit, radius)
            for x0 in range(0, size, band):
                t = np.zeros((band, band), np.uint32)
                part = m[:, x0:x0 + band]
                t[:part.shape[0], :part.shape[1]] = part
                yield t

    tmp = mask_path.with_suffix(".tmp.tif")
    tifffile.imwrite(tmp, mask_tiles(), shape=(size, size), dtype=np.uint32, tile=(band, band),
                     compression="zlib", compressionargs={"level": 1}, bigtiff=True,
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    os.replace(tmp, mask_path)
    print(f"mask written in {time.perf_counter() - t0:.0f} s", flush=True)
    nuc, cyto = levels(n * n, channels)

    # each pixel's entry in [nucleus levels; cytoplasm levels]: its nucleus, or (once nuclei
    # are grown by 6 px, to the nearest) its cell's cytoplasm; grown on padded bands
    from skimage.segmentation import expand_labels

    pad, n_cells = 16, n * n
    index = np.empty((size, size), np.uint32)
    for y0 in range(0, size, band):
        a, b = max(0, y0 - pad), min(size, y0 + band + pad)
        m = mask_band(a, b, size, n, jit, radius)
        cells = expand_labels(m, 6)
        rows = slice(y0 - a, y0 - a + min(band, size - y0))
        index[y0:y0 + band] = np.where(m[rows] > 0, m[rows], cells[rows] + np.uint32(n_cells + 1))
    print(f"cells grown in {time.perf_counter() - t0:.0f} s", flush=True)

    def image_tiles():
        for c in range(channels):
            lut = np.concatenate([nuc[:, c], cyto[:, c]])
            for y0 in range(0, size, band):
                val = lut[index[y0:y0 + band]]
                for x0 in range(0, size, band):
                    t = np.zeros((band, band), np.uint16)
                    part = val[:, x0:x0 + band]
                    t[:part.shape[0], :part.shape[1]] = part
                    yield t
            print(f"  channel {c + 1}/{channels} ({time.perf_counter() - t0:.0f} s)", flush=True)

    names = ["DAPI"] + [f"Marker{k:02d}" for k in range(1, channels)]
    meta = {"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": MPP, "PhysicalSizeY": MPP,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    tmp = img_path.with_name("tmp-" + img_path.name)
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        tif.write(image_tiles(), shape=(channels, size, size), dtype=np.uint16, tile=(band, band),
                  compression="zlib", compressionargs={"level": 1}, metadata=meta, maxworkers=2)
    os.replace(tmp, img_path)
    print(f"image written in {time.perf_counter() - t0:.0f} s ({img_path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    return img_path, mask_path


def run_quantify(img: Path, mask: Path, out: Path, post_workers: int, preset: bool = False,
                 growth: str = "distance") -> dict:
    """``preset``: the multiplex preset as a user runs it (the built-in model finds the nuclei on
    DAPI, grown 2 µm; its tiling and tissue detection); else the nuclear mask, grown 3 µm.
    ``growth``: how nuclei become cells (``membrane``: along Marker01 and Marker02)."""
    import yaml

    from bench_scale import run_child

    if preset:
        from slidecell import load_config

        cfg = load_config("multiplex-fluorescence").model_dump(mode="json")
        cfg.update(name="bench-quantify-preset", analysis=None)
        cfg["engine"]["post_workers"] = post_workers
        cfg["output"] = {**cfg["output"], "geojson": False, "zarr": False, "parquet": True, "h5ad": True}
    else:
        cfg = {
            "name": "bench-quantify",
            "tiling": {"mpp": MPP, "tile_size": 1024, "overlap_um": 16, "chunk_tiles": 16},
            "tissue": {"enabled": False, "modality": "fluorescence"},
            "segmentation": {"backend": "mask", "params": {"path": str(mask)}, "cell_expansion_um": 3.0},
            "measure": {"compartments": ["cell", "nucleus", "cytoplasm"], "statistics": ["mean"]},
            "engine": {"post_workers": post_workers},
            "output": {"geojson": False, "parquet": True, "h5ad": True},
        }
    if growth != "distance":
        cfg["segmentation"]["cell_growth"] = {"method": growth, "membrane_channels": ["Marker01", "Marker02"]}
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / "bench-quantify.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return run_child(img, out, str(cfg_path), [])


def check(out: Path, size: int, channels: int, sample: int = 2000) -> tuple[int, float]:
    """Measured nucleus and cytoplasm means equal the constructed per-cell levels."""
    import pyarrow.parquet as pq

    n, _, _ = centres(size)
    nuc, cyto = levels(n * n, channels)
    t = pq.read_table(out / "cells.parquet").to_pandas()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(t), min(sample, len(t)), replace=False)
    cols = [c for c in t.columns if c.startswith("nucleus_mean:")]
    lab = t["mask_label"].to_numpy()[rows]
    err = np.abs(t[cols].to_numpy()[rows] - nuc[lab]).max()
    cols = [c for c in t.columns if c.startswith("cytoplasm_mean:")]
    err = max(err, np.abs(t[cols].to_numpy()[rows] - cyto[lab]).max())
    return len(rows), float(err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=40)
    ap.add_argument("--post-workers", type=int, default=1)
    ap.add_argument("--preset", action="store_true",
                    help="segment with the multiplex preset (built-in model on DAPI) instead of the mask")
    ap.add_argument("--growth", choices=["distance", "membrane"], default="distance",
                    help="how nuclei grow into cells (membrane: a watershed on Marker01 + Marker02); with "
                         "membrane the constructed means are not checked (cells follow the signal, not the discs)")
    args = ap.parse_args()
    img, mask = build(args.size, args.channels)
    out = CACHE / f"quantify-out-{args.size}{'-preset' if args.preset else ''}{'-membrane' if args.growth != 'distance' else ''}"
    r = run_quantify(img, mask, out, args.post_workers, args.preset, args.growth)
    info, wall = r["info"], r["wall"]
    n = info["n_cells"]
    mp = args.size * args.size / 1e6
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.node()} ({os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB)  command: {' '.join(sys.argv)}")
    print(f"image {args.size}x{args.size} x {args.channels} ch uint16 ({img.stat().st_size / 2**30:.2f} GiB on disk, "
          f"{mp * args.channels * 2 / 1024:.1f} GiB raw)")
    print(f"cells {n:,}  wall {wall:.1f} s  -> {n / wall:,.0f} cells/s, {mp / wall:.2f} MP/s (area), "
          f"{mp * args.channels / wall:.0f} channel-MP/s")
    print(f"peak RSS: child {r['child_peak'] / 2**30:.2f} GiB, process tree {r['peak_tree'] / 2**30:.2f} GiB")
    print("stage seconds:", json.dumps(info["timings_s"]))
    if args.preset or args.growth != "distance":
        print(f"cells found: {n:,} of {(args.size // STEP) ** 2:,} constructed nuclei")
    else:
        k, err = check(out, args.size, args.channels)
        print(f"check: {k} sampled cells' nucleus and cytoplasm means vs constructed levels, max abs error {err:.3g}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    main()
