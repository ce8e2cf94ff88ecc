"""Per-cell measurements and outlines against skimage and exact geometry."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from slidecell.measure import channel_means, ellipse_axes, label_moments, polygon_shape
from slidecell.polygons import label_polygons


def _labels():
    lab = np.zeros((120, 150), np.int32)
    lab[10:20, 10:40] = 1  # rectangle 10x30
    lab[30:50, 60:70] = 2
    lab[40:50, 70:90] = 2  # L shape
    rr, cc = disk((80, 40), 15)
    lab[rr, cc] = 3
    rr, cc = ellipse(80, 110, 8, 20, rotation=0.6)
    lab[rr, cc] = 5  # id 4 absent
    lab[5, 140] = 6  # single pixel
    return lab


def test_moments_match_regionprops():
    lab = _labels()
    ids, area, cx, cy, mu20, mu02, mu11 = label_moments(lab)
    assert list(ids) == [1, 2, 3, 5, 6]
    major, minor, ecc = ellipse_axes(mu20, mu02, mu11)
    for k, rp in enumerate(regionprops(lab)):
        assert rp.label == ids[k]
        assert area[k] == rp.area
        assert cy[k] == pytest.approx(rp.centroid[0] + 0.5)  # pixel centres at +0.5
        assert cx[k] == pytest.approx(rp.centroid[1] + 0.5)
        assert major[k] == pytest.approx(rp.axis_major_length, abs=1e-6)
        assert minor[k] == pytest.approx(rp.axis_minor_length, abs=1e-6)
        if rp.area > 1:
            assert ecc[k] == pytest.approx(rp.eccentricity, abs=1e-6)


def test_polygons_follow_pixel_edges():
    lab = _labels()
    ids = np.array([1, 2, 3, 5, 6])
    polys = label_polygons(lab, ids)
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polys)
    assert polys[0].equals(shapely.box(10, 10, 40, 20))  # exact rectangle on pixel edges
    # L shape: a concave corner is cut diagonally by the 8-connected contour (+0.25 px²)
    assert polys[1].area == pytest.approx(200 + 200, abs=0.25)
    assert polys[4].equals(shapely.box(140, 5, 141, 6))  # one pixel = one unit square
    ys, xs = np.mgrid[0:120, 0:150] + 0.5
    for lab_id, poly in zip(ids, polys):
        inside = shapely.contains_xy(poly, xs, ys)
        mask = lab == lab_id
        iou = (inside & mask).sum() / (inside | mask).sum()
        assert iou > 0.97, (lab_id, iou)
        assert poly.area == pytest.approx(mask.sum(), rel=0.04)


def test_touching_cells_share_edges():
    lab = np.zeros((40, 40), np.int32)
    lab[5:30, 5:20] = 1
    lab[5:30, 20:35] = 2
    a, b = label_polygons(lab, np.array([1, 2]))
    assert a.intersection(b).area == 0
    assert a.intersection(b).length == pytest.approx(25)


def test_channel_means_exact(rng):
    lab = _labels()
    img = rng.integers(0, 1000, (*lab.shape, 3)).astype(np.uint16)
    ids, area, *_ = label_moments(lab)
    means = channel_means(lab, img, ids, area)
    for k, i in enumerate(ids):
        assert np.allclose(means[k], img[lab == i].mean(axis=0), rtol=1e-6)


def test_polygon_shape():
    sq = shapely.box(0, 0, 10, 10)
    notch = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 5), (0, 10)])
    perim, sol = polygon_shape(np.array([sq, notch]))
    assert perim[0] == pytest.approx(40)
    assert sol[0] == pytest.approx(1.0) and sol[1] == pytest.approx(0.75)
