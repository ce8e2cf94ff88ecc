"""Choose the Cellpose backend's whole-cell defaults on data that is not the benchmark's: the three
real IMC crops in ../shared/data/multiplex/imc-cytomapper (pancreas, 1 µm/px, H3 nuclear; CD99 and
CDH the membrane markers; the study's pipeline masks, 362 cells), scored F1@0.5 / mSA per setting.

    .venv-cellpose/bin/python benchmarks/choose_cellpose.py [--model PATH] [--cells auto|CDH]

Each crop is calibrated on itself (as `slidecell run` does with a one-tile image) and segmented
with every combination of flow threshold, cell-probability threshold, slide-histogram
equalisation and smoothing, and its cells then kept from each minimum area (a fraction of the
disc of the expected diameter: SOPA keeps cells from (diameter / 2)², 32 % of it); the table is
sorted by mean F1. Point14 (benchmarks/point14.py) is
then the held-out check.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell.metrics import SetScore  # noqa: E402
from slidecell.segment import get_segmenter  # noqa: E402
from slidecell.segment.models import relabel  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "multiplex" / "imc-cytomapper"
MODEL = HERE.parent.parent / "shared" / "models" / "cellpose-scellseg" / "scellseg_cellpose_cellpose3.pth"
NAMES = ["H3", "CD99", "PIN", "CD8a", "CDH"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--diameter-um", type=float, default=10.0)
    ap.add_argument("--cells", default="auto",
                    help='the membrane channel(s), comma-separated, or "auto" (every channel named like a membrane '
                         'marker: CD99 and CDH here, each scaled by its 99th percentile)')
    ap.add_argument("--min-area", default="0,0.15,0.3,0.45",
                    help="minimum cell areas to score, as fractions of the expected disc's area")
    a = ap.parse_args(argv)
    crops = [(tifffile.imread(DATA / f"{k}_imc.tiff").transpose(1, 2, 0), tifffile.imread(DATA / f"{k}_mask.tiff"))
             for k in ("E34", "G01", "J02")]
    cells = "auto" if a.cells == "auto" else a.cells.split(",")
    rows = []
    grid = itertools.product([0.4, 1.0, 2.0], [0.0, -2.0, -6.0], [False, True], [0.0, 1.0])
    for flow, prob, eq, smooth in grid:
        params = {"model": a.model, "diameter_um": a.diameter_um, "cell_channels": cells, "nuclei": False,
                  "flow_threshold": flow, "cellprob_threshold": prob, "equalize": eq, "smooth_um": smooth}
        seg = get_segmenter("cellpose", params, NAMES, "fluorescence", 1.0, ["H3"])
        outs = []
        for img, mask in crops:
            seg.state = {}
            seg.calibrate([img])
            outs.append((mask.astype(np.int32), seg.segment(img)))
        disc = np.pi * (a.diameter_um / 2) ** 2  # µm² = px² at 1 µm/px
        for frac in [float(f) for f in a.min_area.split(",")]:
            sc = SetScore()
            for mask, pred in outs:
                sc.add(mask, relabel(pred, max(1, int(round(frac * disc)))) if frac else pred)
            r = sc.summary()
            rows.append((r["F1_50"], r["mSA"], r["nuclei_pred"], flow, prob, eq, smooth, frac))
            print(f"flow {flow:3.1f} cellprob {prob:4.1f} equalize {eq!s:5} smooth {smooth:3.1f} µm min area "
                  f"{frac:.2f}: F1 {r['F1_50']:.3f} mSA {r['mSA']:.3f} cells {r['nuclei_pred']} "
                  f"(true {r['nuclei_true']})", flush=True)
    print("\nbest by F1:")
    for f1, msa, n, flow, prob, eq, smooth, frac in sorted(rows, reverse=True)[:8]:
        print(f"  flow {flow} cellprob {prob} equalize {eq} smooth {smooth} min area {frac}: F1 {f1:.3f} "
              f"mSA {msa:.3f} cells {n}")


if __name__ == "__main__":
    main()
