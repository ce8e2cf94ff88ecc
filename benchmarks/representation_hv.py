"""Which representation for the built-in nucleus network (issue 15 item 4): today's maps
(foreground, boundary ring, normalised distance; h-maxima seeds + watershed) against HoVer-Net's
horizontal/vertical distance maps (Graham et al. 2019: each nucleus pixel's x and y offset from
the nucleus' centre of mass, scaled to [-1, 1] per nucleus; nuclei separated where the maps'
gradients are steep), on the same network and the same training budget.

    python benchmarks/representation_hv.py train --head distance --steps 1500 --out runs/repr-distance
    python benchmarks/representation_hv.py train --head hv --steps 1500 --out runs/repr-hv
    python benchmarks/representation_hv.py score nuclei runs/repr-distance runs/repr-hv

Both runs start from the shipped ``nuclei`` weights (stage 4) and train the same steps on
``configs/train/nuclei.yaml``'s training images with the same batches (seeded per step), bf16 on
the CPU, one-cycle learning rate; ``hv`` adds two output channels to the head (the first three
keep their weights) and HoVer-Net's losses for them (MSE, and the mean squared error of their
gradients inside nuclei). ``score`` runs every model on the validation images of
``nuclei.yaml`` (DSB2018 val split, TNBC patient 08; never a test or held-out image) at the
model's resolution, as ``slidecell train`` validates, and scores (mSA, F1@0.5, precision, recall)
each post-processing: the shipped one on the distance maps, and HoVer-Net's on the hv maps
(marker threshold and Sobel size swept: these are chosen here, on validation images), both
with the shipped confidence filter (mean foreground probability ≥ 0.82, ≥ 4 px). Prints the
post-processing time per megapixel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell.train import load_train_config, maps_loss, set_groups  # noqa: E402

CONFIG = HERE.parent / "configs" / "train" / "nuclei.yaml"
DATA = HERE.parent.parent / "shared" / "data" / "nuclei"


# -- targets ------------------------------------------------------------------------------------
def hv_targets(lab: np.ndarray) -> np.ndarray:
    """Each nucleus pixel's x (row 0) and y (row 1) offset from its nucleus' centre of mass,
    divided by the largest offset in that nucleus (so in [-1, 1]); 0 outside nuclei."""
    out = np.zeros((2, *lab.shape), np.float32)
    n = int(lab.max())
    if not n:
        return out
    flat = lab.ravel()
    cnt = np.maximum(np.bincount(flat, minlength=n + 1), 1)
    yy, xx = np.indices(lab.shape, dtype=np.float32)
    inside = lab > 0
    for k, coord in enumerate((xx, yy)):
        centre = np.bincount(flat, coord.ravel(), minlength=n + 1) / cnt
        d = np.where(inside, coord - centre[lab].astype(np.float32), 0.0).astype(np.float32)
        scale = np.asarray(ndi.maximum(np.abs(d), lab, np.arange(n + 1)), np.float32)
        scale[scale == 0] = 1
        out[k] = d / scale[lab]
    return out


def _patch_targets():
    from slidecell.train import data

    base = data.targets

    def targets(lab):
        return np.concatenate([base(lab), hv_targets(lab)])

    data.targets = targets


# -- training -----------------------------------------------------------------------------------
def _sobel(t):
    """Sobel x and y gradients of N×C×H×W maps (channel 0: x map along x; channel 1: y map along y)."""
    import torch

    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=t.device) / 4
    gx = torch.nn.functional.conv2d(t[:, :1], kx[None, None], padding=1)
    gy = torch.nn.functional.conv2d(t[:, 1:2], kx.t()[None, None], padding=1)
    return torch.cat([gx, gy], 1)


def train(a):
    import torch

    from slidecell.segment.builtin.model import ModelMeta, load_weights, save_weights
    from slidecell.segment.builtin.net import NetSpec, UNet
    from slidecell.train.data import Augment, sample_batch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_train_config(CONFIG)
    groups = set_groups(cfg, DATA, "train")
    base, meta = load_weights("nuclei")
    if a.head == "hv":
        _patch_targets()
        net = UNet(NetSpec(3, meta.spec.channels, 5))
        state = base.state_dict()
        head_w, head_b = net.head.weight.data.clone(), net.head.bias.data.clone()
        head_w[:3], head_b[:3] = state.pop("head.weight"), state.pop("head.bias")
        net.load_state_dict({**state, "head.weight": head_w, "head.bias": head_b})
    else:
        net = base
    net = net.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    aug = Augment(cfg.augment.patch, tuple(cfg.augment.scale), cfg.augment.hed, cfg.augment.blur,
                  cfg.augment.noise, cfg.augment.jpeg, cfg.augment.ink)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = []
    for step in range(a.steps):
        rng = np.random.default_rng([cfg.seed, 10_000_000 + step])  # the same batches for both heads
        x, y = sample_batch(groups, aug, cfg.batch_size, rng)
        x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
        logits = logits.float()
        loss = maps_loss(logits, y, cfg)[0]  # slidecell train's loss of the three maps
        if a.head == "hv":
            hv = torch.tanh(logits[:, 3:5])
            fg = y[:, :1]
            msge = (((_sobel(hv) - _sobel(y[:, 3:5])) ** 2) * fg).sum() / (2 * fg.sum() + 1e-6)
            loss = loss + torch.nn.functional.mse_loss(hv, y[:, 3:5]) + msge
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == a.steps:
            print(json.dumps({"step": step + 1, "loss": round(float(np.mean(log[-100:])), 4),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        if (step + 1) % 500 == 0 or step + 1 == a.steps:
            m = ModelMeta(f"repr-{a.head}", net.spec if hasattr(net, "spec") else meta.spec, meta.mpp, meta.post,
                          {"steps": step + 1, "head": a.head})
            save_weights(net, m, out / "model.safetensors")


# -- scoring ------------------------------------------------------------------------------------
def _logits(predictor, img: np.ndarray) -> np.ndarray:
    """The network's raw outputs (C×H×W) for one model input, padded as the backend pads it."""
    import torch

    h, w = img.shape[:2]
    x = predictor.pad(img[None]).transpose(0, 3, 1, 2)
    with torch.inference_mode():
        y = predictor.net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return y[0, :, :h, :w].numpy()


