"""`slidecell analyze` on a million synthetic cells (tumour nests in stroma, immune cells
mixed in), on this machine: wall time per stage and peak memory.

    .venv/bin/python benchmarks/bench_analyze.py [--cells 1000000] [--perms 200]

The table (10 markers, µm centroids; slidecell.testing's expression model) is built once into
benchmarks/.cache. The analysis: gating with slidecell.testing.RULES (gates by Gaussian
mixture), Delaunay graph (edges ≤ 30 µm), neighbourhood enrichment with --perms permutations,
interaction matrix, co-occurrence / Ripley's L / centrality on a 20,000-cell subsample,
tumour regions from density with 100 µm margins, distances, mixing score, cellular
neighbourhoods, the tidy tables, cells_analyzed.h5ad and the report. It runs in a child
process whose RSS (with descendants) is sampled every 0.1 s.
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


def build(n_cells: int, seed: int = 0) -> Path:
    import anndata as ad
    import pandas as pd

    from slidecell.testing import IMMUNE, MARKERS, expression

    path = CACHE / f"analyze-{n_cells}.h5ad"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    density = 3000.0  # cells / mm²
    side = np.sqrt(n_cells / density) * 1000  # µm
    xy = rng.uniform(0, side, (n_cells, 2))
    # tumour nests: discs of 300-900 µm radius covering about a third of the tissue
    inside = np.zeros(n_cells, bool)
    covered = 0.0
    while covered < 0.33 * side * side:
        c = rng.uniform(0, side, 2)
        r = rng.uniform(300, 900)
        inside |= np.hypot(xy[:, 0] - c[0], xy[:, 1] - c[1]) <= r
        covered += np.pi * r * r
    types = np.where(inside, "Tumor", "Stroma").astype(object)
    immune = rng.random(n_cells) < np.where(inside, 0.08, 0.25)
    types[immune] = rng.choice(IMMUNE, immune.sum())
    a = ad.AnnData(expression(types, rng), obs=pd.DataFrame({"true_type": pd.Categorical(types)},
                                                            index=[f"c{i}" for i in range(n_cells)]))
    a.var_names = MARKERS
    a.obsm["spatial"] = xy
    a.write_h5ad(path)
    return path


def main():
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from bench_scale import sampled

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--perms", type=int, default=200)
    args = ap.parse_args()
    t0 = time.perf_counter()
    src = build(args.cells)
    print(f"table built/found in {time.perf_counter() - t0:.0f} s: {src}", flush=True)
    out = CACHE / f"analyze-out-{args.cells}"
    cfg = out.parent / "bench-analyze.yaml"
    import yaml

    from slidecell.testing import RULES

    cfg.write_text(yaml.safe_dump({"analysis": {"phenotype": {"gating": {"phenotypes": RULES}},
                                                "stats": {"n_perms": args.perms}}}))
    cmd = [sys.executable, "-m", "slidecell.cli", "analyze", str(src), "--config", str(cfg), "--out", str(out),
           "--overwrite"]
    r = sampled(cmd)
    s = json.loads((out / "analysis.json").read_text())
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.node()} ({os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB)  command: {' '.join(sys.argv)}")
    print(f"cells {s['cells']:,}  wall {r['wall']:.1f} s (analysis {s['total_s']:.1f} s, the rest: reading, "
          f"writing the h5ad and tables, the report)")
    print(f"peak RSS: child {r['child_peak'] / 2**30:.2f} GiB, process tree {r['peak_tree'] / 2**30:.2f} GiB")
    print("stage seconds:", json.dumps(s["timings_s"]))
    print(f"subsampled to {s['graph_statistics']['subsampled_to']} for the quadratic statistics; mixing class "
          f"{s['mixing']['class']} ({s['mixing']['mixing_score']:.3f}); areas {json.dumps(s['areas_mm2'])}")


if __name__ == "__main__":
    main()
