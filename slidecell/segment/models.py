"""What every model backend needs, in one place: a loaded-model cache (a model is loaded once
per process and shared by the run's threads), the device, batch sizes, resampling tiles to the
model's µm/px and back, and renumbering labels."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np


class ModelCache:
    """Loaded models by key (path, device, precision...): loaded once per process, under a lock."""

    def __init__(self):
        self._items: dict = {}
        self._lock = threading.Lock()

    def get(self, key, load: Callable[[], object]):
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
            return self._items[key]


def pick_device(device: str = "auto"):
    """A torch device: CUDA where there is one for ``auto``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_batch_size(requested: int | None, device) -> int:
    """Tiles per forward pass: as asked, else 2 on a CPU (as fast per pixel as 4, half the
    memory) and 8 on a GPU."""
    if requested is not None:
        return requested
    return 2 if device.type == "cpu" else 8


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


def relabel(labels: np.ndarray, min_pixels: int = 1, return_old: bool = False):
    """Drop labels smaller than ``min_pixels``; number the rest 1..n in raster order. With
    ``return_old`` also the old id of each new label (``old[k]`` for new label k, ``old[0] = 0``)."""
    flat = labels.ravel()
    if flat.size == 0 or flat.max() == 0:
        empty = np.zeros(labels.shape, np.int32)
        return (empty, np.zeros(1, np.int64)) if return_old else empty
    areas = np.bincount(flat)
    keep = areas >= min_pixels
    keep[0] = False
    # raster order of first appearance
    uniq, first = np.unique(flat, return_index=True)
    order = uniq[np.argsort(first)]
    order = order[keep[order]]
    lut = np.zeros(len(areas), np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    if return_old:
        return lut[labels], np.r_[0, order].astype(np.int64)
    return lut[labels]
