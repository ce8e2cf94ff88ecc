"""Behaviour unchanged? `slidecell run` on three real inputs, before and after a change (issue 18).

    # outputs of another commit, from a worktree of it (same virtual environment):
    git worktree add /tmp/ref 77f4b94
    PYTHONPATH=/tmp/ref python benchmarks/same_outputs.py record /tmp/same/before
    # outputs of this checkout, then the comparison:
    python benchmarks/same_outputs.py record /tmp/same/after
    python benchmarks/same_outputs.py compare /tmp/same/before /tmp/same/after

The inputs: CMU-1-Small-Region.svs (H&E, default preset), the Vectra QPTIFF (multiplex preset) and a
24-channel OME-TIFF written once (beside the records) from the MIBI Point14 channel TIFFs (multiplex
preset, --mpp 0.49).
`compare` prints, per input, whether `cells.geojson` is byte-identical and whether every column of
`cells.parquet` is equal (geometry as WKB bytes), and exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POINT14 = SHARED / "multiplex" / "mibi-granuloma-point14" / "channels"
# 24 of Point14's 47 channels: the nuclear and membrane markers the preset finds by name, and more
CHANNELS = ["HH3", "H3K9Ac", "NaKATPase", "HLA-Class-1", "CD45", "E-cadherin", "Keratin-pan", "CD3",
            "CD4", "CD8", "CD11b", "CD11c", "CD14", "CD16", "CD20", "CD31", "CD68", "CD163", "Ki67",
            "Vimentin", "SMA", "PD-L1", "HLA-DR-DQ-DP", "Collagen-1"]


def ome24(cache: Path) -> Path:
    import tifffile
    path = cache / "point14-24ch.ome.tif"
    if not path.exists():
        data = np.stack([tifffile.imread(POINT14 / f"{c}.tif") for c in CHANNELS])
        tifffile.imwrite(path, data, ome=True, metadata={
            "axes": "CYX", "Channel": {"Name": CHANNELS},
            "PhysicalSizeX": 0.49, "PhysicalSizeY": 0.49})
    return path


def inputs(cache: Path) -> dict[str, list[str]]:
    return {
        "cmu1": [str(SHARED / "slides" / "cmu-1-small-region" / "CMU-1-Small-Region.svs")],
        "qptiff": [str(SHARED / "slides" / "pathml-testdata" / "small_vectra.qptiff"),
                   "--config", "multiplex-fluorescence"],
        "ome24": [str(ome24(cache)), "--config", "multiplex-fluorescence", "--mpp", "0.49"],
    }


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    import slidecell
    print(f"slidecell from {Path(slidecell.__file__).parent}")
    # the OME-TIFF is written once beside the records (tifffile writes a new UUID into each file)
    for name, args in inputs(out.parent).items():
        dest = out / name
        cmd = [sys.executable, "-m", "slidecell.cli", "run", *args, "--out", str(dest)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def _table(path: Path):
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pandas()


def compare(a: Path, b: Path) -> int:
    bad = 0
    for name in ("cmu1", "qptiff", "ome24"):
        ga, gb = a / name / "cells.geojson", b / name / "cells.geojson"
        same_geojson = filecmp.cmp(ga, gb, shallow=False)
        ta, tb = _table(a / name / "cells.parquet"), _table(b / name / "cells.parquet")
        differ = [c for c in ta.columns if c not in tb.columns or not ta[c].equals(tb[c])]
        differ += [c for c in tb.columns if c not in ta.columns]
        same_table = not differ and list(ta.columns) == list(tb.columns)
        print(f"{name:7s} cells {len(ta):6d} vs {len(tb):6d}  geojson byte-identical: {same_geojson}  "
              f"parquet equal ({len(ta.columns)} columns): {same_table}"
              + (f"  differing: {differ}" if differ else ""))
        bad += not (same_geojson and same_table and len(ta) == len(tb))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    ns = ap.parse_args()
    if ns.cmd == "record":
        record(ns.out)
        return 0
    return compare(ns.before, ns.after)


if __name__ == "__main__":
    sys.exit(main())
