"""Speed of the Cellpose backend with Cellpose-SAM (cellpose 4) on this machine, with randomly
initialised CPSAM weights (the real ones cannot be downloaded here; speed does not depend on the
weights' values, only the number of objects found does, which random weights keep at ~0):

    bash benchmarks/peers/setup_cellpose4.sh
    .venv-cellpose4/bin/python benchmarks/peers/cpsam_speed.py [--size 256] [--repeats 3]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import cellpose
    import torch
    from cellpose import vit

    from slidecell.segment import get_segmenter

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cpsam_random.pth"
        t0 = time.perf_counter()
        net = vit.CPSAM(dtype=torch.bfloat16)
        n_params = sum(p.numel() for p in net.parameters())
        net.save_model(str(path))
        del net
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        seg = get_segmenter("cellpose", {"model": str(path)}, ["DAPI"], "fluorescence", 0.5)
        t_load = time.perf_counter() - t0
        img = np.random.default_rng(0).normal(100, 10, (args.size, args.size, 1)).astype(np.float32)
        seg.segment(img)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            seg.segment(img)
            times.append(time.perf_counter() - t0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} CPU, {os.cpu_count()} cores, torch "
          f"{torch.__version__} threads {torch.get_num_threads()}, cellpose {cellpose.version}")
    print(f"CPSAM {n_params / 1e6:.1f} M parameters (bf16), built+saved {t_build:.1f} s, loaded {t_load:.1f} s")
    print(f"{args.size}² tile: best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeats} "
          f"-> {args.size**2 / min(times) / 1e6:.4f} MP/s")


if __name__ == "__main__":
    main()
