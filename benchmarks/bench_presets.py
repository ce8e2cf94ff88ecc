"""Each preset's built-in model + post-processing, in megapixels per second at the preset's
working resolution, on real slides (issue 15: "≥ 1 MP/s ... report the figure for each preset").

    python benchmarks/bench_presets.py [--tile 1024] [--tiles 6] [--runtime torch|onnxruntime]

The segmenter is built as `slidecell run` builds it (the preset's backend parameters, the slide's
channel names, modality and µm/px, the nuclear channels found by name), calibrated on the tiles,
and timed on tiles cut from the slide at its working resolution: ``model`` = input preparation +
the network (``predict``), ``post`` = maps → nuclei with confidence (``finish``), one after the
other on this process' threads. Reading, whole-cell growth, outlines and measurement are not
included (`slidecell --verbose run` prints those busy times). Slides: he-brightfield on
CMU-1-Small-Region.svs (RGB), multiplex-fluorescence on the Vectra QPTIFF (DAPI nuclear).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell import load_config  # noqa: E402
from slidecell.io import open_slide  # noqa: E402
from slidecell.segment import get_segmenter  # noqa: E402
from slidecell.segment.channels import nuclear_channel_indices  # noqa: E402

SLIDES = HERE.parent.parent / "shared" / "data" / "slides"
CASES = [("he-brightfield", SLIDES / "cmu-1-small-region" / "CMU-1-Small-Region.svs", "brightfield"),
         ("multiplex-fluorescence", SLIDES / "pathml-testdata" / "small_vectra.qptiff", "fluorescence")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"])
    a = ap.parse_args(argv)
    import torch

    print(f"torch threads {torch.get_num_threads()}, runtime {a.runtime}")
    for preset, path, modality in CASES:
        if not path.exists():
            print(f"{preset}: {path} missing, skipped")
            continue
        cfg = load_config(preset)
        seg_cfg = cfg.segmentation
        with open_slide(path) as r:
            names = list(r.channel_names)
            mpp = r.mpp
            w, h = r.dimensions
            img = np.asarray(r.read_region(0, 0, w, h))
        nuclear = seg_cfg.nuclear_channels or ([names[i] for i in nuclear_channel_indices(names, [])]
                                               if modality == "fluorescence" else [])
        params = {**seg_cfg.params, "runtime": a.runtime}
        seg = get_segmenter(seg_cfg.backend, params, names, modality, mpp, nuclear)
        rng = np.random.default_rng(1)
        tiles = []
        for _ in range(a.tiles):
            y = int(rng.integers(0, max(1, h - a.tile)))
            x = int(rng.integers(0, max(1, w - a.tile)))
            t = img[y:y + a.tile, x:x + a.tile]
            tiles.append(np.pad(t, ((0, a.tile - t.shape[0]), (0, a.tile - t.shape[1]), (0, 0)), mode="reflect"))
        seg.calibrate(tiles)
        seg.finish(seg.predict(tiles[:1])[0], tiles[0])  # warm-up (numba's first call, allocations)
        t_model = t_post = 0.0
        cells = 0
        bs = seg.batch_size
        for k in range(0, len(tiles), bs):
            part = tiles[k:k + bs]
            t0 = time.perf_counter()
            maps = seg.predict(part)
            t_model += time.perf_counter() - t0
            t0 = time.perf_counter()
            for m, t in zip(maps, part):
                cells += int(seg.finish(m, t).labels.max())
            t_post += time.perf_counter() - t0
        mp = len(tiles) * a.tile * a.tile / 1e6  # the slides' own µm/px are the presets' working resolution
        print(f"{preset:24s} {path.name} ({mpp:.3f} µm/px, {modality}, nuclear {nuclear or 'RGB'}): "
              f"{len(tiles)} tiles of {a.tile}²  model {mp / t_model:5.2f} MP/s  post {mp / t_post:5.2f} MP/s  "
              f"model+post {mp / (t_model + t_post):5.2f} MP/s  nuclei {cells}", flush=True)


if __name__ == "__main__":
    main()
