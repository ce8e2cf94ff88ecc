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


def resample_factor(tile_mpp: float, model_mpp: float | None) -> float:
    """How much a tile is scaled to reach the model's µm/px (>1: tile pixels are larger than the
    model's); 1 within 5%, where resampling would only blur."""
    factor = 1.0 if model_mpp is None else tile_mpp / model_mpp
    return 1.0 if abs(factor - 1) < 0.05 else factor


def resample(x: np.ndarray, factor: float) -> np.ndarray:
    """An H×W×C model input scaled by ``factor`` (area-averaged down, bilinear up)."""
    if factor == 1.0:
        return x
    import cv2

    h, w = x.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    out = cv2.resize(x, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out
