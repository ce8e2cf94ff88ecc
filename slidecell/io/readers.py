"""Slide readers: OpenSlide, tiffslide, tifffile (OME-TIFF, QPTIFF, plain TIFF) and Pillow.

Which reader opens which file is decided in :func:`slidecell.io.open_slide`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import SlideOpenError
from .base import SlideReader, pad_to

RGB_NAMES = ("Red", "Green", "Blue")

_UNIT_TO_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6, "Å": 1e-4,
}


def _float_or_none(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _clip_box(x: int, y: int, w: int, h: int, level_w: int, level_h: int, ds: float):
    """Intersect a level-``ds`` box with origin at level-0 ``(x, y)`` with the level bounds.

    Returns ``(lx, ly, cw, ch, ox, oy)``: origin and size of the part inside the level (level
    pixels) and where it goes in the requested box, or ``None`` when nothing overlaps."""
    lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, level_w), min(ly + h, level_h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0, x0 - lx, y0 - ly


@contextlib.contextmanager
def tiff_problems():
    """Collect what tifffile logs while opening a file (instead of printing it) so the problems
    can be reported in one error line."""
    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            problems.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler = _Collect(logging.WARNING)
    old_propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield problems
    finally:
        log.removeHandler(handler)
        log.propagate = old_propagate


def check_tiff_complete(path: Path, tif) -> None:
    """Refuse a TIFF that is cut short or damaged: a broken chain of image headers, or image data
    running past the end of the file."""
    size = os.path.getsize(path)
    with tiff_problems() as problems:
        pages = list(tif.pages)  # loads every header; a broken chain is logged by tifffile
    if problems:
        raise SlideOpenError(f"{path}: the file is truncated or corrupt ({problems[0]})")
    for page in pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if len(offsets) and len(counts):
            end = max(int(o) + int(c) for o, c in zip(offsets, counts))
            if end > size:
                raise SlideOpenError(
                    f"{path}: the file is truncated or corrupt: image data ends at byte {end} "
                    f"but the file has {size} bytes"
                )


def tiled_pages(levels) -> list[list] | None:
    """For each pyramid level, its tiled pages (one per channel, or one interleaved RGB page), when
    every level is stored that way; ``None`` otherwise (strips, odd layouts)."""
    out = []
    for lv in levels:
        pages = list(lv.pages)
        if not pages or any(p is None for p in pages):
            return None
        keys = [getattr(p, "keyframe", None) or p for p in pages]  # a TiffFrame decodes with its keyframe
        if not all(k.is_tiled and k.planarconfig == 1 for k in keys):
            return None
        if len(pages) > 1 and any(k.samplesperpixel != 1 for k in keys):
            return None
        out.append(pages)
    return out


def read_tiled_page(fd: int, page, lx: int, ly: int, cw: int, ch: int) -> np.ndarray:
    """Pixels [ly, ly+ch) × [lx, lx+cw) of a tiled TIFF page as (ch, cw, samples), reading and
    decoding only the tiles they touch. Uses ``os.pread`` (no shared file position) and tifffile's
    decoder, which releases the GIL, so reader threads run in parallel; tiffslide's and tifffile's
    zarr paths funnel every read through one thread."""
    key = getattr(page, "keyframe", None) or page  # geometry and decoder; offsets are the page's own
    th, tw = key.tilelength, key.tilewidth
    across = -(-key.imagewidth // tw)
    out = np.empty((ch, cw, key.samplesperpixel), dtype=key.dtype)
    for ty in range(ly // th, (ly + ch - 1) // th + 1):
        for tx in range(lx // tw, (lx + cw - 1) // tw + 1):
            idx = ty * across + tx
            count = page.databytecounts[idx]
            data = os.pread(fd, count, page.dataoffsets[idx]) if count else None
            seg, _, _ = key.decode(data, idx, jpegtables=key.jpegtables)
            seg = seg.reshape(seg.shape[-3:]) if seg is not None else np.zeros((th, tw, out.shape[2]), out.dtype)
            y0, x0 = max(ly, ty * th), max(lx, tx * tw)
            y1, x1 = min(ly + ch, (ty + 1) * th), min(lx + cw, (tx + 1) * tw)
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = seg[y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw]
    return out


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
        self._mpp = _float_or_none(props.get("openslide.mpp-x"))
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
    channels = [i for i, c in enumerate("RGB") if _float_or_none(fields.get(f"ShadingAve{c}_2048")) not in (None, 0.0)]
    if name is None or not channels:
        return None
    return name.group(1), channels


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
        self._mpp = _float_or_none(props.get("tiffslide.mpp-x"))
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
        box = _clip_box(x, y, w, h, lw, lh, ds)
        if box is None:
            return np.full((h, w, 3), self.background_value(), dtype=self.dtype)
        lx, ly, cw, ch, ox, oy = box
        if self._pages is not None:
            region = read_tiled_page(self._fd, self._pages[level], lx, ly, cw, ch)[:, :, :3]
            return region if (cw, ch) == (w, h) else pad_to(region, w, h, ox, oy, self.background_value())
        region = self._slide.read_region(
            (int(round(lx * ds)), int(round(ly * ds))), level, (cw, ch), as_array=True
        )[:, :, :3]
        if (cw, ch) == (w, h):
            return region
        return pad_to(region, w, h, ox, oy, self.background_value())

    def close(self):
        if self._pages is not None:
            os.close(self._fd)
            self._pages = None
        self._slide.close()


class TiffFileReader(SlideReader):
    """OME-TIFF (pyramidal or flat, channel names from OME-XML), Vectra QPTIFF (channel names from
    each page's XML) and plain single- or multi-channel TIFF via tifffile, reading only the tiles
    a region needs: decoded directly (:func:`read_tiled_page`) when every level is stored as tiled
    pages, through tifffile's zarr store otherwise (strips, interleaved multi-channel)."""

    name = "tifffile"
    parallel = "threads"

    def __init__(self, path, mpp: float | None = None, series: int | None = None, **options):
        import tifffile

        self._setup(path, mpp, dict(options, **({"series": series} if series is not None else {})))
        with tiff_problems() as problems:
            try:
                self._tif = tifffile.TiffFile(str(self.path))
                check_tiff_complete(self.path, self._tif)
                all_series = self._tif.series
            except SlideOpenError:
                raise
            except Exception as exc:
                raise SlideOpenError(f"{self.path}: not a readable TIFF: {exc}") from exc
        if not all_series or not len(self._tif.pages):
            detail = f" ({problems[0]})" if problems else ""
            raise SlideOpenError(f"{self.path}: the file is truncated or corrupt: no readable image{detail}")
        if series is None:
            # the main image: the largest series (thumbnails/labels/macros are smaller)
            series = max(range(len(all_series)), key=lambda i: np.prod(all_series[i].shape[-3:]))
        self._series_index = series
        s = all_series[series]
        if self._tif.is_ome:
            self._check_ome_planes(all_series, s, problems)
        self._axes_map = self._map_axes(s.axes, s.shape)
        self.level_dimensions = tuple(self._level_wh(lv) for lv in s.levels)
        w0 = self.level_dimensions[0][0]
        self.level_downsamples = tuple(w0 / w for w, _ in self.level_dimensions)
        self.dtype = np.dtype(s.dtype)
        n_channels = self._axes_map["n_channels"]
        rgb = self._axes_map["rgb"]
        #: 16-bit or float RGB (brightfield saved at another depth): read as 8-bit, this value → 255
        self._rgb_scale: float | None = None
        if rgb and n_channels == 3 and self.dtype != np.uint8:
            self._raw_dtype = self.dtype
            self._rgb_scale = self._rgb_full_scale(s)
            self.dtype = np.dtype(np.uint8)
        self.modality = "brightfield" if rgb and self.dtype == np.uint8 else "fluorescence"
        self.format = "ome" if self._tif.is_ome else "qptiff" if self._tif.is_qpi else "tiff"
        names: list[str] | None = None
        meta: list[dict] | None = None
        self._mpp = None
        if self._tif.is_ome:
            names, meta, self._mpp = self._ome_metadata(series)
        elif self._tif.is_qpi:
            names, meta = self._qpi_names(s)
        elif not rgb and n_channels > 1 and len(s.pages) == n_channels:
            names, meta = self._page_names(s)  # MIBI (JSON per page), imctools / ImageJ PageName
        if self._mpp is None:
            self._mpp = self._resolution_mpp(s.pages[0])
        if names is None or len(names) != n_channels:
            names = list(RGB_NAMES) if rgb and n_channels == 3 else [f"Channel {i}" for i in range(n_channels)]
            meta = None
        self.channel_names = tuple(self._dedupe(names))
        self.channel_meta = tuple(meta) if meta and len(meta) == n_channels else tuple({} for _ in names)
        self._zarr: dict[int, object] = {}
        # one tiled page per channel (or one interleaved RGB page) per level: decode tiles directly
        pages = tiled_pages(s.levels)
        n_pages = 1 if rgb or n_channels == 1 else n_channels
        planar = n_pages == 1 or self._axes_map["c"] < self._axes_map["y"]  # one page per channel
        self._pages = pages if pages and planar and all(len(lv) == n_pages for lv in pages) else None
        if self._pages is not None:
            self._fd = os.open(self.path, os.O_RDONLY)

    # -- metadata helpers -------------------------------------------------------------
    def _map_axes(self, axes: str, shape) -> dict:
        y, x = axes.find("Y"), axes.find("X")
        if y < 0 or x < 0:
            raise SlideOpenError(f"{self.path}: image axes {axes!r} have no Y and X")
        others = [i for i, a in enumerate(axes) if a not in "YX"]
        extra = [i for i in others if shape[i] > 1]
        if len(extra) > 1:
            dims = ", ".join(f"{axes[i]}={shape[i]}" for i in extra)
            raise SlideOpenError(
                f"{self.path}: images with more than one non-spatial axis ({dims}) are not "
                "supported; export one time point / z-plane"
            )
        chan = extra[0] if extra else None
        return {
            "y": y, "x": x, "c": chan, "axes": axes, "ndim": len(axes),
            "n_channels": shape[chan] if chan is not None else 1,
            "rgb": chan is not None and axes[chan] == "S" and shape[chan] in (3, 4),
        }

    def _level_wh(self, level_series) -> tuple[int, int]:
        shape = level_series.shape
        return int(shape[self._axes_map["x"]]), int(shape[self._axes_map["y"]])

    def _check_ome_planes(self, all_series, s, problems) -> None:
        """The OME-XML must describe the planes the file holds: planes it lists but the file lacks
        would be read as zeros (invented markers), planes it leaves out would be dropped."""
        listed = len(s.pages)
        missing = sum(p is None for p in s.pages)
        if missing:
            raise SlideOpenError(f"{self.path}: the OME-XML describes {listed} image planes (channels × z × t) but "
                                 f"the file holds only {listed - missing}; the metadata does not match the pixels")
        # top-level IFDs of the planes' size that no series uses (pyramid levels are smaller or
        # in SubIFDs)
        first = s.pages[0]
        size = (first.imagelength, first.imagewidth) if hasattr(first, "imagelength") else None
        used = {q.offset for ser in all_series for q in ser.pages if q is not None}
        extra = 0
        for i in range(len(self._tif.pages)):
            page = self._tif.pages.get(i, aspage=True)
            if page.offset not in used and (page.imagelength, page.imagewidth) == size:
                extra += 1
        if extra:
            raise SlideOpenError(f"{self.path}: the OME-XML describes {listed} image planes but the file holds "
                                 f"{listed + extra} of that size; the metadata does not match the pixels")

    def _ome_metadata(self, series: int):
        try:
            root = ET.fromstring(self._tif.ome_metadata)
        except ET.ParseError as err:
            import warnings

            warnings.warn(f"{self.path}: the OME-XML cannot be parsed ({err}); channels are named 'Channel i' "
                          "and the pixel size is taken from the TIFF tags", stacklevel=2)
            return None, None, None
        ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        prefix = "ome:" if ns else ""
        images = root.findall(f"{prefix}Image", ns)
        if not images:
            return None, None, None
        image = images[min(series, len(images) - 1)]
        pixels = image.find(f"{prefix}Pixels", ns)
        if pixels is None:
            return None, None, None
        channels = pixels.findall(f"{prefix}Channel", ns)
        names = [c.get("Name") or c.get("ID") or f"Channel {i}" for i, c in enumerate(channels)]
        meta = [{k: v for k, v in (("fluorophore", c.get("Fluor")),
                                   ("emission_nm", c.get("EmissionWavelength"))) if v} for c in channels]
        mpp = _float_or_none(pixels.get("PhysicalSizeX"))
        if mpp is not None:
            factor = _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
            mpp = mpp * factor if factor is not None else None
        return names or None, meta, mpp

    def _qpi_names(self, s):
        """Vectra/PhenoImager: each page's XML has the filter or Opal dye in ``<Name>`` and, in
        unmixed images, the marker in ``<Biomarker>`` (preferred as the channel name)."""
        names, meta = [], []
        for page in s.pages:
            desc = getattr(page, "description", "") or ""
            m = re.search(r"<Name>([^<]*)</Name>", desc)
            if m is None:
                return None, None
            b = re.search(r"<Biomarker>([^<]*)</Biomarker>", desc)
            biomarker = b.group(1).strip() if b else ""
            names.append(biomarker or m.group(1).strip())
            meta.append({"fluorophore": m.group(1).strip()})
        return names, meta

    @staticmethod
    def _page_names(s):
        """One grayscale page per channel (MIBI multipage TIFF, imctools / ImageJ stacks): the
        name from each page's JSON description (MIBI: ``channel.target``, mass in
        ``channel.mass``), else its PageName tag."""
        import json

        names, meta = [], []
        for page in s.pages:
            if not hasattr(page, "tags"):  # a TiffFrame (tifffile's view of pages 2..n of a
                page = page.aspage()        # uniform file, e.g. a real 22-page MIBItiff)
            desc = (getattr(page, "description", "") or "").strip()
            info = {}
            if desc.startswith("{"):
                try:
                    info = json.loads(desc)
                except ValueError:
                    info = {}
            tag = page.tags.get("PageName")
            page_name = str(tag.value).strip() if tag is not None else ""
            target = str(info.get("channel.target") or "").strip() if isinstance(info, dict) else ""
            if not (target or page_name):
                return None, None
            m = {}
            mass = info.get("channel.mass") if isinstance(info, dict) else None
            if mass not in (None, ""):
                m["metal"] = str(mass)
            if page_name and target and page_name != target:
                m["label"] = page_name
            names.append(target or page_name)
            meta.append(m)
        return names, meta

    @staticmethod
    def _resolution_mpp(page) -> float | None:
        """µm/px from the TIFF resolution tags, trusted only in centimetres (inch-based values are
        usually a 72/96 dpi placeholder, as OpenSlide also assumes)."""
        unit = page.tags.get("ResolutionUnit")
        xres = page.tags.get("XResolution")
        if unit is None or xres is None or int(unit.value) != 3:
            return None
        num, den = xres.value
        if not num or not den:
            return None
        return _float_or_none(1e4 * den / num)

    @staticmethod
    def _dedupe(names):
        seen: dict[str, int] = {}
        out = []
        for n in names:
            n = str(n).strip() or "Channel"
            if n in seen:
                seen[n] += 1
                n = f"{n}_{seen[n]}"
            else:
                seen[n] = 0
            out.append(n)
        return out

    # -- reading ------------------------------------------------------------------
    def _array(self, level: int):
        if level not in self._zarr:
            import zarr

            store = self._tif.series[self._series_index].aszarr(level=level)
            self._zarr[level] = zarr.open(store, mode="r")
        return self._zarr[level]

    def _rgb_full_scale(self, s) -> float:
        """The white of a 16-bit/float RGB image: the type's full range (65535, 4095, 1.0), or
        255 when its values stay within 8 bits (an 8-bit image stored in a wider type), judged on the
        centre of the smallest level."""
        import zarr

        level = len(s.levels) - 1
        arr = zarr.open(s.aszarr(level=level), mode="r")
        am = self._axes_map
        index = [slice(None)] * arr.ndim
        for ax in (am["y"], am["x"]):  # a central window of at most 2048 px a side: bounded work on
            n = arr.shape[ax]            # every open, also for a large image without a pyramid
            index[ax] = slice(max(0, n // 2 - 1024), n // 2 + 1024)
        vmax = float(np.nanmax(np.asarray(arr[tuple(index)]))) if arr.size else 0.0
        if self._raw_dtype.kind == "f":
            return 1.0 if vmax <= 1.0 else 255.0 if vmax <= 255 else max(vmax, 1.0)
        for full in (255.0, 4095.0, 65535.0, float(np.iinfo(self._raw_dtype).max)):
            if vmax <= full:
                return full
        return float(np.iinfo(self._raw_dtype).max)

    def _read_level(self, x, y, w, h, level):
        if self._rgb_scale is None:
            return self._read_level_raw(x, y, w, h, level, self.background_value())
        data = self._read_level_raw(x, y, w, h, level, self._rgb_scale)
        data = np.nan_to_num(data.astype(np.float32), nan=self._rgb_scale) * np.float32(255.0 / self._rgb_scale)
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)

    def _read_level_raw(self, x, y, w, h, level, bg):
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        box = _clip_box(x, y, w, h, lw, lh, ds)
        n = self.n_channels
        if box is None:
            return np.full((h, w, n), bg, dtype=getattr(self, "_raw_dtype", self.dtype))
        lx, ly, cw, ch, ox, oy = box
        if self._pages is not None:
            parts = [read_tiled_page(self._fd, page, lx, ly, cw, ch) for page in self._pages[level]]
            data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
            if self._axes_map["rgb"] and data.shape[2] == 4:
                data = data[:, :, :3]
            return data if (cw, ch) == (w, h) else pad_to(data, w, h, ox, oy, bg)
        am = self._axes_map
        index: list = [0] * am["ndim"]
        index[am["y"]] = slice(ly, ly + ch)
        index[am["x"]] = slice(lx, lx + cw)
        if am["c"] is not None:
            index[am["c"]] = slice(None)
        data = np.asarray(self._array(level)[tuple(index)])
        # remaining axes are in file order among (c, y, x): move to (y, x, c)
        kept = sorted(i for i in (am["y"], am["x"], am["c"]) if i is not None)
        order = [kept.index(am["y"]), kept.index(am["x"])]
        if am["c"] is not None:
            order.append(kept.index(am["c"]))
            data = np.transpose(data, order)
        else:
            data = np.transpose(data, order)[:, :, None]
        if am["rgb"] and data.shape[2] == 4:
            data = data[:, :, :3]
        if (cw, ch) == (w, h):
            return np.ascontiguousarray(data)
        return pad_to(data, w, h, ox, oy, bg)

    def close(self):
        if self._pages is not None:
            os.close(self._fd)
            self._pages = None
        self._tif.close()


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
        box = _clip_box(x, y, w, h, W, H, 1.0)
        if box is None:
            return np.full((h, w, self.n_channels), self.background_value(), dtype=self.dtype)
        lx, ly, cw, ch, ox, oy = box
        region = self._image[ly : ly + ch, lx : lx + cw]
        if (cw, ch) == (w, h):
            return region.copy()
        return pad_to(region, w, h, ox, oy, self.background_value())
