"""Annotated nucleus sets on disk, as in ``../shared/data/nuclei``: a folder with ``index.csv`` (one
row per image, ``image_id`` first), ``images/`` and ``labels/`` (uint16 instance TIFFs with the same
ids); or CryoNuSeg-style zips of a tile and its ImageJ ROIs. Read by training and evaluation."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError

MAGNIFICATION_MPP = {"40x": 0.25, "20x": 0.5, "10x": 1.0}


def read_index(folder: Path) -> list[dict]:
    index = folder / "index.csv"
    if not index.is_file():
        raise ConfigError(f"{folder}: no index.csv (expected an annotated nucleus set)")
    with open(index, newline="") as fh:
        return list(csv.DictReader(fh))


def select(rows: list[dict], where: dict[str, str] | None) -> list[dict]:
    """Rows whose columns fully match every regular expression in ``where``."""
    if not where:
        return list(rows)
    for col in where:
        if rows and col not in rows[0]:
            raise ConfigError(f"filter column {col!r} not in index.csv columns {list(rows[0])}")
    pats = {c: re.compile(p) for c, p in where.items()}
    return [r for r in rows if all(p.fullmatch(str(r.get(c, ""))) for c, p in pats.items())]


def row_mpp(row: dict, nominal: float | None) -> float:
    if row.get("mpp"):
        return float(row["mpp"])
    mag = (row.get("magnification") or "").lower()
    if mag in MAGNIFICATION_MPP:
        return MAGNIFICATION_MPP[mag]
    if nominal is None:
        raise ConfigError(f"image {row.get('image_id')}: no mpp or magnification; give the set an mpp")
    return float(nominal)


def row_modality(row: dict) -> str:
    return "fluorescence" if "fluorescence" in (row.get("kind") or "") else "brightfield"


def find_file(folder: Path, image_id: str) -> Path:
    hits = sorted(folder.glob(image_id + ".*"))
    if not hits:
        raise ConfigError(f"{folder}: no file for image {image_id!r}")
    return hits[0]


def load_pair(folder: Path, row: dict) -> tuple[np.ndarray, np.ndarray]:
    import tifffile
    from PIL import Image

    iid = row["image_id"]
    ipath = find_file(folder / "images", iid)
    if ipath.suffix.lower() in (".tif", ".tiff"):
        img = tifffile.imread(ipath)
    else:
        with Image.open(ipath) as im:
            img = np.asarray(im.convert("RGB"))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    lab = tifffile.imread(find_file(folder / "labels", iid)).astype(np.int32)
    if lab.shape != img.shape[:2]:
        raise ConfigError(f"{ipath}: image {img.shape[:2]} and labels {lab.shape} differ in size")
    return img, lab


def resample_pair(img: np.ndarray, lab: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale by ``factor`` (<1 shrinks): area-average the image, nearest-neighbour the labels."""
    if abs(factor - 1) < 1e-3:
        return img, lab
    h, w = lab.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img, size, interpolation=interp)
    lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return img, lab


def load_roi_zip(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CryoNuSeg-style zip: one TIFF tile and ``RoiSet.zip`` (ImageJ polygon ROIs, one per
    nucleus) → (H×W×3 image, instance labels, annotated region). A pixel belongs to a ROI when
    its centre lies inside the polygon (ImageJ's own rule); where ROIs overlap the later one
    wins. The public tiles are annotated only in part, so the region (the convex hull of the
    ROIs) says where predictions are scored (:func:`restrict_to_region`)."""
    import io
    import tempfile
    import zipfile

    import roifile
    import shapely
    import tifffile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            tifs = [n for n in names if n.lower().endswith((".tif", ".tiff"))]
            rois = [n for n in names if n.lower().endswith("roiset.zip")]
            if len(tifs) != 1 or len(rois) != 1:
                raise ConfigError(f"{path}: expected one .tif tile and one RoiSet.zip, found {names}")
            img = tifffile.imread(io.BytesIO(zf.read(tifs[0])))
            with tempfile.TemporaryDirectory() as tmp:
                inner = Path(tmp) / "RoiSet.zip"
                inner.write_bytes(zf.read(rois[0]))
                polys = [r.coordinates() for r in roifile.roiread(inner)]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the ROI zip: {err}") from None
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    h, w = img.shape[:2]
    lab = np.zeros((h, w), np.int32)
    k = 0
    shapes = []
    for xy in polys:
        xy = np.asarray(xy, float).reshape(-1, 2)
        if len(xy) < 3:
            continue
        poly = shapely.Polygon(xy).buffer(0)
        shapes.append(poly)
        x0, y0, x1, y1 = poly.bounds
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = shapely.contains_xy(poly, xx + 0.5, yy + 0.5)
        if inside.any():
            k += 1
            lab[yy[inside], xx[inside]] = k
    from skimage.segmentation import relabel_sequential

    lab = relabel_sequential(lab)[0]  # a ROI drawn twice over the same nucleus counts once
    yy, xx = np.mgrid[0:h, 0:w]
    hull = shapely.convex_hull(shapely.union_all(shapes)) if shapes else shapely.Polygon()
    region = shapely.contains_xy(hull, xx + 0.5, yy + 0.5)
    return img, lab, region
