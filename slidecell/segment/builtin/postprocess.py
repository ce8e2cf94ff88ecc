"""Output maps → instance labels, vectorised (scipy C loops; no Python loop over nuclei).

Seeds are the nucleus cores where the predicted normalised distance exceeds ``seed_threshold``
(method ``"distance"``), the regional maxima of the distance map that stand ``1 - seed_threshold``
above their surroundings (``"hmax"``), or the foreground minus the predicted boundary ring
(``"boundary"``).
Each foreground pixel then goes to a seed: by watershed on the predicted distance
(``grow="watershed"``) or simply to the nearest seed (``grow="nearest"``, one Euclidean
distance transform). Foreground components that got no seed keep one label of their own.
Pockets of background inside one nucleus (pale chromatin) are filled, as its outline is; a
lumen ringed by several nuclei is not (:func:`fill_holes`).
Each nucleus' **confidence** is the mean foreground probability over its pixels
(:func:`object_confidence`); nuclei below ``min_confidence`` are dropped (fragments on stroma,
ink or debris that the network is unsure of), as are those under ``min_pixels``.
See ``benchmarks/RESULTS.md`` (model choice) for the measurements behind the defaults.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..models import relabel

_CROSS = ndi.generate_binary_structure(2, 1)


def maps_to_labels(fg: np.ndarray, boundary: np.ndarray, dist: np.ndarray, *, fg_threshold: float = 0.5,
                   seed_threshold: float = 0.5, min_pixels: int = 4, seeds: str = "distance",
                   grow: str = "nearest", min_confidence: float = 0.0, return_scores: bool = False):
    """``fg``, ``boundary``, ``dist``: probabilities in [0, 1] (float32, H×W). Returns int32
    labels numbered 1..n in raster order of each nucleus' first pixel (and, with
    ``return_scores``, each label's confidence: ``scores[k]`` for label k)."""
    mask = fg > fg_threshold
    if not mask.any():
        empty = np.zeros(mask.shape, np.int32)
        return (empty, np.zeros(1, np.float32)) if return_scores else empty
    # pockets of the foreground that the network places inside a nucleus (predicted distance
    # > 0.5: a pale, vesicular centre) are foreground; a lumen ringed by nuclei (distance ~0) is not
    holes, nh = enclosed_background(mask)
    if nh:
        inside = np.zeros(nh + 1, bool)
        inside[1:] = ndi.mean(dist, holes, np.arange(1, nh + 1)) > 0.5
        mask |= inside[holes]
        holes = np.where(inside[holes], 0, holes)  # the pockets left
    if seeds == "distance":
        core = mask & (dist > seed_threshold)
    elif seeds == "boundary":
        core = mask & (boundary < 0.5)
    elif seeds == "hmax":
        # regional maxima of the distance map at least ``h`` above their surroundings
        from .hmaxima import h_maxima  # scikit-image's definition, in linear time

        h = 1.0 - seed_threshold
        core = mask & h_maxima(np.where(mask, dist, 0).astype(np.float32), h)
    else:
        raise ValueError(f"unknown seed method {seeds!r}")
    markers, n = ndi.label(core, structure=_CROSS)
    comps, nc = ndi.label(mask, structure=_CROSS)
    # foreground components without any seed become one nucleus each
    seeded = np.zeros(nc + 1, bool)
    seeded[comps[markers > 0]] = True
    orphan = ~seeded
    orphan[0] = False
    if orphan.any():
        extra = np.zeros(nc + 1, np.int32)
        extra[orphan] = np.arange(n + 1, n + 1 + int(orphan.sum()), dtype=np.int32)
        add = extra[comps]
        markers = np.where(add > 0, add, markers)
    if grow == "nearest":
        idx = ndi.distance_transform_edt(markers == 0, return_distances=False, return_indices=True)
        labels = markers[idx[0], idx[1]]
        labels[~mask] = 0
        # a pixel may only join a seed of its own foreground component
        labels[comps != comps[idx[0], idx[1]]] = 0
    elif grow == "watershed":
        from skimage.segmentation import watershed

        labels = watershed(-dist, markers, mask=mask)
    else:
        raise ValueError(f"unknown grow method {grow!r}")
    labels = fill_holes(labels.astype(np.int32, copy=False), holes, nh)
    if min_confidence > 0 or return_scores:
        conf = object_confidence(labels, fg)
        if min_confidence > 0:
            labels = np.where(conf[labels] >= min_confidence, labels, 0)
        labels, old = relabel(labels, min_pixels, return_old=True)
        return (labels, conf[old].astype(np.float32)) if return_scores else labels
    return relabel(labels, min_pixels)


def object_confidence(labels: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Mean foreground probability over each label's pixels (index = label; 0 for label 0)."""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n)
    total = np.bincount(flat, weights=fg.ravel().astype(np.float64), minlength=n)
    conf = np.where(area > 0, total / np.maximum(area, 1), 0.0)
    conf[0] = 0.0
    return conf


def enclosed_background(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Background components (4-connected) that do not reach the image border, numbered 1..n."""
    holes, n = ndi.label(~mask, structure=_CROSS)
    if n == 0:
        return holes, 0
    lut = np.ones(n + 1, bool)
    lut[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    lut[0] = False
    if not lut.any():
        return np.zeros_like(holes), 0
    ids = np.zeros(n + 1, holes.dtype)
    ids[lut] = np.arange(1, int(lut.sum()) + 1)
    return ids[holes], int(lut.sum())


def fill_holes(labels: np.ndarray, holes: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
    """Background pockets enclosed by a single nucleus become part of it, as in its outline (so
    measurements and outlines agree); pockets between several nuclei (a gland's lumen ringed by
    nuclei) and background reaching the image border stay background. ``holes``/``n``: the
    pockets if known (:func:`enclosed_background` of the foreground)."""
    if holes is None:
        holes, n = enclosed_background(labels > 0)
    if not n:
        return labels
    ys, xs = np.nonzero(holes)  # pockets never touch the border: all four neighbours exist
    if ys.size == 0:
        return labels
    h = holes[ys, xs].astype(np.int64)
    base = int(labels.max()) + 1
    pairs = []  # (pocket, neighbouring label) across the four pixel edges
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nb = labels[ys + dy, xs + dx]
        m = nb > 0
        pairs.append(h[m] * base + nb[m])
    uniq = np.unique(np.concatenate(pairs))
    hole_of, lab_of = np.divmod(uniq, base)
    single = np.bincount(hole_of, minlength=n + 1)[hole_of] == 1
    fill = np.zeros(n + 1, labels.dtype)
    fill[hole_of[single]] = lab_of[single]
    if not fill.any():
        return labels
    out = labels.copy()
    out[ys, xs] = fill[holes[ys, xs]]
    return out


