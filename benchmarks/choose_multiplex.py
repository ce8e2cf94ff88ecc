"""Choose the multiplex preset's nucleus and whole-cell settings on data that is not the benchmark's:
the three real IMC crops in ../shared/data/multiplex/imc-cytomapper (pancreas, 1 µm/px, H3
nuclear; the study's pipeline masks, 362 cells), each run through `slidecell run` with the
multiplex preset as a user would (`--mpp 1.0`, a markers.csv naming the channels) and scored
as whole cells (outlines filled at the crops' native resolution) against the masks.

    python benchmarks/choose_multiplex.py [--json OUT.json]

Grid: the built-in model's smoothing of the nuclear signal (`smooth_um`; "auto" = the model's
own noise test), its seed threshold and the growth from nucleus to cell
(`cell_expansion_um`). The table is sorted by F1@0.5. Point14 (benchmarks/point14.py) is then
the held-out check. Also prints the noise ratio the auto-smoothing measures on DSB2018's
fluorescence train/validation images (never the test split), against which its threshold
(`slidecell.segment.builtin.inputs.NOISY`) was set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import shapely
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell import config_from_dict, load_config, run  # noqa: E402
from slidecell.evaluate import outlines_to_labels  # noqa: E402
from slidecell.metrics import SetScore  # noqa: E402
from slidecell.segment.builtin.inputs import NOISY, noise_ratio  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
DATA = SHARED / "multiplex" / "imc-cytomapper"
NAMES = ["H3", "CD99", "PIN", "CD8a", "CDH"]


def run_crops(smooth, seed: float, expansion: float, work: Path) -> dict:
    """Every crop through `slidecell run` with the multiplex preset and these settings."""
    data = load_config("multiplex-fluorescence").model_dump(mode="json")
    data["segmentation"]["params"].update(seed_threshold=seed, smooth_um=None if smooth == "auto" else smooth)
    data["segmentation"]["cell_expansion_um"] = expansion
    data["reader"]["markers"] = str(work / "markers.csv")
    data["measure"]["compartments"] = ["cell"]
    data["output"] = {**data["output"], "geojson": False, "h5ad": False, "zarr": False, "parquet": True}
    data["analysis"] = None
    cfg = config_from_dict(data, "choose_multiplex")
    sc = SetScore()
    state = {}
    for key in ("E34", "G01", "J02"):
        mask = tifffile.imread(DATA / f"{key}_mask.tiff").astype(np.int32)
        res = run(DATA / f"{key}_imc.tiff", cfg, work / key, mpp=1.0, overwrite=True, progress=False)
        st = json.loads((work / key / "run.json").read_text())["segmenter_state"]
        state[key] = {k: st[k] for k in ("noise", "smooth_um") if k in st}
        t = pq.read_table(res.outputs["parquet"], columns=["geometry"])
        polys = shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False))
        sc.add(mask, outlines_to_labels(polys, mask.shape, 1.0))
    return {**sc.summary(), "state": state}


def dsb_noise() -> np.ndarray:
    """The auto-smoothing's noise ratio on every DSB2018 fluorescence image of the train and
    validation splits."""
    import imageio.v3 as iio
    import pandas as pd

    root = SHARED / "nuclei" / "dsb2018"
    idx = pd.read_csv(root / "index.csv")
    idx = idx[idx["kind"].str.startswith("fluorescence") & (idx["split"] != "test")]
    out = []
    for image_id in idx["image_id"]:
        path = next((root / "images").glob(f"{image_id}.*"))
        im = iio.imread(path).astype(np.float32)
        out.append(noise_ratio([im[..., :3].mean(-1) if im.ndim == 3 else im]))
    return np.array(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smooth", default="0,0.5,0.75,1.0,auto", help="smooth_um values (comma-separated)")
    a = ap.parse_args(argv)
    print("noise ratio (auto-smoothing above", NOISY, "):")
    for key in ("E34", "G01", "J02"):
        print(f"  IMC {key} H3: {noise_ratio([tifffile.imread(DATA / f'{key}_imc.tiff')[0].astype(np.float32)]):.3f}")
    p14 = SHARED / "multiplex" / "mibi-granuloma-point14" / "channels" / "HH3.tif"
    if p14.exists():
        print(f"  MIBI Point14 HH3: {noise_ratio([tifffile.imread(p14).astype(np.float32)]):.3f}")
    if (SHARED / "nuclei" / "dsb2018").exists():
        d = dsb_noise()
        print(f"  DSB2018 fluorescence train+val ({len(d)} images): median {np.median(d):.3f}, "
              f"99th percentile {np.percentile(d, 99):.3f}, max {d.max():.3f}, above {NOISY}: {(d > NOISY).sum()}")
    smooths = [v if v == "auto" else float(v) for v in a.smooth.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "markers.csv").write_text("marker_name\n" + "\n".join(NAMES) + "\n")
        for smooth, seed, exp in itertools.product(smooths, [0.75, 0.85, 0.9], [1.0, 2.0, 3.0]):
            r = run_crops(smooth, seed, exp, work)
            row = {"smooth_um": smooth, "seed_threshold": seed, "cell_expansion_um": exp, "cells": r["nuclei_pred"],
                   "F1_50": round(r["F1_50"], 3), "mSA": round(r["mSA"], 3), "precision": round(r["precision"], 3),
                   "recall": round(r["recall"], 3), **({"auto": r["state"]} if smooth == "auto" else {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nbest by F1 (true cells {r['nuclei_true']}):")
    for row in sorted(rows, key=lambda r: (r["F1_50"], r["mSA"]), reverse=True)[:8]:
        print("  ", row)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
