"""What the network sees: three float32 channels, the same for training and inference.

* brightfield (H&E, IHC, any RGB stain): RGB scaled to [0, 1]
* fluorescence: the nuclear signal scaled so that ``lo`` → 0 and ``hi`` → 1 (values above 1 are
  kept up to 2), repeated in all three channels

``lo``/``hi`` are the 1st and 99.8th percentiles of the nuclear signal, fitted once per slide (on
the engine's calibration tiles) so every tile of a slide is scaled the same way; for a single
image they are fitted on the image itself.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (1.0, 99.8)


def scale_to_unit(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32)


def nuclear_signal(image: np.ndarray) -> np.ndarray:
    """H×W float32 signal from an H×W or H×W×C fluorescence image (mean of the channels given)."""
    if image.ndim == 2:
        return image.astype(np.float32)
    return image.astype(np.float32).mean(axis=2)


def fit_range(signals: list[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(s, np.float32).ravel() for s in signals])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, PERCENTILES)
    if hi - lo < 1e-6:
        hi = lo + max(abs(lo), 1.0) * 1e-3 + 1e-6
    return float(lo), float(hi)


#: a nuclear signal whose pixel noise exceeds this fraction of its range is smoothed before the
#: network (``smooth_um: null``): counting instruments lie above it (MIBI Point14's HH3 0.08-0.10,
#: the IMC cytomapper crops 0.07-0.08 as the multiplex preset reads them at 0.5 µm/px), DSB2018's
#: fluorescence train/validation images below (99th percentile 0.027); see
#: benchmarks/choose_multiplex.py
NOISY = 0.05
#: the blur then applied, sigma in µm (chosen on the IMC cytomapper crops)
NOISY_SMOOTH_UM = 0.75


def noise_ratio(signals: list[np.ndarray], source_px: float = 1.0) -> float:
    """Pixel noise of a nuclear signal as a fraction of its range (1st-99.8th percentile):
    1.4826 × the median absolute deviation of each pixel from the median of its neighbourhood,
    over the pixels brighter than a fifth of the range. ~0 for a clean stain, ~0.1 for ion
    counts. ``source_px``: working pixels per scanned pixel (2 for an IMC image read at twice its
    resolution); the neighbourhood (3×3 at the scan's resolution) grows with it, since
    interpolation between scanned pixels hides their noise from their nearest neighbours."""
    from scipy.ndimage import median_filter

    size = 2 * max(1, int(round(source_px))) + 1
    if not any(np.size(s) for s in signals):
        return 0.0
    lo, hi = fit_range(signals)
    devs = []
    for s in signals:
        x = np.where(np.isfinite(s), s, lo).astype(np.float32)
        if min(x.shape) < size:
            continue
        fg = x > lo + 0.2 * (hi - lo)
        if fg.any():
            devs.append(np.abs(x - median_filter(x, size))[fg])
    if not devs:
        return 0.0
    return float(1.4826 * np.median(np.concatenate(devs)) / (hi - lo))


def model_input(image: np.ndarray, modality: str, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """H×W×3 float32 network input (channels last) from an image at the model's resolution."""
    if modality == "fluorescence":
        sig = nuclear_signal(image)
        lo, hi = value_range if value_range is not None else fit_range([sig])
        x = np.clip((sig - lo) / (hi - lo), 0.0, 2.0)
        return np.repeat(x[:, :, None], 3, axis=2)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] != 3:
        raise ValueError(f"brightfield input needs 3 channels (RGB), got {image.shape[2]}")
    return np.clip(scale_to_unit(image), 0.0, 1.0)


