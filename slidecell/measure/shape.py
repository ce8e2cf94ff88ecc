"""Shape of each cell from its label image and outline: moments, ellipse axes, calipers and
circularity, vectorized over the cells (QuPath's shape measurements)."""

from __future__ import annotations

import numpy as np


def label_moments(labels: np.ndarray):
    """For every label present: ``(ids, area_px, cx, cy, mu20, mu02, mu11)`` with centroids
    in pixel coordinates of the label image (pixel centres at ``c + 0.5``) and central second
    moments per pixel. (Intensities: :func:`intensity_stats`, for the cells a tile owns.)"""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n).astype(np.float64)
    ids = np.flatnonzero(area[1:]) + 1
    if len(ids) == 0:
        e = np.zeros(0)
        return ids, e, e, e, e, e, e
    w = labels.shape[1]
    idx = np.flatnonzero(flat)  # foreground pixels only
    fl = flat[idx]
    ys, xs = np.divmod(idx, w)
    xs = xs + 0.5
    ys = ys + 0.5
    a = area[ids]
    cx, cy = np.bincount(fl, xs, n)[ids] / a, np.bincount(fl, ys, n)[ids] / a
    mu20 = np.bincount(fl, xs * xs, n)[ids] / a - cx**2
    mu02 = np.bincount(fl, ys * ys, n)[ids] / a - cy**2
    mu11 = np.bincount(fl, xs * ys, n)[ids] / a - cx * cy
    return ids, a, cx, cy, mu20, mu02, mu11


def ellipse_axes(mu20, mu02, mu11):
    """Major/minor axis lengths (of the ellipse with the same second moments, as
    skimage.regionprops) and eccentricity."""
    common = np.sqrt(np.maximum(((mu20 - mu02) / 2) ** 2 + mu11**2, 0))
    l1 = (mu20 + mu02) / 2 + common
    l2 = np.maximum((mu20 + mu02) / 2 - common, 0)
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    # a single pixel (no spread) is a circle, as in skimage
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-12), 0, 1)), 0.0)
    return major, minor, ecc


# -- shape, as QuPath measures it -------------------------------------------------------------
def calipers(polygons) -> tuple[np.ndarray, np.ndarray]:
    """Max and min caliper (Feret) diameters of each polygon, in its coordinates: the largest
    distance between two points of its convex hull, and the smallest width of the hull over all
    directions (rotating calipers: the minimum is at a direction normal to a hull edge), as
    QuPath's ``Max caliper``/``Min caliper``. Vectorized over polygons (hulls padded)."""
    import shapely

    polygons = np.asarray(polygons, dtype=object)
    n = len(polygons)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    if n > 512:  # bounded memory: (polygons × hull vertices²) per block
        parts = [calipers(polygons[i:i + 512]) for i in range(0, n, 512)]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    hulls = shapely.convex_hull(polygons)
    coords, which = shapely.get_coordinates(shapely.get_exterior_ring(hulls), return_index=True)
    counts = np.bincount(which, minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = max(int(counts.max()) - 1, 1)  # rings repeat their first point
    pos = np.arange(len(which)) - start[which]
    keep = pos < counts[which] - 1
    pts = np.full((n, k, 2), np.nan)
    pts[which[keep], pos[keep]] = coords[keep]
    valid = ~np.isnan(pts[:, :, 0])
    # max caliper: the largest distance between two hull vertices
    d = np.linalg.norm(pts[:, :, None, :] - pts[:, None, :, :], axis=-1)
    max_cal = np.nan_to_num(np.nanmax(np.where(np.isnan(d), -np.inf, d), axis=(1, 2)), neginf=0.0)
    # min caliper: over each hull edge, the hull's extent along the edge's normal
    nxt = np.where(valid, np.roll(np.arange(k), -1)[None, :], 0)
    last = valid.sum(1) - 1
    nxt[np.arange(n), np.maximum(last, 0)] = 0  # the last vertex closes the ring on the first
    edge = np.take_along_axis(pts, nxt[:, :, None], axis=1) - pts
    length = np.linalg.norm(edge, axis=-1)
    normal = np.stack([-edge[:, :, 1], edge[:, :, 0]], -1) / np.where(length > 0, length, np.nan)[:, :, None]
    proj = np.einsum("nek,nvk->nev", normal, pts)  # edge × vertex
    width = np.nanmax(np.where(np.isnan(proj), -np.inf, proj), 2) - np.nanmin(np.where(np.isnan(proj), np.inf, proj), 2)
    width = np.where(np.isfinite(width) & (length > 0), width, np.inf)
    min_cal = np.min(width, axis=1)
    min_cal = np.where(np.isfinite(min_cal), min_cal, 0.0)
    return max_cal, min_cal


def circularity(area, perimeter) -> np.ndarray:
    """``4π area / perimeter²`` (1 for a circle), as QuPath's ``Circularity``."""
    area, perimeter = np.asarray(area, np.float64), np.asarray(perimeter, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(perimeter > 0, np.clip(4 * np.pi * area / perimeter**2, 0, 1), np.nan)


def shape_columns(area_px, perimeter_px, hull_px, moments, polygons, mpp: float, mpp0: float) -> dict:
    """The shape measurements of cells, in the table's order: area, perimeter, eccentricity,
    solidity, ellipse axes, circularity, calipers. ``area_px``/``perimeter_px``/``hull_px`` and the
    central ``moments`` (mu20, mu02, mu11) at the working resolution (``mpp`` µm/px); ``polygons``
    (outlines) in level-0 pixels (``mpp0``)."""
    major, minor, ecc = ellipse_axes(*moments)
    max_cal, min_cal = calipers(polygons)
    area_um2 = area_px * mpp**2
    return {
        "area_um2": area_um2,
        "perimeter_um": perimeter_px * mpp,
        "eccentricity": ecc,
        "solidity": np.clip(area_px / np.maximum(hull_px, 1e-12), 0, 1),
        "major_axis_um": major * mpp,
        "minor_axis_um": minor * mpp,
        "circularity": circularity(area_um2, perimeter_px * mpp),
        "max_caliper_um": max_cal * mpp0,
        "min_caliper_um": min_cal * mpp0,
    }


def nucleus_shape_columns(area_um2, perimeter_um, polygons, cell_area_um2, mpp0: float) -> dict:
    """The nucleus' own shape beside its cell's (QuPath's ``Nucleus:`` measurements); ``polygons``
    in level-0 pixels (``mpp0``), empty for a cell without a nucleus."""
    n_max, n_min = calipers(polygons)
    return {"nucleus_area_um2": area_um2, "nucleus_perimeter_um": perimeter_um,
            "nucleus_circularity": circularity(area_um2, perimeter_um),
            "nucleus_max_caliper_um": n_max * mpp0, "nucleus_min_caliper_um": n_min * mpp0,
            "nucleus_cell_area_ratio": area_um2 / np.maximum(cell_area_um2, 1e-12)}
