"""Which post-processing turns the network's maps into nuclei best, measured on the VALIDATION
images of a training config (never on test images):

    python benchmarks/choose_postprocess.py configs/train/nuclei.yaml runs/nuclei/model.safetensors

Variants: seeds from the distance map (threshold sweep) or from foreground minus boundary ring
("3-class") or its h-maxima, grown by nearest seed or by watershed on the distance map. Prints mSA, F1@0.5 and post-processing speed (MP/s) for each, e.g.

    python benchmarks/choose_postprocess.py configs/train/nuclei.yaml runs/nuclei/model.safetensors \
        --seeds hmax --grow watershed --seed-thresholds 0.7,0.8,0.85,0.9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slidecell.metrics import SetScore  # noqa: E402
from slidecell.segment.builtin.model import Predictor  # noqa: E402
from slidecell.segment.builtin.postprocess import maps_to_labels  # noqa: E402
from slidecell.train import load_train_config, set_groups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="training config (its validation images are used)")
    ap.add_argument("model", help="model.safetensors")
    ap.add_argument("--seeds", default="distance,hmax,boundary")
    ap.add_argument("--grow", default="nearest,watershed")
    ap.add_argument("--seed-thresholds", default=None, help="comma-separated; default per seed method")
    ap.add_argument("--fg", default="0.3,0.4,0.5")
    args = ap.parse_args()
    floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
    cfg = load_train_config(args.config)
    pred = Predictor.load(args.model)
    groups = set_groups(cfg, Path(cfg.data_root), "val")
    maps = {}
    for g in groups:  # a set may appear in several groups (e.g. DSB2018 by kind): name them apart
        kinds = sorted({s.modality for s in g.samples})
        maps[f"{g.name}:{'+'.join(kinds)}"] = [(s.labels, pred.maps(s.image[None])[0]) for s in g.samples]
    variants = []
    for seeds in args.seeds.split(","):
        for grow in args.grow.split(","):
            sts = floats(args.seed_thresholds) if args.seed_thresholds else \
                {"distance": (0.5, 0.6, 0.7, 0.8), "hmax": (0.6, 0.7, 0.8)}.get(seeds, (0.5,))
            for st in (sts if seeds != "boundary" else (0.5,)):
                for fg in floats(args.fg):
                    variants.append(dict(seeds=seeds, grow=grow, seed_threshold=st, fg_threshold=fg))
    print(f"{'seeds':9s} {'grow':9s} seed fg   " + "  ".join(f"{g:>28s}" for g in maps) + "   post MP/s")
    for v in variants:
        cols = []
        t = 0.0
        px = 0
        for g, items in maps.items():
            s = SetScore()
            for lab, m in items:
                t0 = time.perf_counter()
                out = maps_to_labels(m[0], m[1], m[2], min_pixels=8, **v)
                t += time.perf_counter() - t0
                px += lab.size
                s.add(lab, out)
            r = s.summary()
            cols.append(f"mSA {r['mSA']:.3f} F1 {r['F1_50']:.3f}")
        print(f"{v['seeds']:9s} {v['grow']:9s} {v['seed_threshold']:.2f} {v['fg_threshold']:.2f}  "
              + "  ".join(f"{c:>28s}" for c in cols) + f"   {px / t / 1e6:8.1f}", flush=True)


if __name__ == "__main__":
    main()
