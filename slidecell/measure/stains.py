"""Brightfield stains: optical density per stain by colour deconvolution, as QuPath measures it,
with QuPath's default vectors or vectors estimated on the slide (Macenko)."""

from __future__ import annotations

import numpy as np


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
