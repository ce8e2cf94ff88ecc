"""One slide on Dask: `slidecell run` on the 50k × 50k synthetic slide of the engine benchmark
(bench_scale.py) in this process vs a LocalCluster of 1 and 2 worker processes.

    .venv/bin/python benchmarks/bench_dask.py [--size 50000] [--workers 1,2]

Each run is a child process (RSS of it and its descendants, the Dask workers included,
sampled every 0.1 s). Cells are checked to be the same as the local run's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import run_child  # noqa: E402
from synthetic_slides import write_sparse_slide  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=50000)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    cache = HERE / ".cache"
    path = cache / f"sparse-he-{args.size}.tif"
    write_sparse_slide(path, args.size)
    import pyarrow.parquet as pq
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {dev}; command: {' '.join(sys.argv)}")
    runs = [("local", [])] + [(f"dask x{n}", ["--scheduler", "local", "--dask-workers", str(n)])
                              for n in map(int, args.workers.split(","))]
    ref = None
    for name, extra in runs:
        out = cache / f"dask-out-{args.size}-{name.replace(' ', '')}"
        r = run_child(path, out, "he-brightfield", extra)
        cells = pq.read_table(out / "cells.parquet", columns=["cell_id", "area_um2"]).to_pandas()
        same = "" if ref is None else f"  same cells as local: {cells.equals(ref)}"
        ref = cells if ref is None else ref
        print(f"{name:9s} wall {r['wall']:7.1f} s  cells {len(cells):7d}  cells/s {len(cells) / r['wall']:6.0f}  "
              f"peak RSS (tree) {r['peak_tree'] / 2**30:5.2f} GiB{same}", flush=True)


if __name__ == "__main__":
    main()
