"""slidecell beside SOPA (2.2.11, Cellpose 3.1 with the offline weights) on any image slidecell
reads, e.g. the Vectra QPTIFF: cells, time, peak memory, overlapping cells, per-cell means
against numpy, and how far the two tools' cells agree (no reference mask: agreement, not accuracy).

    bash benchmarks/peers/setup_sopa.sh
    .venv/bin/python benchmarks/sopa_compare.py ../shared/data/slides/pathml-testdata/small_vectra.qptiff \\
        --channels DAPI --diameter-um 8 --out /tmp/sopa-qptiff

The image's full resolution is written as one OME-TIFF (named channels, its µm/px), which both
tools then read: SOPA through ``benchmarks/peers/sopa_point14.py --ome`` (512-px patches, 50-px
overlap, its Cellpose defaults), slidecell through ``slidecell run`` with the multiplex preset at
256- and 1024-px tiles (its built-in model, nuclei grown 2 µm). Each tool runs in a child process
under ``/usr/bin/time -v`` for its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def write_ome(slide: Path, out: Path) -> tuple[list[str], float, np.ndarray]:
    import tifffile

    from slidecell.io import open_slide

    with open_slide(slide) as r:
        w, h = r.dimensions
        img = r.read_region(0, 0, w, h, 0)  # (h, w, c) at full resolution
        names, mpp = list(r.channel_names), float(r.mpp)
    tifffile.imwrite(out, np.moveaxis(img, -1, 0), ome=True, photometric="minisblack", tile=(512, 512),
                     metadata={"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    return names, mpp, img


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` under /usr/bin/time -v: (seconds, peak RSS GiB, output)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return sec, kb / 2**20, p.stdout


def numpy_means(polys, img: np.ndarray, channel: int) -> np.ndarray:
    """Each outline's mean of ``channel`` over the pixels whose centres lie inside it."""
    from slidecell.evaluate import outlines_to_labels

    lab = outlines_to_labels(polys, img.shape[:2], 1.0)
    n = len(polys) + 1
    area = np.bincount(lab.ravel(), minlength=n)[1:]
    return np.bincount(lab.ravel(), img[:, :, channel].astype(np.float64).ravel(), minlength=n)[1:] / np.maximum(area, 1)


def summarise(name, polys, means, img, ch, seconds, rss) -> dict:
    from slidecell.metrics import overlapping_pairs

    ref = numpy_means(polys, img, ch)
    ok = ref > 0
    err = np.abs(means[ok] - ref[ok]) / ref[ok] * 100
    return {"tool": name, "cells": int(len(polys)), "seconds": round(seconds, 1), "peak_rss_gib": round(rss, 2),
            "overlapping_pairs": overlapping_pairs(polys, 0.05),
            "mean_error_pct": {"median": round(float(np.median(err)), 2), "max": round(float(err.max()), 1),
                               "cells": int(ok.sum())}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--channels", default="DAPI", help="SOPA's channels (nuclear last); slidecell finds its own")
    ap.add_argument("--diameter-um", type=float, default=8.0, help="SOPA's Cellpose diameter, in µm")
    ap.add_argument("--tiles", default="256,1024")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    import geopandas as gpd
    import pyarrow.parquet as pq
    import shapely

    from slidecell.metrics import SetScore, match_polygons

    a.out.mkdir(parents=True, exist_ok=True)
    ome = a.out / "image.ome.tif"
    names, mpp, img = write_ome(a.slide, ome)
    nuc = a.channels.split(",")[-1]
    ch = names.index(nuc)
    rows, cells = [], {}
    diameter_px = int(round(a.diameter_um / mpp))
    sec, rss, _ = timed([str(ROOT / ".venv-sopa" / "bin" / "python"), str(HERE / "peers" / "sopa_point14.py"),
                         str(a.out / "sopa"), "--ome", str(ome), "--channels", a.channels, "--diameter", str(diameter_px)])
    sopa = gpd.read_parquet(a.out / "sopa" / "sopa_cells.parquet")
    cells["sopa"] = sopa.geometry.to_numpy()
    rows.append(summarise("SOPA 2.2.11 + Cellpose 3.1", cells["sopa"], sopa[f"mean:{nuc}"].to_numpy(), img, ch, sec, rss))
    for t in [int(x) for x in a.tiles.split(",")]:
        run_dir = a.out / f"slidecell-{t}"
        cfg = a.out / f"tiles-{t}.yaml"
        import yaml

        from slidecell import load_config

        preset = load_config("multiplex-fluorescence", {
            "tiling": {"tile_size": t}, "measure": {"compartments": ["cell"]},
            "output": {"geojson": False, "h5ad": False, "parquet": True}})
        cfg.write_text(yaml.safe_dump(preset.model_dump(mode="json"), sort_keys=False))
        sec, rss, _ = timed([str(ROOT / ".venv" / "bin" / "slidecell"), "run", str(ome), "--config", str(cfg),
                             "--out", str(run_dir), "--overwrite", "--quiet"])
        t_ = pq.read_table(run_dir / "cells.parquet", columns=["geometry", f"mean:{nuc}"])
        cells[t] = shapely.from_wkb(t_.column("geometry").to_numpy(zero_copy_only=False))
        rows.append(summarise(f"slidecell, multiplex preset, {t}-px tiles", cells[t], t_.column(f"mean:{nuc}").to_numpy(),
                              img, ch, sec, rss))
    tiles = [k for k in cells if k != "sopa"]
    same = match_polygons(cells[tiles[0]], cells[tiles[-1]], 0.9)
    from slidecell.evaluate import outlines_to_labels

    sc = SetScore()  # SOPA's cells as the reference: agreement between the tools
    sc.add(outlines_to_labels(cells["sopa"], img.shape[:2], 1.0), outlines_to_labels(cells[tiles[-1]], img.shape[:2], 1.0))
    agree = sc.summary()
    result = {"image": str(a.slide), "mpp": mpp, "channels": names, "sopa_channels": a.channels.split(","),
              "sopa_diameter_px": diameter_px, "rows": rows,
              "slidecell_same_cells_pct": round(100 * len(same) / max(len(cells[tiles[0]]), len(cells[tiles[-1]]), 1), 2),
              "agreement_slidecell_vs_sopa": {k: round(agree[k], 3) for k in ("F1_50", "mSA", "precision", "recall")}}
    (a.out / "compare.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
