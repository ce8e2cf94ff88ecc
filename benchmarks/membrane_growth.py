"""Nucleus → whole cell: fixed-distance growth against membrane-guided growth, on the two real
multiplex sets with whole-cell masks (the IMC cytomapper crops, the MIBI Point14 field of view).

    python benchmarks/membrane_growth.py

The nuclei are the same for every method: the built-in model with the multiplex preset's
parameters (seed threshold 0.85, confidence 0.5, 2 µm², its auto-smoothing of noisy counts),
run on the whole image at its native resolution (a single tile). Methods:

- ``expand D``: every pixel within D µm of a nucleus goes to the nearest one (the preset's).
- ``membrane``: a seeded watershed on the mean of the membrane channels (each scaled by its 99th
  percentile of non-zero pixels, then blurred by sigma µm), seeds the nuclei plus one
  "outside" seed made of every pixel D µm or more from any nucleus, so that a cell's outer
  edge settles on its membrane ridge where one is stained, and half-way to D where none is;
  ``compactness`` (skimage) regularises towards distance.

- ``bounded`` (``--bounded``): growth by D µm kept only where the smoothed (1 µm) signal of the
  membrane channels, or of every non-nuclear channel, exceeds a fraction of its Otsu threshold
  over the set, and always within ``keep`` µm of the nucleus: cells that stop where the stained
  cytoplasm ends.

Scored as whole cells against each set's mask (F1@0.5, mSA, AJI). The measurement behind the
preset keeping fixed growth (benchmarks/RESULTS.md, issue 16).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, watershed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from slidecell import load_config  # noqa: E402
from slidecell.metrics import SetScore  # noqa: E402
from slidecell.segment import get_segmenter, unscored  # noqa: E402
from slidecell.segment.channels import channel_scales, nuclear_channel_indices, scaled_mean  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data" / "multiplex"
P14 = SHARED / "mibi-granuloma-point14"
IMC = SHARED / "imc-cytomapper"
P14_MEMBRANE = ["NaKATPase", "HLA-Class-1", "CD45", "Vimentin", "Keratin-pan", "E-cadherin"]


def datasets():
    """(name, [(image HxWxC float32, mask)], channel names, µm/px, membrane channels)."""
    out = []
    if IMC.exists():
        crops = [(tifffile.imread(IMC / f"{k}_imc.tiff").transpose(1, 2, 0).astype(np.float32),
                  tifffile.imread(IMC / f"{k}_mask.tiff").astype(np.int32)) for k in ("E34", "G01", "J02")]
        out.append(("IMC cytomapper (3 crops, 1 µm/px)", crops, ["H3", "CD99", "PIN", "CD8a", "CDH"], 1.0,
                    ["CD99", "CDH"]))
    if P14.exists():
        names = sorted(p.stem for p in (P14 / "channels").glob("*.tif"))
        img = np.stack([tifffile.imread(P14 / "channels" / f"{n}.tif") for n in names], -1).astype(np.float32)
        mask = tifffile.imread(P14 / "cell_mask.tif").astype(np.int32)
        mask[mask == 1] = 0  # its background label
        out.append(("MIBI Point14 (0.49 µm/px)", [(img, mask)], names, 0.49, P14_MEMBRANE))
    return out


def nuclei(img, names, mpp):
    seg_cfg = load_config("multiplex-fluorescence").segmentation
    nuclear = [names[i] for i in nuclear_channel_indices(names, [])]
    seg = get_segmenter("builtin", seg_cfg.params, names, "fluorescence", mpp, nuclear)
    seg.calibrate([img])
    return unscored(seg.finish(seg.predict([img])[0], img))


def membrane_signal(img, names, membrane):
    """The channels' mean, each on its 99th percentile of non-zero pixels (the engine's rule)."""
    idx = [names.index(m) for m in membrane]
    return scaled_mean(img, idx, channel_scales([img], idx))


def membrane_cells(nuc, mem, mpp, sigma_um, max_um, compactness):
    m = ndi.gaussian_filter(mem, sigma_um / mpp)
    markers = nuc.copy()
    outside = int(nuc.max()) + 1
    markers[ndi.distance_transform_edt(nuc == 0) >= max_um / mpp] = outside
    lab = watershed(m, markers, compactness=compactness)
    lab[lab == outside] = 0
    return lab


def bounded_cells(nuc, signal, otsu, mpp, fraction, max_um, keep_um):
    grown = expand_labels(nuc, max_um / mpp)
    near = expand_labels(nuc, keep_um / mpp) > 0
    return np.where((signal > fraction * otsu) | near, grown, 0)


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bounded", action="store_true", help="score signal-bounded growth instead of the membrane watershed")
    a = ap.parse_args()
    for name, items, names, mpp, membrane in datasets():
        if a.bounded:
            bounded(items, names, mpp, membrane, name)
            continue
        nucs = [nuclei(img, names, mpp) for img, _ in items]
        mems = [membrane_signal(img, names, membrane) for img, _ in items]
        print(f"\n{name}: {sum(len(np.unique(m)) - 1 for _, m in items)} cells in the masks, "
              f"{sum(len(np.unique(n)) - 1 for n in nucs)} nuclei; membrane channels {membrane}")
        rows = []

        def score(label, labs):
            sc = SetScore()
            for (_, mask), lab in zip(items, labs):
                sc.add(mask, lab)
            r = sc.summary()
            rows.append((r["F1_50"], r["mSA"], r["AJI"], label))
            print(f"  {label:45s} F1 {r['F1_50']:.3f}  mSA {r['mSA']:.3f}  AJI {r['AJI']:.3f}", flush=True)

        for d in (1.0, 1.5, 2.0, 2.5, 3.0):
            score(f"expand {d} µm", [expand_labels(n, d / mpp) for n in nucs])
        for sigma, d, comp in itertools.product((0.5, 1.0), (3.0, 4.0, 5.0), (0.0, 0.01, 0.1)):
            score(f"membrane sigma {sigma} µm, D {d} µm, compactness {comp}",
                  [membrane_cells(n, m, mpp, sigma, d, comp) for n, m in zip(nucs, mems)])
        best = max(rows)
        print(f"  best by F1: {best[3]} (F1 {best[0]:.3f}, mSA {best[1]:.3f})")


def bounded(items, names, mpp, membrane, name):
    from skimage.filters import threshold_otsu

    nucs = [nuclei(img, names, mpp) for img, _ in items]
    nuclear = set(nuclear_channel_indices(names, []))
    others = [n for i, n in enumerate(names) if i not in nuclear]

    def score(labs):
        sc = SetScore()
        for (_, mask), lab in zip(items, labs):
            sc.add(mask, lab)
        r = sc.summary()
        return f"F1 {r['F1_50']:.3f}  mSA {r['mSA']:.3f}"

    print(f"\n{name}: expand 2 µm: {score([expand_labels(n, 2.0 / mpp) for n in nucs])}")
    for label, chans in (("membrane channels", membrane), ("every non-nuclear channel", others)):
        sigs = [ndi.gaussian_filter(membrane_signal(img, names, chans), 1.0 / mpp) for img, _ in items]
        otsu = threshold_otsu(np.concatenate([s.ravel() for s in sigs]))
        for frac, d, keep in itertools.product((0.5, 1.0), (2.5, 3.0, 4.0), (1.0, 1.5)):
            labs = [bounded_cells(n, s, otsu, mpp, frac, d, keep) for n, s in zip(nucs, sigs)]
            print(f"  bounded by {label} > {frac} Otsu, D {d} µm, kept within {keep} µm: {score(labs)}", flush=True)


if __name__ == "__main__":
    main()
