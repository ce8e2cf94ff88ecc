"""Annotated nucleus sets (:mod:`slidecell.datasets`) → training samples at the model's resolution.

Every
image is resampled once to the model's µm/px (from the row's ``mpp``, else its
``magnification``, else the set's nominal ``mpp``); labels with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ..datasets import load_pair, read_index, resample_pair, row_modality, row_mpp, select
from ..segment.builtin.inputs import model_input



@dataclass
class Sample:
    key: str            # "<set>/<image_id>"
    image: np.ndarray   # H×W×3 float32 model input (see inputs.model_input)
    labels: np.ndarray  # H×W int32
    modality: str
    native_mpp: float


@dataclass
class Group:
    name: str
    weight: float
    samples: list[Sample] = field(default_factory=list)


def load_samples(root: Path, set_name: str, where: dict | None, nominal_mpp: float | None,
                 model_mpp: float) -> list[Sample]:
    folder = root / set_name
    rows = select(read_index(folder), where)
    out = []
    for row in rows:
        img, lab = load_pair(folder, row)
        mpp = row_mpp(row, nominal_mpp)
        img, lab = resample_pair(img, lab, mpp / model_mpp)
        modality = row_modality(row)
        x = model_input(img, modality)
        out.append(Sample(f"{set_name}/{row['image_id']}", x, lab, modality, mpp))
    return out


# -- targets ---------------------------------------------------------------------------------
def targets(lab: np.ndarray) -> np.ndarray:
    """Instance labels → 3×H×W float32 targets: foreground, boundary ring, normalised distance."""
    fg = lab > 0
    pad = np.pad(lab, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    ring = (pad[:-2, 1:-1] != c) | (pad[2:, 1:-1] != c) | (pad[1:-1, :-2] != c) | (pad[1:-1, 2:] != c)
    ring &= fg
    inner = fg & ~ring
    d = ndi.distance_transform_edt(inner).astype(np.float32)
    n = int(lab.max())
    if n:
        mx = ndi.maximum(d, lab, np.arange(n + 1)).astype(np.float32)
        mx[mx == 0] = 1
        d = d / mx[lab]
    return np.stack([fg, ring, d]).astype(np.float32)


# -- augmentation ------------------------------------------------------------------------------
from skimage.color import hed_from_rgb as _HED, rgb_from_hed as _RGB  # noqa: E402

_HED32 = _HED.astype(np.float32)
_RGB32 = _RGB.astype(np.float32)


def hed_jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    od = -np.log(np.clip(x, 1 / 255, 1.0))
    conc = od.reshape(-1, 3) @ _HED32
    alpha = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    beta = rng.uniform(-strength / 5, strength / 5, 3).astype(np.float32)
    conc = conc * alpha + beta
    return np.clip(np.exp(-(conc @ _RGB32)), 0, 1).reshape(x.shape).astype(np.float32)


@dataclass
class Augment:
    patch: int = 192
    scale: tuple[float, float] = (0.5, 2.0)
    hed: float = 0.25
    blur: float = 0.2
    noise: float = 0.2
    jpeg: float = 0.2
    #: brightfield: probability of painting tissue-marking ink / pen over the patch (hard
    #: negatives: no nucleus under opaque ink)
    ink: float = 0.0


#: optical densities (per unit of concentration) of marking inks and pens seen on slides:
#: blue, teal and green tissue-marking dyes and black pen (no red or purple: over eosin they look
#: like haematoxylin)
INK_OD = np.array([[1.1, 0.45, 0.12], [1.3, 0.7, 0.2], [1.0, 0.3, 0.45], [1.0, 0.9, 0.85], [0.6, 1.1, 0.35]],
                  np.float32)


def paint_ink(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue-marking ink over an RGB patch in [0, 1]: a smooth random blob or stroke of one dye
    added in optical density. Nuclei mostly under opaque ink (alpha > 0.5) become background."""
    h, w = lab.shape
    field = rng.normal(size=(max(2, h // 24), max(2, w // 24))).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), max(h, w) / 24)
    field = (field - field.mean()) / (field.std() + 1e-6)
    cover = rng.uniform(-0.5, 1.2)  # higher: less of the patch inked
    alpha = np.clip((field - cover) * rng.uniform(1.0, 4.0), 0, 1)
    if rng.random() < 0.5:  # granular pigment: specks of a few pixels
        speck = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), rng.uniform(0.6, 1.5))
        alpha = alpha * np.clip((speck - speck.mean()) / (speck.std() + 1e-6) * 1.5, 0, 1)
    dye = INK_OD[int(rng.integers(0, len(INK_OD)))] * rng.uniform(0.5, 1.6)
    od = -np.log(np.clip(img, 1 / 255, 1.0)) + alpha[:, :, None] * dye[None, None, :]
    img = np.clip(np.exp(-od), 0, 1).astype(np.float32)
    if lab.any() and (alpha > 0.5).any():
        n = int(lab.max()) + 1
        covered = np.bincount(lab.ravel(), weights=(alpha > 0.5).ravel(), minlength=n) / np.maximum(
            np.bincount(lab.ravel(), minlength=n), 1)
        lab = np.where(covered[lab] > 0.5, 0, lab)
    return img, lab


def sample_patch(s: Sample, aug: Augment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented patch: (3×P×P input, 3×P×P targets)."""
    p = aug.patch
    lo, hi = np.log(aug.scale[0]), np.log(aug.scale[1])
    zoom = float(np.exp(rng.uniform(lo, hi))) if rng.random() < 0.5 else float(np.exp(rng.uniform(lo / 4, hi / 4)))
    src = max(8, int(round(p / zoom)))
    img, lab = s.image, s.labels
    h, w = lab.shape
    if h < src or w < src:
        ph, pw = max(0, src - h), max(0, src - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h and pw < w else "edge")
        lab = np.pad(lab, ((0, ph), (0, pw)), mode="constant")
        h, w = lab.shape
    y = int(rng.integers(0, h - src + 1))
    x = int(rng.integers(0, w - src + 1))
    img = img[y:y + src, x:x + src]
    lab = lab[y:y + src, x:x + src]
    if src != p:
        img = cv2.resize(img, (p, p), interpolation=cv2.INTER_LINEAR if zoom > 1 else cv2.INTER_AREA)
        lab = cv2.resize(lab, (p, p), interpolation=cv2.INTER_NEAREST_EXACT)
    k = int(rng.integers(0, 4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img = np.ascontiguousarray(img, dtype=np.float32)
    lab = np.ascontiguousarray(lab)
    # intensity
    if s.modality == "brightfield":
        if aug.hed > 0 and np.ptp(img.reshape(-1, 3).mean(0)) > 0.02:
            img = hed_jitter(img, rng, aug.hed)
        if aug.ink > 0 and rng.random() < aug.ink:
            img, lab = paint_ink(img, lab, rng)
        img = np.clip((img - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    else:
        img = np.clip(img * rng.uniform(0.6, 1.4), 0, 2) ** rng.uniform(0.7, 1.4)
    if rng.random() < aug.blur:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < aug.noise:
        img = img + rng.normal(0, rng.uniform(0.01, 0.06), img.shape).astype(np.float32)
    if rng.random() < aug.jpeg:
        u8 = np.clip(img * 255, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    return img, targets(lab.astype(np.int32))


def sample_batch(groups: list[Group], aug: Augment, batch: int, rng: np.random.Generator):
    weights = np.array([g.weight for g in groups], float)
    weights /= weights.sum()
    xs, ys = [], []
    for _ in range(batch):
        g = groups[int(rng.choice(len(groups), p=weights))]
        s = g.samples[int(rng.integers(0, len(g.samples)))]
        x, y = sample_patch(s, aug, rng)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)
