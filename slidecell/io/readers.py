"""Slide readers for RGB whole-slide images: OpenSlide (the vendor formats only it reads), tiffslide
(Aperio SVS and generic pyramidal RGB TIFF) and Pillow (PNG, JPEG). The tifffile reader (OME-TIFF,
QPTIFF, MIBI, plain TIFF) is in :mod:`.tifffile_reader`. Which reader opens which file is decided
in :func:`slidecell.io.open_slide`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import SlideOpenError
from .base import SlideReader, float_or_none, read_clipped
from .registry import register_reader
from .tiff import check_tiff_complete, read_tiled_page, tiff_problems, tiled_pages
from .tifffile_reader import RGB_NAMES

#: formats only OpenSlide reads
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@register_reader("openslide", suffixes=OPENSLIDE_SUFFIXES)
class OpenSlideReader(SlideReader):
    """Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Ventana BIF, generic tiled TIFF via OpenSlide."""

    name = "openslide"
    parallel = "threads"  # OpenSlide releases the GIL while decoding

    def __init__(self, path, mpp: float | None = None, **options):
        import openslide

        self._setup(path, mpp, options)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as exc:
            raise SlideOpenError(f"{self.path}: OpenSlide cannot open it: {exc}") from exc
        props = self._slide.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self._mpp = float_or_none(props.get("openslide.mpp-x"))
        self.channel_names = RGB_NAMES
        self.dtype = np.dtype(np.uint8)
        self.modality = "brightfield"
        #: an RGB fluorescence scan keeps only the channel its filter fills (index into RGB)
        self._keep: list[int] | None = None
        stain = ndpi_fluorescence(props)
        if stain is not None:
            name, channels = stain
            self._keep = channels
            self.channel_names = (name,) if len(channels) == 1 else tuple(f"{name} {RGB_NAMES[c]}" for c in channels)
            self.channel_meta = tuple({"fluorophore": name, "label": RGB_NAMES[c]} for c in channels)
            self.modality, self.modality_known = "fluorescence", True
        self.bounds_offset = (
            int(props.get("openslide.bounds-x", 0) or 0),
            int(props.get("openslide.bounds-y", 0) or 0),
        )
        self.properties = dict(props)

    def _read_level(self, x, y, w, h, level):
        rgba = np.asarray(self._slide.read_region((x, y), level, (w, h)))
        rgb = rgba[:, :, :3] if self._keep is None else rgba[:, :, self._keep]
        alpha = rgba[:, :, 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        # transparent (outside the scanned area): composite over the background
        a = alpha[:, :, None].astype(np.float32) / 255.0
        bg = self.background_value()
        return (rgb * a + bg * (1.0 - a)).round().astype(np.uint8)

    def close(self):
        self._slide.close()


def ndpi_fluorescence(props) -> tuple[str, list[int]] | None:
    """A Hamamatsu fluorescence scan's filter record (the NDPI property "NDP Shading Data",
    ``Name=DAPI 2 (387);...;ShadingAveB_2048=200;...``): the stain's name (its first word,
    ``DAPI``) and the RGB channel(s) the filter fills (non-zero shading average). None for a
    brightfield NDPI or any other file."""
    record = next((f"{k}={v}" for k, v in props.items() if "NDP Shading Data" in k), None)
    if record is None:
        return None
    fields = dict(part.strip().split("=", 1) for part in record.replace("\r", "").split(";") if "=" in part)
    name = re.match(r"\s*([A-Za-z][\w+\-]*)", fields.get("Name", ""))
    channels = [i for i, c in enumerate("RGB") if float_or_none(fields.get(f"ShadingAve{c}_2048")) not in (None, 0.0)]
    if name is None or not channels:
        return None
    return name.group(1), channels


@register_reader("tiffslide")
class TiffSlideReader(SlideReader):
    """Aperio SVS and generic tiled pyramidal TIFF via tiffslide (tifffile + imagecodecs), which
    decodes faster than OpenSlide for these."""

    name = "tiffslide"
    # measured (benchmarks/RESULTS.md): threads deliver raw speed with one worker and scale; processes
    # pay for shipping each tile back (0.38x raw with one worker), so threads are the default
    parallel = "threads"

    def __init__(self, path, mpp: float | None = None, **options):
        import tiffslide

        self._setup(path, mpp, options)
        with tiff_problems():
            try:
                self._slide = tiffslide.TiffSlide(str(self.path))
                check_tiff_complete(self.path, self._slide.ts_tifffile)
            except SlideOpenError:
                raise
            except Exception as exc:
                raise SlideOpenError(f"{self.path}: cannot open it as a TIFF slide: {exc}") from exc
        props = self._slide.properties
        self.vendor = props.get("tiffslide.vendor", "unknown")
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self._mpp = float_or_none(props.get("tiffslide.mpp-x"))
        series = self._slide.ts_tifffile.series[0]
        samples = series.shape[-1] if series.axes.endswith("S") else 1
        if samples not in (3, 4):
            raise SlideOpenError(f"{self.path}: expected an RGB slide, found axes {series.axes}")
        self.channel_names = RGB_NAMES
        self.dtype = np.dtype(series.dtype)
        self.modality = "brightfield"
        self.properties = dict(props)
        # decode the needed tiles ourselves so reader threads run in parallel (read_tiled_page)
        pages = tiled_pages(series.levels) if len(series.levels) == self.level_count else None
        self._pages = [lv[0] for lv in pages] if pages and all(len(lv) == 1 for lv in pages) else None
        if self._pages is not None:
            self._fd = os.open(self.path, os.O_RDONLY)

    def _read_level(self, x, y, w, h, level):
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]

        def read(lx, ly, cw, ch):
            if self._pages is not None:
                return read_tiled_page(self._fd, self._pages[level], lx, ly, cw, ch)[:, :, :3]
            return self._slide.read_region((int(round(lx * ds)), int(round(ly * ds))), level, (cw, ch),
                                           as_array=True)[:, :, :3]

        return read_clipped(x, y, w, h, lw, lh, ds, self.background_value(), self.dtype, 3, read)

    def close(self):
        if self._pages is not None:
            os.close(self._fd)
            self._pages = None
        self._slide.close()


@register_reader("image", suffixes=IMAGE_SUFFIXES)
class ImageReader(SlideReader):
    """PNG, JPEG and other plain images (Pillow), as a single-level slide held in memory."""

    name = "image"
    parallel = "threads"

    def __init__(self, path, mpp: float | None = None, **options):
        from PIL import Image, UnidentifiedImageError

        self._setup(path, mpp, options)
        self._mpp = None  # pixel sizes in PNG/JPEG headers are screen dpi, not microscope µm
        try:
            with Image.open(self.path) as im:
                im.load()
                if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                elif im.mode in ("L", "1"):
                    arr = np.asarray(im.convert("L"))[:, :, None]
                else:  # I;16, I, F
                    arr = np.asarray(im)[:, :, None]
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise SlideOpenError(f"{self.path}: not a readable image: {exc}") from exc
        self._image = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.dtype = arr.dtype
        rgb = arr.shape[2] == 3
        self.channel_names = RGB_NAMES if rgb else ("Channel 0",)
        self.modality = "brightfield" if rgb else "fluorescence"

    def _read_level(self, x, y, w, h, level):
        W, H = self.dimensions
        return read_clipped(x, y, w, h, W, H, 1.0, self.background_value(), self.dtype, self.n_channels,
                            lambda lx, ly, cw, ch: self._image[ly:ly + ch, lx:lx + cw].copy())
