"""`slidecell export` of a million cells: wall time and peak memory.

    .venv/bin/python benchmarks/bench_export.py [RUN_DIR] [--to geojson,geojson.gz,csv]

RUN_DIR defaults to the output of bench_stitch.py (1,025,541 cells; run it first). Each export
runs as `slidecell export RUN_DIR --to FMT` in a child process; the peak RSS is the child's,
from the kernel.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?", default=str(HERE / ".cache" / "stitch-out"))
    ap.add_argument("--to", default="geojson,geojson.gz,csv")
    ap.add_argument("--geopandas-rows", type=int, default=0,
                    help="also time geopandas' GeoDataFrame.to_file(driver='GeoJSON') on this many cells")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} CPU cores; source {args.run_dir}")
    for fmt in args.to.split(","):
        out = tmp / f"cells.{fmt}"
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "slidecell.cli", "export", args.run_dir, "--to", fmt,
                              "--out", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode:
            raise SystemExit(res.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"{fmt:11s} {wall:6.1f} s  {out.stat().st_size / 1e6:6.0f} MB  peak RSS (largest child so far) {peak:.2f} GiB",
              flush=True)
        out.unlink()
    if args.geopandas_rows:
        import geopandas as gpd
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(Path(args.run_dir) / "cells.parquet")
        rows = next(pf.iter_batches(batch_size=args.geopandas_rows))
        df = pa.Table.from_batches([rows]).to_pandas()
        df = df.drop(columns=[c for c in ("nucleus_geometry",) if c in df.columns])
        gdf = gpd.GeoDataFrame(df.drop(columns=["geometry"]), geometry=gpd.GeoSeries.from_wkb(df["geometry"]))
        t0 = time.perf_counter()
        gdf.to_file(tmp / "gpd.geojson", driver="GeoJSON")
        wall = time.perf_counter() - t0
        print(f"geopandas to_file(GeoJSON) on {len(gdf)} cells: {wall:.1f} s "
              f"(= {wall / len(gdf) * 1e6:.0f} µs/cell; slidecell: see the geojson line)")


if __name__ == "__main__":
    main()
