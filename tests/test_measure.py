"""Per-cell measurements and outlines against skimage and exact geometry."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from scipy import ndimage as ndi

from slidecell.measure import ellipse_axes, intensity_stats, label_moments
from slidecell.polygons import label_polygons, outline_labels


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
    # L shape: the concave corner is exact too
    assert polys[1].equals(shapely.Polygon([(60, 30), (70, 30), (70, 40), (90, 40), (90, 50), (60, 50)]))
    assert polys[4].equals(shapely.box(140, 5, 141, 6))  # one pixel = one unit square
    ys, xs = np.mgrid[0:120, 0:150] + 0.5
    for lab_id, poly in zip(ids, polys):
        # the outline is exactly the union of the label's pixel squares
        assert np.array_equal(shapely.contains_xy(poly, xs, ys), lab == lab_id)
        assert poly.area == (lab == lab_id).sum()
        # no vertex in the middle of a straight edge
        c = np.asarray(poly.exterior.coords)[:-1]
        d_in, d_out = np.sign(c - np.roll(c, 1, 0)), np.sign(np.roll(c, -1, 0) - c)
        assert not np.all(d_in == d_out, axis=1).any()


def test_outlines_of_real_nuclei_are_exact_and_disjoint():
    """StarDist demo annotation (125 real nuclei, many touching): each outline covers exactly
    its pixels, is valid, and touching nuclei share edges without overlapping."""
    import tifffile

    from conftest import STARDIST, need

    lab = tifffile.imread(need(STARDIST) / "mask2d.tif").astype(np.int32)
    ids = np.unique(lab)[1:]
    polys, perim, hull, bounds = outline_labels(lab, ids, (100, 200), 2.0)
    assert shapely.is_valid(polys).all()
    counts = np.bincount(lab.ravel())[ids]
    single = np.array([ndi.label(lab == i)[1] == 1 and not ndi.binary_fill_holes(lab == i).sum() > (lab == i).sum()
                       for i in ids])
    assert single.mean() > 0.9
    assert np.array_equal(shapely.area(polys)[single], 4.0 * counts[single])  # scale 2: 4× the area
    tree = shapely.STRtree(polys)
    i, j = tree.query(polys, predicate="intersects")
    keep = i < j
    assert keep.sum() > 20  # touching pairs exist
    assert shapely.area(shapely.intersection(polys[i[keep]], polys[j[keep]])).max() <= 4 * 0.25
    # perimeter and hull area (in label pixels) agree with GEOS on the placed outlines
    assert np.allclose(perim * 2, shapely.length(polys))
    assert np.allclose(hull * 4, shapely.area(shapely.convex_hull(polys)))
    assert shapely.bounds(polys).min() >= 200
    assert np.allclose((bounds + (100, 200, 100, 200)) * 2, shapely.bounds(polys))


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
    ids = label_moments(lab)[0]
    means = intensity_stats(lab, img, ids)["mean"]
    for k, i in enumerate(ids):
        assert np.allclose(means[k], img[lab == i].mean(axis=0), rtol=1e-6)


def test_calipers_match_a_brute_force_search(rng):
    """Max caliper = the largest vertex distance; min caliper = the smallest width over every
    direction (searched on a fine grid of angles: never below the exact value)."""
    from slidecell.measure import calipers, circularity

    polys = [shapely.MultiPoint(rng.normal(size=(rng.integers(3, 40), 2)) * rng.uniform(1, 20)).convex_hull
             for _ in range(700)] + [shapely.box(0, 0, 4, 2), shapely.Polygon([(0, 0), (3, 0), (0, 4)]), shapely.Polygon()]
    mx, mn = calipers(np.array(polys, dtype=object))
    assert mx[-3:].tolist() == pytest.approx([np.hypot(4, 2), 5, 0]) and mn[-3:].tolist() == pytest.approx([2, 2.4, 0])
    angles = np.linspace(0, np.pi, 4000, endpoint=False)
    dirs = np.stack([np.cos(angles), np.sin(angles)])
    for p, a, b in list(zip(polys, mx, mn))[:60]:
        c = np.asarray(p.exterior.coords)
        assert a == pytest.approx(np.linalg.norm(c[:, None] - c[None], axis=-1).max(), rel=1e-9)
        proj = c @ dirs
        brute = (proj.max(0) - proj.min(0)).min()
        assert b <= brute + 1e-9 and b == pytest.approx(brute, rel=1e-3)
    assert circularity([np.pi * 4], [2 * np.pi * 2])[0] == pytest.approx(1.0)
