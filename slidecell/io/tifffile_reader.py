"""The tifffile reader: OME-TIFF (pyramidal or flat, any axes order), Vectra QPTIFF, Ionpath
MIBItiff, and plain or tiled TIFF that tiffslide does not take."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from ..errors import SlideOpenError
from .base import SlideReader, dedupe_names, float_or_none, read_clipped
from .registry import register_reader
from .tiff import check_tiff_complete, read_tiled_page, tiff_problems, tiled_pages

RGB_NAMES = ("Red", "Green", "Blue")
#: µm per unit of OME's PhysicalSize units
UNIT_TO_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6, "Å": 1e-4,
}


@register_reader("tifffile")
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
        self.channel_names = tuple(dedupe_names(names))
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
        mpp = float_or_none(pixels.get("PhysicalSizeX"))
        if mpp is not None:
            factor = UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
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
        return float_or_none(1e4 * den / num)

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
        return read_clipped(x, y, w, h, lw, lh, ds, bg, getattr(self, "_raw_dtype", self.dtype), self.n_channels,
                            lambda lx, ly, cw, ch: self._read_box(level, lx, ly, cw, ch))

    def _read_box(self, level, lx, ly, cw, ch) -> np.ndarray:
        """Level pixels [ly, ly+ch) × [lx, lx+cw), all channels, as (ch, cw, C)."""
        if self._pages is not None:
            parts = [read_tiled_page(self._fd, page, lx, ly, cw, ch) for page in self._pages[level]]
            data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
            return data[:, :, :3] if self._axes_map["rgb"] and data.shape[2] == 4 else data
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
        return np.ascontiguousarray(data)

    def close(self):
        if self._pages is not None:
            os.close(self._fd)
            self._pages = None
        self._tif.close()
