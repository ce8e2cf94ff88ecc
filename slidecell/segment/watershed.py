"""Classical nucleus segmentation: nuclear signal → global threshold → distance-transform
watershed.

The nuclear signal is haematoxylin optical density (colour deconvolution) for brightfield RGB,
or the chosen nuclear channel(s) for fluorescence. The threshold is fitted once per slide on
sample tiles (Otsu), so that a nucleus seen by two overlapping tiles is segmented the same way
in both.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi

from .base import BackendParams, Segmenter, register
from .channels import haematoxylin, nuclear_or_all

class WatershedParams(BackendParams):
    #: Gaussian smoothing of the nuclear signal, in µm
    sigma_um: float = Field(1.0, ge=0, le=20)
    #: background subtraction (morphological opening, as QuPath's cell detection "background
    #: radius"): signal varying more slowly than this radius (stained cytoplasm, uneven
    #: illumination) is removed before thresholding; 0 disables it
    background_radius_um: float = Field(8.0, ge=0, le=200)
    #: fixed threshold on the (smoothed) nuclear signal; None fits Otsu on sample tiles
    threshold: float | None = None
    #: scales the fitted Otsu threshold (<1 finds fainter nuclei)
    threshold_scale: float = Field(1.0, gt=0, le=10)
    #: smallest distance between two nucleus centres, in µm (controls splitting of touching nuclei)
    min_distance_um: float = Field(3.0, gt=0, le=100)
    #: nuclei outside [min_area_um2, max_area_um2] are dropped
    min_area_um2: float = Field(8.0, ge=0)
    max_area_um2: float = Field(800.0, gt=0)


@register
class WatershedSegmenter(Segmenter):
    name = "watershed"
    Params = WatershedParams

    def __init__(self, params, channel_names, modality, mpp, nuclear_channels=()):
        super().__init__(params, channel_names, modality, mpp, nuclear_channels)
        self.rgb = tuple(channel_names) == ("Red", "Green", "Blue")
        self.use_hematoxylin = self.modality == "brightfield" and self.rgb and not nuclear_channels
        if self.use_hematoxylin:
            self.channels: list[int] = []
        else:
            self.channels = nuclear_or_all(channel_names, nuclear_channels)

    def channels_used(self) -> dict:
        if self.use_hematoxylin:
            return {"haematoxylin": list(self.channel_names[:3])}
        return super().channels_used()

    # -- signal -------------------------------------------------------------------
    def signal(self, image: np.ndarray) -> np.ndarray:
        """Nuclear signal (float32, larger = more nuclear) smoothed by ``sigma_um``."""
        if self.use_hematoxylin:
            sig = haematoxylin(image)
        else:
            chans = image[:, :, self.channels].astype(np.float32)
            scales = self.state.get("channel_scale")
            if scales is not None:
                chans = chans / np.asarray(scales, dtype=np.float32)
            sig = chans.max(axis=2) if self.rgb else chans.mean(axis=2)
        sigma = self.params.sigma_um / self.mpp
        if sigma > 0.3:
            sig = ndi.gaussian_filter(sig, sigma, truncate=3.0)
        radius = int(round(self.params.background_radius_um / self.mpp))
        if radius > 0:
            size = 2 * radius + 1
            background = ndi.maximum_filter(ndi.minimum_filter(sig, size=size), size=size)
            sig = sig - background
        return sig

    def calibrate(self, samples):
        p = self.params
        samples = [s for s in samples if s.size]
        if not samples:  # no tissue to calibrate on (and so no tile to segment)
            return self.state
        if not self.use_hematoxylin:
            # per-channel scale so several nuclear channels combine on an equal footing
            stack = np.concatenate([s[:, :, self.channels].reshape(-1, len(self.channels)) for s in samples])
            scale = np.percentile(stack.astype(np.float32), 99.5, axis=0)
            self.state["channel_scale"] = [float(max(v, 1e-6)) for v in scale]
        if p.threshold is not None:
            self.state["threshold"] = float(p.threshold)
            return self.state
        from skimage.filters import threshold_otsu

        rng = np.random.default_rng(0)
        values = []
        for s in samples:
            sig = self.signal(s).ravel()
            values.append(sig[rng.integers(0, sig.size, min(sig.size, 200_000))])
        allv = np.concatenate(values) if values else np.zeros(1, np.float32)
        thr = float(threshold_otsu(allv)) if np.ptp(allv) > 0 else float("inf")
        self.state["threshold"] = thr * p.threshold_scale
        return self.state

    # -- segmentation ------------------------------------------------------------------
    @property
    def tile_exact(self) -> bool:  # tests/test_seams.py
        return True

    def segment(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        if "threshold" not in self.state:
            self.calibrate([image])
        p = self.params
        px_area = self.mpp**2
        min_px = max(1, int(p.min_area_um2 / px_area))
        max_px = int(p.max_area_um2 / px_area)
        sig = self.signal(image)
        mask = sig > self.state["threshold"]
        if not mask.any():
            return np.zeros(mask.shape, np.int32)
        mask = ndi.binary_opening(mask, structure=np.ones((3, 3), bool))
        mask = ndi.binary_fill_holes(mask)
        comps, n = ndi.label(mask)
        if n == 0:
            return np.zeros(mask.shape, np.int32)
        sizes = np.bincount(comps.ravel())
        keep = sizes >= min_px
        keep[0] = False
        mask = keep[comps]
        comps = np.where(mask, comps, 0)

        dist = ndi.distance_transform_edt(mask).astype(np.float32)
        dist = ndi.gaussian_filter(dist, 1.0)
        md = max(1, int(round(p.min_distance_um / self.mpp)))
        peaks = peak_local_max(dist, min_distance=md, labels=comps, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        # components without a peak (flat or tiny) get one marker at their deepest point
        has_marker = np.zeros(comps.max() + 1, bool)
        has_marker[comps[peaks[:, 0], peaks[:, 1]]] = True
        missing = np.flatnonzero(~has_marker[1:]) + 1
        missing = missing[sizes[missing] >= min_px] if len(missing) else missing
        if len(missing):
            pos = ndi.maximum_position(dist, comps, missing)
            start = len(peaks) + 1
            for k, (r, c) in enumerate(pos):
                markers[int(r), int(c)] = start + k
        labels = watershed(-dist, markers, mask=mask).astype(np.int32)
        areas = np.bincount(labels.ravel())
        good = (areas >= min_px) & (areas <= max_px)
        good[0] = False
        # relabel 1..n in raster order of first appearance of each kept label
        lut = np.zeros(len(areas), np.int32)
        lut[good] = np.arange(1, int(good.sum()) + 1, dtype=np.int32)
        return lut[labels]
