import numpy as np
import pytest

from conftest import CMU1, need
from slidecell.metrics import SetScore
from slidecell.segment.builtin.postprocess import maps_to_labels
from slidecell.segment.models import relabel
from slidecell.train.data import targets


def disks(centres, radius, shape=(64, 96)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        lab[(d <= radius**2) & (lab == 0)] = i
    return lab


@pytest.mark.parametrize("grow", ["nearest", "watershed"])
@pytest.mark.parametrize("seeds", ["distance", "boundary"])
def test_targets_round_trip_split_touching_nuclei(grow, seeds):
    # two pairs of touching nuclei and one single: the perfect maps must give them back
    gt = disks([(20, 20), (20, 37), (45, 60), (45, 77), (15, 80)], 9)
    t = targets(gt)
    pred = maps_to_labels(t[0], t[1], t[2], seeds=seeds, grow=grow)
    assert pred.max() == 5
    s = SetScore()
    s.add(gt, pred)
    r = s.summary()
    assert r["F1_50"] == 1.0
    assert r["SA50"] == 1.0 and r["PQ"] > 0.9


def test_unseeded_component_kept_and_small_dropped():
    fg = np.zeros((30, 30), np.float32)
    fg[2:12, 2:12] = 1       # seeded nucleus
    fg[20:26, 20:26] = 1     # no distance peak: still one nucleus
    fg[0, 29] = 1            # 1 pixel: dropped
    dist = np.zeros_like(fg)
    dist[5:9, 5:9] = 1
    lab = maps_to_labels(fg, np.zeros_like(fg), dist, min_pixels=4)
    assert lab.max() == 2
    assert (lab == 1).sum() == 100 and (lab == 2).sum() == 36
    assert lab[0, 29] == 0


def test_empty_maps_and_relabel_order():
    z = np.zeros((10, 10), np.float32)
    assert maps_to_labels(z, z, z).max() == 0
    lab = np.array([[0, 5, 5], [3, 0, 9], [3, 0, 0]], np.int32)
    out = relabel(lab, min_pixels=2)
    assert out.tolist() == [[0, 1, 1], [2, 0, 0], [2, 0, 0]]
    with pytest.raises(ValueError):
        maps_to_labels(z + 1, z, z, seeds="nope")


def test_pale_centres_are_filled_but_a_lumen_ringed_by_nuclei_is_not():
    """A nucleus whose pale centre falls below the foreground threshold keeps its centre (as its
    outline does, so measurements and outlines agree); background enclosed by a ring of several
    nuclei (a gland lumen) and background at the border stay background."""
    from slidecell.segment.builtin.postprocess import fill_holes

    yy, xx = np.mgrid[:96, :96]
    ring = [(48 + 30 * np.sin(a), 48 + 30 * np.cos(a)) for a in np.linspace(0, 2 * np.pi, 13)[:-1]]
    gt = disks(ring, 9, (96, 96))  # 12 touching nuclei around a lumen
    t = targets(gt)
    fg = t[0].copy()
    for cy, cx in ring[:4]:  # four pale (vesicular) nuclei: a hole of radius 3 in the foreground
        fg[(yy - round(cy)) ** 2 + (xx - round(cx)) ** 2 <= 9] = 0.1
    pred = maps_to_labels(fg, t[1], t[2], seeds="hmax", grow="watershed", seed_threshold=0.75, fg_threshold=0.5)
    assert pred.max() == 12
    lumen = (yy - 48) ** 2 + (xx - 48) ** 2 <= 15**2
    assert pred[lumen].max() == 0
    for cy, cx in ring[:4]:
        assert pred[round(cy), round(cx)] > 0  # the pale centre belongs to its nucleus
    s = SetScore()
    s.add(gt, pred)
    assert s.summary()["F1_50"] == 1.0
    # a pocket open to the image border stays background
    lab2 = np.zeros((8, 8), np.int32)
    lab2[:4, :4] = 1
    lab2[0, 1] = 0  # touches the top border
    assert fill_holes(lab2)[0, 1] == 0


def test_confidence_is_the_mean_foreground_and_its_threshold_is_monotone():
    fg = np.zeros((40, 60), np.float32)
    dist = np.zeros_like(fg)
    levels = [0.95, 0.8, 0.62]
    for k, p in enumerate(levels):
        fg[10:20, 5 + 18 * k:15 + 18 * k] = p
        dist[13:17, 8 + 18 * k:12 + 18 * k] = 1.0
    lab, scores = maps_to_labels(fg, np.zeros_like(fg), dist, return_scores=True)
    assert lab.max() == 3 and len(scores) == 4
    assert np.allclose(sorted(scores[1:]), sorted(levels))
    for k in range(1, 4):  # scores[k] belongs to label k
        assert scores[k] == pytest.approx(fg[lab == k].mean())
    counts = []
    for thr in (0.0, 0.5, 0.7, 0.9, 0.99):
        lab_t, sc_t = maps_to_labels(fg, np.zeros_like(fg), dist, min_confidence=thr, return_scores=True)
        assert (sc_t[1:] >= thr).all() and lab_t.max() == len(sc_t) - 1
        assert np.array_equal(np.unique(lab_t[lab_t > 0]), np.arange(1, lab_t.max() + 1))  # numbered 1..n
        counts.append(int(lab_t.max()))
        # a nucleus that stays keeps its pixels
        for k in range(1, lab_t.max() + 1):
            assert (lab[lab_t == k] > 0).all() and len(np.unique(lab[lab_t == k])) == 1
    assert counts == [3, 3, 2, 1, 0]


def _assert_h_maxima_as_scikit_image(img, h, rng):
    from skimage.morphology import h_maxima as sk_h_maxima
    from skimage.morphology import reconstruction

    from slidecell.segment.builtin.hmaxima import h_maxima, reconstruct

    ours = h_maxima(img, h)
    assert ours.dtype == bool
    np.testing.assert_array_equal(ours, sk_h_maxima(img, h).astype(bool))
    marker = img - rng.random(img.shape).astype(np.float32) * 0.3
    np.testing.assert_array_equal(reconstruct(marker, img), reconstruction(marker, img))
    return int(ours.sum())


def test_h_maxima_are_scikit_images_on_random_images():
    """The linear-time seeds give exactly the pixels scikit-image's sort-based h_maxima and
    reconstruction give, on random images with plateaus and ties, at random heights."""
    from scipy import ndimage as ndi

    from slidecell.segment.builtin.hmaxima import reconstruct

    rng = np.random.default_rng(0)
    n_seeds = 0
    for k in range(150):
        h, w = rng.integers(1, 60, 2)
        img = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0, 4))
        if k % 3 == 0:  # plateaus: equal values side by side
            img = np.round(img * 20) / 20
        n_seeds += _assert_h_maxima_as_scikit_image(img.astype(np.float32), float(rng.uniform(0.001, 0.2)), rng)
    assert n_seeds > 500, n_seeds  # not an empty comparison
    with pytest.raises(ValueError, match="exceed"):
        reconstruct(np.ones((3, 3)), np.zeros((3, 3)))


def test_h_maxima_are_scikit_images_on_real_model_maps():
    """The same on the shipped model's distance map of a real H&E window (foreground only, as
    post-processing passes it), at the shipped height and two others."""
    from slidecell.io import open_slide
    from slidecell.segment import get_segmenter

    with open_slide(need(CMU1)) as reader:
        seg = get_segmenter("builtin", {}, reader.channel_names, reader.modality, reader.mpp)
        fg, _, dist = seg.predict([reader.read_region(600, 1600, 384, 384)])[0]
    real = np.where(fg > 0.5, dist, 0).astype(np.float32)
    rng = np.random.default_rng(1)
    counts = [_assert_h_maxima_as_scikit_image(real, h, rng) for h in (1 - seg.post.seed_threshold, 0.1, 0.5)]
    assert counts[0] > 50, counts
