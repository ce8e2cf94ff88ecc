"""Outlines over held-out images, through the same path as ``slidecell run`` (the evaluation's
``run`` protocol): true nuclei in green, predictions in magenta; predictions matching no true
nucleus at IoU ≥ 0.5 are filled light red (false positives), missed true nuclei filled yellow.

    python benchmarks/overlays.py [--backend builtin] [--params '{"model": "nuclei"}'] \
        [--out benchmarks/overlays] [SET_LABEL ...]

Writes one PNG per image (the first ``--per-set`` images of each set of
configs/evaluate/nuclei-heldout.yaml, protocol run) and prints the file names.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from slidecell.evaluate import load_eval_config, load_set, restrict_to_region, segment_as_run
from slidecell.metrics import pair_table

ROOT = Path(__file__).resolve().parent.parent


def overlay(image: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    ti, pi, inter, at, ap = pair_table(true, pred)
    iou = inter / np.maximum(at[ti] + ap[pi] - inter, 1)
    tp_true = np.zeros(len(at), bool)
    tp_pred = np.zeros(len(ap), bool)
    tp_true[ti[iou >= 0.5]] = True
    tp_pred[pi[iou >= 0.5]] = True
    img = image[:, :, :3].astype(np.float32)
    if img.max() > 255:
        img = img / img.max() * 255
    fp = (pred > 0) & ~tp_pred[pred]
    fn = (true > 0) & ~tp_true[true]
    img[fp] = 0.6 * img[fp] + 0.4 * np.array([255, 80, 80])
    img[fn] = 0.6 * img[fn] + 0.4 * np.array([255, 230, 0])
    img[find_boundaries(true, mode="inner")] = (0, 220, 0)
    img[find_boundaries(pred, mode="inner")] = (255, 0, 255)
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="*")
    ap.add_argument("--config", default=str(ROOT / "configs/evaluate/nuclei-heldout.yaml"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--backend", default="builtin")
    ap.add_argument("--params", default='{"model": "nuclei"}')
    ap.add_argument("--per-set", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/overlays"))
    args = ap.parse_args()
    cfg = load_eval_config(args.config)
    root = Path(args.data or cfg.data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = json.loads(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        for s in cfg.sets:
            if s.protocol != "run" or (args.sets and s.label not in args.sets):
                continue
            for it in load_set(root, s)[: args.per_set]:
                pred, _ = segment_as_run(it, s, args.backend, params, Path(tmp))
                pred = restrict_to_region(pred, it.get("region"))
                name = out / f"{s.label.replace('@', '_')}_{it['id'][:24]}.png"
                Image.fromarray(overlay(it["image"], it["labels"], pred)).save(name, optimize=True)
                print(name)


if __name__ == "__main__":
    main()
