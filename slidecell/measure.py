"""Per-cell measurements from a label image and its tile: vectorized, no Python loop per cell.

Moments, areas and channel intensities come from one ``np.bincount`` pass over the label
image's foreground; perimeter and solidity come with the outlines (slidecell.polygons).
"""

from __future__ import annotations

import numpy as np


def label_moments(labels: np.ndarray):
    """For every label present: ``(ids, area_px, cx, cy, mu20, mu02, mu11)`` with centroids
    in pixel coordinates of the label image (pixel centres at ``c + 0.5``) and central second
    moments per pixel."""
    return label_stats(labels)[:7]


def label_stats(labels: np.ndarray, image: np.ndarray | None = None):
    """:func:`label_moments` plus, with ``image``, the mean of each channel over each label
    (``(len(ids), channels)`` float32) in the same pass over the foreground pixels."""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n).astype(np.float64)
    ids = np.flatnonzero(area[1:]) + 1
    nch = image.shape[2] if image is not None else 0
    if len(ids) == 0:
        e = np.zeros(0)
        return ids, e, e, e, e, e, e, np.zeros((0, nch), np.float32)
    h, w = labels.shape
    idx = np.flatnonzero(flat)  # foreground pixels only
    fl = flat[idx]
    ys, xs = np.divmod(idx, w)
    xs = xs + 0.5
    ys = ys + 0.5
    a = area[ids]
    sx = np.bincount(fl, xs, n)[ids]
    sy = np.bincount(fl, ys, n)[ids]
    cx, cy = sx / a, sy / a
    mu20 = np.bincount(fl, xs * xs, n)[ids] / a - cx**2
    mu02 = np.bincount(fl, ys * ys, n)[ids] / a - cy**2
    mu11 = np.bincount(fl, xs * ys, n)[ids] / a - cx * cy
    means = np.empty((len(ids), nch), np.float32)
    if nch:
        pix = image.reshape(-1, nch)[idx]
        for c in range(nch):
            means[:, c] = np.bincount(fl, pix[:, c].astype(np.float64), n)[ids] / a
    return ids, a, cx, cy, mu20, mu02, mu11, means


def ellipse_axes(mu20, mu02, mu11):
    """Major/minor axis lengths (of the ellipse with the same second moments, as
    skimage.regionprops) and eccentricity."""
    common = np.sqrt(np.maximum(((mu20 - mu02) / 2) ** 2 + mu11**2, 0))
    l1 = (mu20 + mu02) / 2 + common
    l2 = np.maximum((mu20 + mu02) / 2 - common, 0)
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    ecc = np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-12), 0, 1))
    return major, minor, ecc
