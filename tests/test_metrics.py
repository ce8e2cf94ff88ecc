import numpy as np
import pytest

from slidecell.metrics import THRESHOLDS, SetScore, score_image


def squares(specs, shape=(40, 40)):
    lab = np.zeros(shape, np.int32)
    for i, (y, x, h, w) in enumerate(specs, 1):
        lab[y:y + h, x:x + w] = i
    return lab


def test_perfect_match_scores_one():
    gt = squares([(2, 2, 10, 10), (20, 20, 8, 8)])
    s = SetScore()
    s.add(gt, gt * 7)  # ids need not agree
    r = s.summary()
    assert r["mSA"] == 1.0 and r["F1_50"] == 1.0 and r["PQ"] == 1.0 and r["AJI"] == 1.0


def test_partial_overlap_values():
    gt = squares([(0, 0, 10, 10)])
    pred = squares([(0, 0, 10, 8)])  # IoU 0.8
    s = SetScore()
    s.add(gt, pred)
    r = s.summary()
    # matched at t = 0.50 … 0.80 (7 of 10 thresholds), SA = 1 there and 0 beyond
    assert r["mSA"] == pytest.approx(7 / 10)
    assert r["F1_50"] == 1.0
    assert r["PQ"] == pytest.approx(0.8)
    assert r["AJI"] == pytest.approx(80 / 100)


def test_false_positive_and_negative_counts():
    gt = squares([(0, 0, 10, 10), (20, 20, 10, 10)])
    pred = squares([(0, 0, 10, 10), (30, 0, 5, 5)])  # one hit, one miss, one spurious
    img = score_image(gt, pred)
    assert (img.n_true, img.n_pred, len(img.ious)) == (2, 2, 1)
    s = SetScore()
    s.add(gt, pred)
    r = s.summary()
    assert r["SA50"] == pytest.approx(1 / 3)
    assert r["F1_50"] == pytest.approx(0.5)
    # AJI: 100 / (100 + 100 (missed nucleus) + 25 (unused prediction))
    assert r["AJI"] == pytest.approx(100 / 225)


def test_split_nucleus_is_one_match_one_fp():
    gt = squares([(0, 0, 10, 20)])
    pred = squares([(0, 0, 10, 12), (0, 12, 10, 8)])  # IoU 0.6 and 0.4
    r = SetScore()
    r.add(gt, pred)
    out = r.summary()
    assert out["SA50"] == pytest.approx(1 / 2)
    assert out["mSA"] == pytest.approx(sum(0.5 for t in THRESHOLDS if t <= 0.6) / len(THRESHOLDS))


def test_empty_images():
    z = np.zeros((8, 8), np.int32)
    s = SetScore()
    s.add(z, z)
    assert s.summary()["mSA"] == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        score_image(z, np.zeros((4, 4), np.int32))
