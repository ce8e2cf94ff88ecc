"""Size and write time of slidecell's streamed h5ad (``H5adWriter``: the table written part by
part into resizable datasets) with and without compression, against anndata's own writer
(whole table in memory) with its defaults and with gzip.

    python benchmarks/bench_h5ad.py RUN/cells.parquet [--repeat N]

The run's cell table (outlines dropped) is repeated N times (new cell ids) to make a bigger one;
it is written in parts of 20,000 cells, as a run writes its chunks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from slidecell.io.h5ad import H5adWriter
from slidecell.table import schema_from_columns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parquet", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    t = pq.read_table(args.parquet)
    df = t.drop_columns([c for c in ("geometry", "nucleus_geometry", "feature") if c in t.column_names]).to_pandas()
    big = pd.concat([df.assign(cell_id=df["cell_id"] + f"-{i}") for i in range(args.repeat)], ignore_index=True)
    schema = schema_from_columns(t.schema.names)
    tmp = Path(tempfile.mkdtemp())
    print(f"{len(big):,} cells, {len(big.columns)} columns")
    print("| writer | size (MB) | write (s) |\n|---|---|---|")
    for comp, level in ((None, None), ("lzf", None), ("gzip", 1), ("gzip", 4)):
        path = tmp / f"stream-{comp}-{level}.h5ad"
        t0 = time.perf_counter()
        w = H5adWriter(path, schema, compression=comp, level=level)
        for i in range(0, len(big), 20000):
            w.write(big.iloc[i:i + 20000])
        w.close()
        name = f"slidecell streamed, {comp or 'no compression'}{'' if level is None else f' {level}'}"
        print(f"| {name} | {os.path.getsize(path) / 1e6:.2f} | {time.perf_counter() - t0:.2f} |")
    a = ad.read_h5ad(tmp / "stream-None-None.h5ad")
    for comp in (None, "gzip"):
        path = tmp / f"anndata-{comp}.h5ad"
        t0 = time.perf_counter()
        a.write_h5ad(path, compression=comp)
        print(f"| anndata write_h5ad, {comp or 'default'} | {os.path.getsize(path) / 1e6:.2f} | "
              f"{time.perf_counter() - t0:.2f} |")
    b = ad.read_h5ad(tmp / "stream-gzip-4.h5ad")
    assert np.array_equal(a.X, b.X) and a.obs.equals(b.obs), "compression changed the data"


if __name__ == "__main__":
    main()
