"""Cellpose-SAM (cellpose >= 4) network time on this CPU in fp32 and bf16, through slidecell's
Cellpose backend (`precision`), to check the ``auto`` rule (bf16 only where the CPU computes it
natively). No cpsam weights can be downloaded here, so a randomly initialised CPSAM is built
offline (seeded): its speed is the real network's, its outputs are not cells.

Run in the Cellpose 4 environment (benchmarks/peers/setup_cellpose4.sh):
    .venv-cellpose4/bin/python benchmarks/bench_cpsam_precision.py [--size 256] [--repeats 2]
Prints, per precision: seconds for the network's flows over a size² image (slide-anchored 256-px
blocks, as the backend runs them; best of the repeats) and the largest difference from fp32's.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (one block: 256)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()

    import torch
    from cellpose import vit
    from scipy import ndimage as ndi

    from slidecell.segment import get_segmenter
    from slidecell.segment.cellpose import use_bfloat16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 (oneDNN): "
          f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}; auto picks "
          f"{'bf16' if use_bfloat16('auto', False) else 'fp32'}")
    rng = np.random.default_rng(0)
    img = (ndi.gaussian_filter(rng.random((args.size, args.size)), 3) * 1000).astype(np.float32)[:, :, None]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = Path(tmp) / "cpsam_random.pth"
        vit.CPSAM(dtype=torch.float32).save_model(str(path))
        ref = None
        for precision in args.precisions.split(","):
            seg = get_segmenter("cellpose", {"model": str(path), "precision": precision}, ["DAPI"], "fluorescence", 0.5)
            seg.calibrate([img])
            plane = seg._scaled(img, "nuclear")
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                flows = seg._flows(plane, False, (0, 0))
                times.append(time.perf_counter() - t0)
            flows = np.asarray(flows, np.float32)
            diff = "" if ref is None else f"  max|flows - {ref[0]}| {np.abs(flows - ref[1]).max():.3g}"
            print(f"{precision:5s} {min(times):7.2f} s for the {args.size}² image (best of {args.repeats}){diff}")
            if ref is None:
                ref = (precision, flows)


if __name__ == "__main__":
    main()
