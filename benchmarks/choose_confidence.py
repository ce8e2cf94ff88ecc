"""The built-in model's minimum confidence and minimum nucleus area, chosen on VALIDATION images
through the same path as ``slidecell run`` (configs/evaluate/nuclei-validation.yaml; never test
or held-out images):

    python benchmarks/choose_confidence.py --model nuclei [--sets tnbc-08@40x,...] \
        [--confidence 0,0.6,0.7,0.75,0.8,0.85] [--area 2,5,8,12] [--tta]

Each image is run once with no confidence or area filter; the outlines are then filtered by
each (confidence, area) pair, filled in at the labels' native resolution and scored. Prints, per
pair, mSA / F1@0.5 / precision per set and the mean mSA over the sets, best last.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from slidecell.evaluate import load_eval_config, load_set, outlines_to_labels, restrict_to_region, run_outlines
from slidecell.metrics import SetScore

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/evaluate/nuclei-validation.yaml"))
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--sets", default=None, help="comma-separated set labels (default: all)")
    ap.add_argument("--confidence", default="0,0.55,0.6,0.65,0.7,0.75,0.8,0.85")
    ap.add_argument("--area", default="2,4,6,8,12")
    ap.add_argument("--tta", action="store_true", help="with test-time augmentation (params.tta)")
    args = ap.parse_args()
    floats = lambda t: [float(v) for v in t.split(",")]  # noqa: E731
    cfg = load_eval_config(args.config)
    wanted = args.sets.split(",") if args.sets else None
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in cfg.sets:
            if wanted and s.label not in wanted:
                continue
            runs[s.label] = []
            for it in load_set(Path(cfg.data_root), s):
                params = {"model": args.model, "min_confidence": 0.0, "min_area_um2": 0.0, "tta": args.tta}
                polys, cols, factor, _ = run_outlines(it, s, "builtin", params,
                                                      Path(tmp), columns=("confidence", "area_um2"))
                runs[s.label].append((it, polys, cols, factor))
            print(f"{s.label}: {len(runs[s.label])} images run", flush=True)
    rows = []
    for conf in floats(args.confidence):
        for area in floats(args.area):
            per = {}
            for label, items in runs.items():
                score = SetScore()
                for it, polys, cols, factor in items:
                    keep = (cols["confidence"] >= conf) & (cols["area_um2"] >= area)
                    pred = outlines_to_labels(polys[keep], it["labels"].shape, factor)
                    score.add(it["labels"], restrict_to_region(pred, it.get("region")))
                per[label] = score.summary()
            mean = float(np.mean([r["mSA"] for r in per.values()]))
            rows.append((mean, conf, area, per))
            print(f"conf {conf:.2f} area {area:5.1f}  mean mSA {mean:.4f}  " + "  ".join(
                f"{k}: {r['mSA']:.3f}/{r['F1_50']:.3f}/P{r['precision']:.2f}" for k, r in per.items()), flush=True)
    best = max(rows, key=lambda r: r[0])
    print(f"best: min_confidence {best[1]} min_area_um2 {best[2]} mean mSA {best[0]:.4f}")


if __name__ == "__main__":
    main()
