"""Instance segmentation scores: mSA, F1, PQ and AJI from label images.

* matching: a predicted and a true nucleus match when their IoU ≥ t; for t ≥ 0.5 a match is
  one-to-one by construction, so counting pairs above t gives the true positives
* SA(t) = TP / (TP + FP + FN); **mSA** is its mean over t = 0.50, 0.55, … 0.95 (as in μSAM-APG)
* **F1**, **precision** (matches / predictions), **recall** (matches / true nuclei) at IoU 0.5; **PQ** = mean IoU of the matches × F1 (Kirillov et al.)
* **AJI** (Kumar et al. 2017): each true nucleus is paired with the prediction of largest IoU
  with it; unpaired predictions add to the union

Counts are summed over a set's images before the ratios are taken (as StarDist's
``matching_dataset``); AJI is averaged over images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


@dataclass
class ImageScore:
    n_true: int
    n_pred: int
    ious: np.ndarray          # IoU of every one-to-one match with IoU ≥ 0.5
    aji_inter: int
    aji_union: int


def pair_table(true: np.ndarray, pred: np.ndarray):
    """(true id, pred id, intersection) of every overlapping pair, and both area tables."""
    t = np.asarray(true).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in size: {np.shape(true)} vs {np.shape(pred)}")
    at = np.bincount(t)
    ap = np.bincount(p)
    both = (t > 0) & (p > 0)
    key = t[both] * (len(ap)) + p[both]
    u, inter = np.unique(key, return_counts=True)
    return u // len(ap), u % len(ap), inter, at, ap


def score_image(true: np.ndarray, pred: np.ndarray) -> ImageScore:
    ti, pi, inter, at, ap = pair_table(true, pred)
    n_true = int((at[1:] > 0).sum())
    n_pred = int((ap[1:] > 0).sum())
    union = at[ti] + ap[pi] - inter
    iou = inter / np.maximum(union, 1)
    matched = iou >= 0.5
    # AJI: best prediction for every true nucleus
    aji_i = aji_u = 0
    used = np.zeros(len(ap), bool)
    if len(ti):
        order = np.lexsort((-iou, ti))          # by true id, best IoU first
        first = np.ones(len(order), bool)
        first[1:] = ti[order][1:] != ti[order][:-1]
        best = order[first]
        aji_i = int(inter[best].sum())
        aji_u = int(union[best].sum())
        used[pi[best]] = True
        paired_true = np.zeros(len(at), bool)
        paired_true[ti[best]] = True
    else:
        paired_true = np.zeros(len(at), bool)
    # true nuclei without any overlapping prediction add their area to the union
    lonely_true = (at > 0) & ~paired_true
    lonely_true[0] = False
    aji_u += int(at[lonely_true].sum())
    unused = (ap > 0) & ~used
    unused[0] = False
    aji_u += int(ap[unused].sum())
    return ImageScore(n_true, n_pred, iou[matched], aji_i, aji_u)


@dataclass
class SetScore:
    images: list[ImageScore] = field(default_factory=list)

    def add(self, true, pred) -> ImageScore:
        s = score_image(true, pred)
        self.images.append(s)
        return s

    def summary(self) -> dict[str, float]:
        n_true = sum(s.n_true for s in self.images)
        n_pred = sum(s.n_pred for s in self.images)
        ious = np.concatenate([s.ious for s in self.images]) if self.images else np.zeros(0)
        sa = []
        for t in THRESHOLDS:
            tp = int((ious >= t).sum())
            denom = n_true + n_pred - tp
            sa.append(tp / denom if denom else 1.0)
        tp = len(ious)
        f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 1.0
        sq = float(ious.mean()) if tp else 0.0
        ajis = [s.aji_inter / s.aji_union for s in self.images if s.aji_union > 0]
        return {
            "images": len(self.images),
            "nuclei_true": n_true,
            "nuclei_pred": n_pred,
            "mSA": float(np.mean(sa)),
            "SA50": float(sa[0]),
            "F1_50": float(f1),
            "precision": tp / n_pred if n_pred else 1.0,
            "recall": tp / n_true if n_true else 1.0,
            "PQ": float(sq * f1),
            "AJI": float(np.mean(ajis)) if ajis else float("nan"),
        }


# -- polygon sets (tiled vs whole-image runs) ------------------------------------------------------
def match_polygons(a: np.ndarray, b: np.ndarray, thr: float = 0.9) -> np.ndarray:
    """One-to-one matches ``(i, j)`` between two arrays of shapely polygons at IoU ≥ ``thr``
    (greedy by IoU; above 0.5 a match is unique anyway)."""
    import shapely

    tree = shapely.STRtree(b)
    ia, ib = tree.query(a, predicate="intersects")
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    iou = inter / (shapely.area(a[ia]) + shapely.area(b[ib]) - inter)
    order = np.argsort(-iou)
    used_a, used_b, pairs = set(), set(), []
    for k in order:
        if iou[k] < thr:
            break
        if ia[k] not in used_a and ib[k] not in used_b:
            used_a.add(ia[k])
            used_b.add(ib[k])
            pairs.append((ia[k], ib[k]))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _intersecting_pairs(polys: np.ndarray):
    """Pairs ``i < j`` of polygons that intersect, and each pair's overlap as a fraction of the
    smaller polygon's area."""
    import shapely

    tree = shapely.STRtree(polys)
    i, j = tree.query(polys, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    return i, j, inter / np.maximum(np.minimum(shapely.area(polys[i]), shapely.area(polys[j])), 1e-12)


def overlapping_pairs(polys: np.ndarray, fraction: float = 0.05) -> int:
    """Pairs of polygons overlapping by more than ``fraction`` of the smaller one's area."""
    return int((_intersecting_pairs(polys)[2] > fraction).sum()) if len(polys) else 0


def max_overlap_fraction(polys: np.ndarray) -> float:
    """Largest overlap between two polygons of a set, as a fraction of the smaller one's area
    (0 for cells that only share edges; 1 for a duplicate)."""
    frac = _intersecting_pairs(polys)[2] if len(polys) else np.zeros(0)
    return float(frac.max()) if len(frac) else 0.0