def hv_labels(fg: np.ndarray, hmap: np.ndarray, vmap: np.ndarray, ksize: int, marker_threshold: float,
              fg_threshold: float = 0.5, min_pixels: int = 4) -> np.ndarray:
    """HoVer-Net's post-processing of foreground + horizontal/vertical maps: steep gradients of
    the maps mark where nuclei meet; markers are the foreground away from them, grown by watershed
    on the (smoothed) inverse gradient energy inside the foreground."""
    import cv2
    from skimage.segmentation import watershed

    blb = fg > fg_threshold
    if not blb.any():
        return np.zeros(fg.shape, np.int32)

    def unit(a):
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)

    sh = 1 - unit(cv2.Sobel(unit(hmap).astype(np.float64), cv2.CV_64F, 1, 0, ksize=ksize))
    sv = 1 - unit(cv2.Sobel(unit(vmap).astype(np.float64), cv2.CV_64F, 0, 1, ksize=ksize))
    overall = np.maximum(sh, sv)
    overall[~blb] = 0
    dist = -cv2.GaussianBlur((1 - overall) * blb, (3, 3), 0)
    marker = blb & (overall < marker_threshold)
    marker = ndi.binary_opening(ndi.binary_fill_holes(marker), np.ones((3, 3), bool))
    markers, _ = ndi.label(marker)
    lab = watershed(dist, markers, mask=blb)
    from slidecell.segment.models import relabel

    return relabel(lab.astype(np.int32), min_pixels)


def score(a):
    import torch

    from slidecell.metrics import SetScore
    from slidecell.segment.builtin.model import Predictor, load_weights
    from slidecell.segment.builtin.postprocess import maps_to_labels, object_confidence
    from slidecell.segment.models import relabel

    torch.set_num_threads(a.threads)
    cfg = load_train_config(CONFIG)
    groups = [g for g in set_groups(cfg, DATA, "val") if g.samples]
    for folder in a.runs:
        net, meta = load_weights(Path(folder) / "model.safetensors" if Path(folder).is_dir() else folder)
        predictor = Predictor(net, meta, device="cpu", precision="fp32")
        post = dict(meta.post.__dict__)
        min_conf = post["min_confidence"]
        variants = {"distance maps, shipped post-processing": None}
        if meta.spec.out_channels == 5:
            variants.update({f"hv maps, HoVer-Net post (Sobel {k}, markers < {t})": (k, t)
                             for k in (9, 15, 21) for t in (0.4, 0.5, 0.6, 0.7)})
        keys = sorted({f"{g.name}:{s.modality}" for g in groups for s in g.samples})
        scores = {v: {k: SetScore() for k in keys} for v in variants}
        secs = dict.fromkeys(variants, 0.0)
        mp = 0.0
        for g in groups:
            for s in g.samples:
                y = _logits(predictor, s.image)
                p = 1 / (1 + np.exp(-y[:3]))
                mp += s.image.shape[0] * s.image.shape[1] / 1e6
                for v, how in variants.items():
                    t0 = time.perf_counter()
                    if how is None:
                        lab = maps_to_labels(p[0], p[1], p[2], **post)
                    else:
                        lab = hv_labels(p[0], np.tanh(y[3]), np.tanh(y[4]), *how)
                        conf = object_confidence(lab, p[0])
                        lab = relabel(np.where(conf[lab] >= min_conf, lab, 0), post["min_pixels"])
                    secs[v] += time.perf_counter() - t0
                    scores[v][f"{g.name}:{s.modality}"].add(s.labels, lab)
        print(f"\n{folder} ({meta.extra.get('steps')} steps, head {meta.extra.get('head')}):")
        rows = []
        for v in variants:
            r = {k: sc.summary() for k, sc in scores[v].items()}
            mean = float(np.mean([x["mSA"] for x in r.values()]))
            rows.append((mean, v, r))
        for mean, v, r in sorted(rows, reverse=True)[: a.top]:
            parts = "  ".join(f"{k}: mSA {x['mSA']:.3f} F1 {x['F1_50']:.3f} P {x['precision']:.3f} R {x['recall']:.3f}"
                              for k, x in r.items())
            print(f"  {v}: mean mSA {mean:.4f}; {parts}; post {mp / max(secs[v], 1e-9):.1f} MP/s", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--head", choices=["distance", "hv"], required=True)
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("runs", nargs="+", help="training folders (or a shipped model's name, e.g. nuclei)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--top", type=int, default=6)
    a = ap.parse_args(argv)
    train(a) if a.cmd == "train" else score(a)


if __name__ == "__main__":
    main()
