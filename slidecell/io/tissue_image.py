"""The tissue under the cells, for scverse plots: ``uns['spatial'][library_id]`` as squidpy and
scanpy read it (Visium's layout), made from the slide's pyramid.

``images``: ``hires`` (longest side about 2,000 px) and ``lowres`` (about 600 px), RGB uint8 (a
brightfield slide as it is; fluorescence as the grey of its nuclear channels, each stretched
between its 1st and 99.8th percentiles). ``scalefactors``: ``tissue_hires_scalef`` and
``tissue_lowres_scalef`` map ``obsm['spatial']`` (µm from the slide's level-0 origin) to the
images' pixels; ``spot_diameter_fullres`` is 10 µm (a cell). The library is the slide
(``obs['slide_id']``), so ``sq.pl.spatial_scatter(adata, color=...)`` draws the cells on the tissue
with no other argument, and a cohort keeps one image per slide (``library_key='slide_id'``).
"""

from __future__ import annotations

import numpy as np

#: longest side of the two images, in pixels
HIRES, LOWRES = 2000, 600


def _as_rgb(image: np.ndarray, modality: str, channels: list[int]) -> np.ndarray:
    if modality == "brightfield" and image.shape[2] >= 3:
        rgb = image[:, :, :3]
        if rgb.dtype != np.uint8:  # deep RGB: scaled by its brightest
            rgb = np.clip(rgb / max(float(np.percentile(rgb, 99.9)), 1e-9) * 255, 0, 255)
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    planes = image[:, :, channels or [0]].astype(np.float32)
    grey = np.zeros(image.shape[:2], np.float32)
    for k in range(planes.shape[2]):
        p = planes[:, :, k]
        lo, hi = np.percentile(p, [1, 99.8])
        grey = np.maximum(grey, np.clip((p - lo) / max(hi - lo, 1e-9), 0, 1))
    return np.repeat((grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def tissue_images(reader, modality: str, channels: list[int] | None = None) -> dict:
    """``{"images": {hires, lowres}, "scalefactors": {...}, "metadata": {...}}`` for one slide
    (``channels``: the nuclear channels of a fluorescence image)."""
    import math

    from .base import resize

    w0, h0 = reader.dimensions
    side = max(w0, h0)
    hi_mpp, lo_mpp = (reader.mpp * max(side / target, 1.0) for target in (HIRES, LOWRES))
    hires = _as_rgb(reader.thumbnail(hi_mpp), modality, list(channels or []))  # the slide read once
    lo_scale = lo_mpp / reader.mpp
    lowres = resize(hires, max(1, math.ceil(w0 / lo_scale)), max(1, math.ceil(h0 / lo_scale)))
    images = {"hires": hires, "lowres": lowres}
    scales = {"tissue_hires_scalef": 1.0 / hi_mpp, "tissue_lowres_scalef": 1.0 / lo_mpp}  # image pixels per µm
    return {"images": images,
            "scalefactors": {**scales, "spot_diameter_fullres": 10.0},
            "metadata": {"coordinates": "obsm['spatial'] in µm from the slide's level-0 origin",
                         "slide_mpp": float(reader.mpp), "modality": modality}}


def from_run(record):
    """:func:`tissue_images` for a finished run (its :class:`~slidecell.records.RunRecord`), the
    slide opened again; None when the slide is no longer where the run read it."""
    from pathlib import Path

    if not record.slide or not Path(record.slide).exists():
        return None
    with record.open_slide() as reader:
        return tissue_images(reader, record.modality or reader.modality, nuclear_channels(record, reader.channel_names))


def nuclear_channels(record, names) -> list[int]:
    """Indices of the channels the segmentation used (run.json ``segmentation.channels_used``)."""
    used = record.segmentation.get("channels_used") or {}
    wanted = [n for v in used.values() for n in (v if isinstance(v, list) else [v])]
    names = list(names)
    return [names.index(n) for n in dict.fromkeys(wanted) if n in names]


__all__ = ["tissue_images", "from_run", "nuclear_channels", "HIRES", "LOWRES"]
