"""Throughput of the built-in model: network alone, post-processing alone, and both, in
megapixels per second at the model's resolution (0.5 µm/px), on real H&E content.

    python benchmarks/bench_model.py [--model nuclei] [--device auto] [--tile 1024] [--batch 4]
        [--precisions fp32,bf16,onnxruntime]

Input: tiles cut from CMU-1-Small-Region (../shared/data) or, without it, from the DSB2018-like
synthetic blobs below. Prints one line per precision (``onnxruntime``: fp32 through ONNX Runtime,
the backend's ``params.runtime: onnxruntime``); post-processing share = post / (model + post).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slidecell.segment.builtin.model import Predictor  # noqa: E402
from slidecell.segment.builtin.postprocess import maps_to_labels  # noqa: E402

CMU1 = Path(__file__).resolve().parent.parent.parent / "shared/data/slides/cmu-1-small-region/CMU-1-Small-Region.svs"


def tiles(n: int, size: int) -> np.ndarray:
    if CMU1.exists():
        import tiffslide

        with tiffslide.TiffSlide(str(CMU1)) as s:
            w, h = s.dimensions
            img = np.asarray(s.read_region((0, 0), 0, (w, h)).convert("RGB"))
    else:
        rng = np.random.default_rng(0)
        img = np.full((2048, 2048, 3), 230, np.uint8)
        yy, xx = np.mgrid[:2048, :2048]
        for cy, cx in rng.uniform(0, 2048, (3000, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 30] = (80, 50, 140)
    out = []
    rng = np.random.default_rng(1)
    for _ in range(n):
        # tiles larger than the image are mirrored to size
        y = int(rng.integers(0, max(1, img.shape[0] - size)))
        x = int(rng.integers(0, max(1, img.shape[1] - size)))
        t = img[y:y + size, x:x + size]
        t = np.pad(t, ((0, size - t.shape[0]), (0, size - t.shape[1]), (0, 0)), mode="reflect")
        out.append(t.astype(np.float32) / 255)
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--precisions", default="")
    ap.add_argument("--stems", default="",
                    help="instead: the network alone (random weights, CPU, fp32) with these stem widths, e.g. 16,24,32, "
                         "run by torch and by ONNX Runtime")
    args = ap.parse_args()
    import torch

    if args.stems:
        return stems([int(w) for w in args.stems.split(",")], args.tile, args.batch)

    pred0 = Predictor.load(args.model, args.device, "fp32")
    dev = pred0.device
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if dev.type == "cpu" else ["bf16", "fp16", "fp32"])
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else f'{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}'})")
    data = tiles(args.batch * args.batches, args.tile)
    mp = data.shape[0] * args.tile * args.tile / 1e6
    ref = None
    for prec in precisions:
        p = Predictor.load(args.model, args.device, "fp32", runtime="onnxruntime") if prec == "onnxruntime" else \
            Predictor.load(args.model, args.device, prec)
        p.maps(data[: args.batch])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        maps = [p.maps(data[i:i + args.batch]) for i in range(0, len(data), args.batch)]
        t_model = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        for m in maps:
            for x in m:
                n += int(maps_to_labels(x[0], x[1], x[2], **p.meta.post.__dict__).max())
        t_post = time.perf_counter() - t0
        if ref is None:
            ref = np.concatenate(maps)
        diff = float(np.abs(np.concatenate(maps) - ref).max())
        print(f"{prec:5s} tiles {len(data)}×{args.tile}²  model {mp / t_model:7.2f} MP/s  post {mp / t_post:7.2f} MP/s  "
              f"model+post {mp / (t_model + t_post):7.2f} MP/s  post share {t_post / (t_model + t_post):5.1%}  "
              f"nuclei {n}  max|Δmaps| vs {precisions[0]} {diff:.2g}")


def stems(widths: list[int], tile: int, batch: int) -> None:
    """Network-only throughput of wider U-Nets (5 levels, widths doubling from the stem) on the CPU."""
    import torch

    from slidecell.segment.builtin.model import onnx_session
    from slidecell.segment.builtin.net import NetSpec, UNet, fuse_batchnorm

    x = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)
    mp = batch * tile * tile / 1e6
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {batch}×{tile}² per pass, best of 3")
    for w in widths:
        spec = NetSpec(3, tuple(w * 2**i for i in range(5)), 3)
        net = fuse_batchnorm(UNet(spec)).eval()
        session = onnx_session(net, spec)
        net = net.to(memory_format=torch.channels_last)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

        def run_torch():
            with torch.inference_mode():
                net(xt)

        speed = {}
        for name, fn in (("torch", run_torch), ("onnxruntime", lambda: session.run(None, {"x": x}))):
            fn()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            speed[name] = mp / best
        print(f"stem {w:3d}: {sum(p.numel() for p in net.parameters()) / 1e6:5.2f} M parameters  torch {speed['torch']:5.2f} MP/s  "
              f"onnxruntime {speed['onnxruntime']:5.2f} MP/s", flush=True)


if __name__ == "__main__":
    main()
