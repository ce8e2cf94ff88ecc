"""Shared fixtures: the real data in ../shared/data (tests skip when it is absent) and writers of
synthetic pyramids with tifffile."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SLIDECELL_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED / "slides"
CMU1 = SLIDES / "cmu-1-small-region" / "CMU-1-Small-Region.svs"
NDPI = SLIDES / "ndpi-fluorescence" / "test3-DAPI-2-(387).ndpi"
QPTIFF = SLIDES / "pathml-testdata" / "small_vectra.qptiff"
GENERIC_TIFF = SLIDES / "pathml-testdata" / "small_HE_levels.tiff"
SMALLTIF = SLIDES / "pathml-testdata" / "smalltif.tif"
STARDIST = SHARED / "nuclei" / "stardist-demo"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def write_ome_pyramid(path, data_cyx: np.ndarray, names, mpp: float, levels: int = 3, tile: int = 128,
                      compression: str = "zlib") -> list[np.ndarray]:
    """Pyramidal OME-TIFF (sub-IFDs) with named channels; returns the arrays of each level."""
    pyramid = [data_cyx]
    for _ in range(1, levels):
        prev = pyramid[-1]
        h, w = prev.shape[1] // 2 * 2, prev.shape[2] // 2 * 2
        pyramid.append(prev[:, :h:2, :w:2].copy())
    meta = {"axes": "CYX", "Channel": {"Name": list(names)}, "PhysicalSizeX": mpp,
            "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(pyramid[0], subifds=levels - 1, tile=(tile, tile), compression=compression, metadata=meta)
        for lv in pyramid[1:]:
            tif.write(lv, subfiletype=1, tile=(tile, tile), compression=compression)
    return pyramid


def write_rgb_pyramid(path, rgb: np.ndarray, mpp: float | None, levels: int = 3, tile: int = 256,
                      compression: str = "jpeg") -> list[np.ndarray]:
    """Generic tiled pyramidal RGB TIFF (one IFD per level, as OpenSlide's generic-tiff expects)."""
    pyramid = [rgb]
    for _ in range(1, levels):
        prev = pyramid[-1]
        pyramid.append(prev[::2, ::2].copy())
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, lv in enumerate(pyramid):
            kw = {"compressionargs": {"level": 90}} if compression == "jpeg" else {}
            tif.write(lv, tile=(tile, tile), compression=compression, photometric="rgb",
                      subfiletype=1 if i else 0, **res, **kw)
    return pyramid


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
