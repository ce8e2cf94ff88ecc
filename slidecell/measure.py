"""Per-cell measurements from a label image and its tile: vectorized, no Python loop per cell.

Moments and areas come from ``np.bincount`` over the label image's foreground, intensities
(per compartment and statistic) from :func:`intensity_stats`; perimeter and solidity come with
the outlines (slidecell.polygons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


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


# -- brightfield stains: optical density by colour deconvolution, as QuPath --------------------
#: QuPath's default stain vectors (``StainVector.DefaultStains``: Ruifrok & Johnston's
#: haematoxylin and DAB, the AMIDA13 eosin), named as QuPath names them
DEFAULT_STAINS = {
    "H&E": (("Hematoxylin", (0.65, 0.70, 0.29)), ("Eosin", (0.2159, 0.8012, 0.5581))),
    "H-DAB": (("Hematoxylin", (0.65, 0.70, 0.29)), ("DAB", (0.27, 0.57, 0.78))),
}


def stain_matrix(vectors) -> np.ndarray:
    """The 3×3 matrix that maps per-channel optical densities (R, G, B) to stain amounts, as
    QuPath's ``ColorDeconvolutionStains.getMatrixInverse``: the inverse of the matrix whose rows
    are the unit stain vectors, the third the unit cross product of the first two when only two
    are given (QuPath's "Residual")."""
    rows = [np.asarray(v, np.float64) / np.linalg.norm(v) for v in vectors]
    if len(rows) == 2:
        c = np.cross(rows[0], rows[1])
        rows.append(c / np.linalg.norm(c))
    return np.linalg.inv(np.stack(rows))


def estimate_stains(images, reference=DEFAULT_STAINS["H&E"], background=(255.0, 255.0, 255.0),
                    min_od: float = 0.15, max_od: float = 2.5, percentile: float = 1.0):
    """The slide's own two stain vectors from its pixels (H×W×3 RGB images), as QuPath's
    *Estimate stain vectors* and Macenko et al. (2009): the optical densities of stained pixels
    (total OD between ``min_od`` and ``max_od``) projected on the plane of their two principal
    directions; the stains are the directions at the ``percentile`` and 100 − ``percentile`` of
    the angle in that plane, named after the ``reference`` stain each is closest to. Returns
    ``((name, (r, g, b)), (name, (r, g, b)))`` unit vectors, or None when too few pixels are
    stained (under 1,000)."""
    bg = np.asarray(background, np.float64)
    od = np.concatenate([np.maximum(0.0, -np.log10(np.maximum(im[:, :, :3].reshape(-1, 3).astype(np.float64), 1.0) / bg))
                         for im in images]) if len(images) else np.zeros((0, 3))
    total = od.sum(1)
    od = od[(total > min_od) & (total < max_od)]
    if len(od) < 1000:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two largest
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # the main direction points into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100 - percentile])
    found = []
    for angle in (lo, hi):
        v = plane @ np.array([np.cos(angle), np.sin(angle)])
        v = np.abs(v) if (v < 0).sum() >= 2 else np.clip(v, 0, None)
        found.append(v / np.linalg.norm(v))
    refs = [np.asarray(v) / np.linalg.norm(v) for _, v in reference]
    # the stain closer to the first reference (haematoxylin) takes its name
    if found[0] @ refs[0] - found[0] @ refs[1] < found[1] @ refs[0] - found[1] @ refs[1]:
        found.reverse()
    return tuple((name, tuple(float(x) for x in v)) for (name, _), v in zip(reference, found))


def stain_od(rgb: np.ndarray, inverse: np.ndarray, background=(255.0, 255.0, 255.0), n: int = 2) -> np.ndarray:
    """Each pixel's amount of the first ``n`` stains (H×W×n float32), as QuPath: the optical
    density of each channel ``max(0, -log10(max(v, 1) / background))``, then the stain matrix."""
    bg = np.asarray(background, np.float64)
    od = np.maximum(0.0, -np.log10(np.maximum(rgb[:, :, :3].astype(np.float64), 1.0) / bg))
    return (od @ inverse[:, :n]).astype(np.float32)


# -- multiplexed quantification: compartments and per-marker statistics ------------------------
#: compartments a cell can be measured in; "cell" exists only when whole cells are formed
COMPARTMENTS = ("cell", "nucleus", "cytoplasm", "membrane")
#: statistics per compartment and marker; percentiles are asked for separately ("p90")
STATISTICS = ("mean", "median", "sum", "std", "min", "max")
_SORTED = {"median", "min", "max"}


def expand_nuclei(nuclei: np.ndarray, distance_px: float) -> np.ndarray:
    """Whole cells from nuclei, as QuPath's cell expansion: every background pixel within
    ``distance_px`` of a nucleus goes to its nearest nucleus (Euclidean), so cells never overlap
    and each contains its nucleus unchanged. Label ids are kept."""
    from skimage.segmentation import expand_labels

    if distance_px <= 0:
        return nuclei
    return expand_labels(nuclei, distance=distance_px)


def membrane_ring(cells: np.ndarray, width_px: float) -> np.ndarray:
    """The inner ring of each cell: its pixels within ``width_px`` of a pixel of another label
    (or background), as a label image with the cells' ids."""
    from skimage.morphology import disk

    r = max(1, int(round(width_px)))
    fp = disk(r).astype(bool)
    hi = ndi.maximum_filter(cells, footprint=fp, mode="nearest")
    lo = ndi.minimum_filter(cells, footprint=fp, mode="nearest")
    return np.where((hi != cells) | (lo != cells), cells, 0).astype(cells.dtype)


def compartment_labels(nuclei: np.ndarray, cells: np.ndarray | None, compartments, membrane_px: float = 0.0) -> dict:
    """The label image of each compartment, all with the cells' ids: ``nucleus`` (the nuclear
    object within its cell), ``cell``, ``cytoplasm`` (cell minus nucleus), ``membrane`` (the
    cell's inner ring; of the nucleus when there are no whole cells)."""
    out = {}
    base = cells if cells is not None else nuclei
    for comp in compartments:
        if comp == "nucleus":
            out[comp] = nuclei if cells is None else np.where(nuclei == cells, nuclei, 0)
        elif comp == "cell":
            out[comp] = base
        elif comp == "cytoplasm":
            out[comp] = np.where(nuclei == 0, base, 0)
        elif comp == "membrane":
            out[comp] = membrane_ring(base, membrane_px)
        else:
            raise ValueError(f"unknown compartment {comp!r} (one of {COMPARTMENTS})")
    return out


def _sortable(v: np.ndarray) -> np.ndarray:
    """float32 → uint32 whose unsigned order is the float order (NaN last)."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000))


def _unsortable(u: np.ndarray) -> np.ndarray:
    u = u.astype(np.uint32)
    return np.where(u >> 31, u & np.uint32(0x7FFFFFFF), ~u).view(np.float32)


def intensity_stats(labels: np.ndarray, image: np.ndarray, ids: np.ndarray, statistics=("mean",),
                    percentiles=()) -> dict[str, np.ndarray]:
    """Per-label, per-channel intensity statistics of ``image`` (h, w, c) over ``labels`` for
    the labels ``ids`` (in that order): ``{stat: (len(ids), c) float32}`` for each of
    ``statistics`` (:data:`STATISTICS`) and ``p<q>`` for each percentile (numpy's linear
    interpolation, so ``median`` = ``p50``). Labels without pixels get NaN. Vectorized: one
    ``bincount`` per channel for mean/sum/std; medians, extremes and percentiles sort each
    channel's pixels once by (label, value)."""
    ids = np.asarray(ids, np.int64)
    n, nch = len(ids), image.shape[2]
    out: dict[str, np.ndarray] = {}
    stats = list(dict.fromkeys(statistics))
    pcts = [float(q) for q in percentiles]
    if n == 0:
        for s in stats + [_pct_name(q) for q in pcts]:
            out[s] = np.zeros((0, nch), np.float32)
        return out
    seg, pix, count = _label_pixels(labels, image, ids)
    empty = count == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if {"mean", "sum", "std"} & set(stats):
            sums = _channel_sums(seg, pix, n)
            mean = sums / count[:, None]
            if "mean" in stats:
                out["mean"] = mean.astype(np.float32)
            if "sum" in stats:
                out["sum"] = sums.astype(np.float32)
            if "std" in stats:  # population std (ddof 0), two passes for precision
                std = np.empty((n, nch))
                for c in range(nch):
                    dev = pix[:, c].astype(np.float64) - mean[seg, c]
                    std[:, c] = np.sqrt(np.bincount(seg, dev * dev, n) / count)
                out["std"] = std.astype(np.float32)
        if ((_SORTED & set(stats)) or pcts) and len(seg):
            order = np.argsort(seg, kind="stable")
            seg_sorted = seg[order].astype(np.uint64) << np.uint64(32)
            start = np.concatenate([[0], np.cumsum(count[:-1])]).astype(np.int64)
            last = np.maximum(start + count.astype(np.int64) - 1, 0)
            want = {s: np.empty((n, nch), np.float32) for s in _SORTED & set(stats)}
            pvals = {q: np.empty((n, nch), np.float32) for q in pcts}
            for c in range(nch):
                key = np.sort(seg_sorted | _sortable(pix[order, c]).astype(np.uint64))
                vals = _unsortable(key & np.uint64(0xFFFFFFFF))
                if "min" in want:
                    want["min"][:, c] = vals[start.clip(max=len(vals) - 1)]
                if "max" in want:
                    want["max"][:, c] = vals[last.clip(max=len(vals) - 1)]
                for q in pcts + ([50.0] if "median" in want else []):
                    pos = start + q / 100.0 * np.maximum(count - 1, 0)
                    lo = np.minimum(np.floor(pos).astype(np.int64), len(vals) - 1)
                    hi = np.minimum(lo + 1, last)
                    frac = (pos - lo).astype(np.float32)
                    v = vals[lo] + (vals[hi] - vals[lo]) * frac
                    if q in pvals:
                        pvals[q][:, c] = v
                    if q == 50.0 and "median" in want:
                        want["median"][:, c] = v
            out.update(want)
            out.update({_pct_name(q): v for q, v in pvals.items()})
        elif (_SORTED & set(stats)) or pcts:  # no pixel of any label
            for s in list(_SORTED & set(stats)) + [_pct_name(q) for q in pcts]:
                out[s] = np.full((n, nch), np.nan, np.float32)
    for v in out.values():
        v[empty] = np.nan
    return {k: out[k] for k in stats + [_pct_name(q) for q in pcts]}


def _label_pixels(labels: np.ndarray, image: np.ndarray, ids: np.ndarray):
    """The pixels of labels ``ids``: each one's row in ``ids`` (``seg``), their values
    ``(m, channels)`` and the pixel count of each label (float64)."""
    flat = labels.ravel()
    top = int(max(flat.max(), ids.max())) + 1
    lut = np.full(top, -1, np.int64)
    lut[ids] = np.arange(len(ids))
    row = lut[flat]
    idx = np.flatnonzero(row >= 0)
    seg = row[idx]
    return seg, image.reshape(-1, image.shape[2])[idx], np.bincount(seg, minlength=len(ids)).astype(np.float64)


def _channel_sums(seg: np.ndarray, pix: np.ndarray, n: int) -> np.ndarray:
    """Per-segment sums of every channel, float64 (one bincount per channel: measured faster
    than a sparse product or ``add.reduceat`` over sorted pixels)."""
    sums = np.empty((n, pix.shape[1]))
    for c in range(pix.shape[1]):
        sums[:, c] = np.bincount(seg, pix[:, c].astype(np.float64), n)
    return sums


def split_means(nuclei: np.ndarray, cells: np.ndarray, image: np.ndarray, ids: np.ndarray) -> dict:
    """Sums and means over the cell, its nucleus and its cytoplasm in one pass over the cells'
    pixels: each pixel is binned by (cell, inside the nucleus or not); the cell is the sum of
    both. ``nuclei`` must carry the cells' ids (a nucleus lies inside its cell). Returns
    ``{(compartment, "sum"|"mean"): (len(ids), channels) float32}``."""
    n = len(ids)
    comb = np.where(cells > 0, cells.astype(np.int64) * 2 + (nuclei > 0), 0)
    ids2 = np.concatenate([ids * 2, ids * 2 + 1])  # cytoplasm rows, then nucleus rows
    seg, pix, count = _label_pixels(comb, image, ids2)
    sums = _channel_sums(seg, pix, 2 * n)
    parts = {"cytoplasm": (sums[:n], count[:n]), "nucleus": (sums[n:], count[n:]),
             "cell": (sums[:n] + sums[n:], count[:n] + count[n:])}
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for comp, (sm, ct) in parts.items():
            mean = (sm / ct[:, None]).astype(np.float32)
            total = sm.astype(np.float32)
            total[ct == 0] = np.nan
            out[(comp, "mean")], out[(comp, "sum")] = mean, total
    return out


def _pct_name(q: float) -> str:
    return f"p{q:g}"


@dataclass(frozen=True)
class MeasureSpec:
    """What is measured per cell (made from the ``measure`` config for one slide): the channels
    (indices into the tile and their names), how whole cells are formed and which compartment ×
    statistic layers are computed. Picklable; travels with the engine's tile context."""

    channel_index: tuple[int, ...]
    channel_names: tuple[str, ...]
    expand_px: float = 0.0
    membrane_px: float = 1.0
    compartments: tuple[str, ...] = ("cell",)
    statistics: tuple[str, ...] = ("mean",)
    percentiles: tuple[float, ...] = ()
    #: the objects' ids mean something (a given label image): kept as ``mask_label``
    source_labels: bool = False
    #: what the segmentation's objects are: "nuclei" (grown into cells when ``expand_px``),
    #: "cells" (a whole-cell mask; no nucleus compartment) or "cells+nuclei" (a whole-cell
    #: backend that also finds the nuclei)
    objects: str = "nuclei"
    #: the segmentation scores its objects: kept as ``confidence``
    confidence: bool = False
    #: brightfield stains measured as mean optical density (the tile's first three channels are
    #: R, G, B): ``((name, (r, g, b)), ...)`` and the background RGB
    stain_vectors: tuple = ()
    stain_background: tuple[float, float, float] = (255.0, 255.0, 255.0)

    @classmethod
    def from_config(cls, measure, channel_names, expansion_um: float, mpp: float,
                    source_labels: bool = False, objects: str = "nuclei", confidence: bool = False,
                    modality: str | None = None) -> "MeasureSpec":
        """From a :class:`slidecell.config.MeasureConfig`; errors name the offending key."""
        from .errors import ConfigError

        names = list(channel_names)
        rgb = tuple(names[:3]) == ("Red", "Green", "Blue")
        stains = measure.stains
        if stains == "auto":
            stains = "H&E" if rgb and modality == "brightfield" else "none"
        if stains == "estimate":  # H&E until the slide's own are estimated (with_stains)
            stains = "H&E"
        if stains != "none" and not rgb:
            raise ConfigError(f"measure.stains: stain optical densities need an RGB brightfield image; this one has "
                              f"channels {names}")
        vectors = () if stains == "none" else DEFAULT_STAINS[stains] if isinstance(stains, str) else \
            tuple((k, tuple(v)) for k, v in stains.items())
        stain_kw = {}
        if vectors:
            stain_kw = {"stain_vectors": tuple((k, tuple(map(float, v))) for k, v in vectors),
                        "stain_background": tuple(map(float, measure.stain_background or (255, 255, 255)))}
        wanted = list(measure.channels) or names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ConfigError(f"measure.channels: {missing} not among the image's channels {names}")
        if objects != "nuclei" and expansion_um > 0:
            raise ConfigError("segmentation.cell_expansion_um: the objects are already cells "
                              f"(segmentation objects: {objects}); set it to 0")
        whole = expansion_um > 0 or objects != "nuclei"
        comps = []
        for comp in measure.compartments:
            if comp in ("cytoplasm", "nucleus") and objects == "cells":
                raise ConfigError(f"measure.compartments: '{comp}' needs nuclei; the objects are cells "
                                  "(segmentation.objects: cells)")
            if not whole and comp == "cytoplasm":
                raise ConfigError("measure.compartments: 'cytoplasm' needs whole cells; set "
                                  "segmentation.cell_expansion_um (e.g. 3)")
            comps.append("nucleus" if not whole and comp == "cell" else comp)
        return cls(tuple(names.index(c) for c in wanted), tuple(wanted), expansion_um / mpp, measure.membrane_um / mpp,
                   tuple(dict.fromkeys(comps)), tuple(dict.fromkeys(measure.statistics)),
                   tuple(measure.percentiles), source_labels, objects, confidence, **stain_kw)

    @classmethod
    def means(cls, channel_names) -> "MeasureSpec":
        """The mean of every channel over each object, nothing else."""
        return cls(tuple(range(len(channel_names))), tuple(channel_names), compartments=())

    @property
    def whole_cells(self) -> bool:
        """The objects are cells (grown from nuclei, or segmented as cells)."""
        return self.expand_px > 0 or self.objects != "nuclei"

    @property
    def with_nuclei(self) -> bool:
        """Cells with their nuclei: both outlines and the nucleus/cytoplasm compartments exist."""
        return self.expand_px > 0 or self.objects == "cells+nuclei"

    @property
    def primary(self) -> str:
        """The compartment whose mean is ``X``: the cell, or the nucleus without whole cells."""
        return "cell" if self.whole_cells else "nucleus"

    def _plan(self) -> dict[str, tuple[list[str], list[float]]]:
        plan = {self.primary: (["mean"], [])}
        for comp in self.compartments:
            stats, pcts = plan.setdefault(comp, ([], []))
            stats.extend(s for s in self.statistics if s not in stats)
            pcts.extend(q for q in self.percentiles if q not in pcts)
        return plan

    def layers(self) -> list[str]:
        """``<compartment>_<statistic>`` for every measured pair except the primary mean (X)."""
        out = []
        for comp, (stats, pcts) in self._plan().items():
            out += [f"{comp}_{s}" for s in stats + [_pct_name(q) for q in pcts] if (comp, s) != (self.primary, "mean")]
        return out

    def with_stains(self, vectors) -> "MeasureSpec":
        """This spec measuring the stains ``((name, (r, g, b)), ...)`` (e.g. estimated on the slide)."""
        import dataclasses

        return dataclasses.replace(self, stain_vectors=tuple((k, tuple(map(float, v))) for k, v in vectors))

    @property
    def stains(self) -> tuple[str, ...]:
        """The names of the stains measured."""
        return tuple(k for k, _ in self.stain_vectors)

    def od_compartments(self) -> tuple[str, ...]:
        """Where the stains' optical densities are measured: the nucleus, and with whole cells
        its cytoplasm and the cell (as QuPath's cell detection)."""
        if not self.stains:
            return ()
        return ("nucleus", "cytoplasm", "cell") if self.with_nuclei else (self.primary,)

    def od_columns(self) -> list[str]:
        return [f"{comp}_od_{stain}" for comp in self.od_compartments() for stain in self.stains]

    def schema(self):
        from .table import CellSchema

        return CellSchema(self.channel_names, tuple(self.layers()), self.with_nuclei, self.source_labels,
                          self.confidence, tuple(self.od_columns()))

    def measure_stains(self, nuclei: np.ndarray, cells: np.ndarray | None, image: np.ndarray, ids: np.ndarray) -> dict:
        """``{<compartment>_od_<stain>: values}``: each stain's mean optical density."""
        if not self.stains:
            return {}
        inverse = stain_matrix([v for _, v in self.stain_vectors])
        od = stain_od(image, inverse, self.stain_background, len(self.stains))
        if self.with_nuclei:
            split = split_means(nuclei, cells, od, ids)
            means = {comp: split[(comp, "mean")] for comp in self.od_compartments()}
        else:
            means = {self.primary: intensity_stats(nuclei, od, ids, ("mean",))["mean"]}
        return {f"{comp}_od_{stain}": values[:, k] for comp, values in means.items()
                for k, stain in enumerate(self.stains)}

    def measure(self, nuclei: np.ndarray, cells: np.ndarray | None, image: np.ndarray, ids: np.ndarray) -> dict:
        """``{column: values}`` for cells ``ids``: ``mean:<ch>`` and every layer's columns."""
        if image.ndim == 2:
            image = image[:, :, None]
        stains = self.measure_stains(nuclei, cells, image, ids)
        if self.channel_index != tuple(range(image.shape[2])):
            image = image[:, :, list(self.channel_index)]
        plan = self._plan()
        # cell, nucleus and cytoplasm sums/means come from one pass over the cells' pixels
        split = {c for c, (st, pc) in plan.items() if self.with_nuclei and c in ("cell", "nucleus", "cytoplasm")
                 and set(st) <= {"mean", "sum"} and not pc}
        fast = split_means(nuclei, cells, image, ids) if split else {}
        rest = [c for c in plan if c not in split]
        labels = compartment_labels(nuclei, cells if self.with_nuclei else None, rest, self.membrane_px)
        out = {}
        for comp, (stats, pcts) in plan.items():
            if comp in split:
                res = {st: fast[(comp, st)] for st in stats}
            else:
                res = intensity_stats(labels[comp], image, ids, stats, pcts)
            for stat, values in res.items():
                prefix = "mean" if (comp, stat) == (self.primary, "mean") else f"{comp}_{stat}"
                for c, name in enumerate(self.channel_names):
                    out[f"{prefix}:{name}"] = values[:, c]
        out.update(stains)
        return out
