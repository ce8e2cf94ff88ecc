"""The one interface every slide reader implements.

Coordinates: ``x``/``y`` are always level-0 pixel coordinates of the slide (the frame
OpenSlide uses), widths/heights are in pixels of the level or resolution being read.
Arrays are returned as ``(height, width, channels)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MissingPixelSizeError, SlideReadError

#: relative tolerance when matching a pyramid level to a requested resolution
LEVEL_TOLERANCE = 1e-3


#: pixel sizes a microscope or slide scanner gives (µm per pixel at full resolution)
MPP_RANGE = (0.01, 50.0)


def plausible_mpp(value) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and MPP_RANGE[0] <= v <= MPP_RANGE[1]


@dataclass(frozen=True)
class ReaderSpec:
    """Everything needed to open the same slide again in another process or on another machine."""

    reader: str
    path: str
    mpp: float | None = None
    options: dict = field(default_factory=dict)


class SlideReader:
    """Abstract slide reader. Subclasses fill the attributes in ``__init__`` and implement
    :meth:`_read_level`."""

    #: registry name of the reader
    name: str = "base"
    #: how a prefetching pool should parallelize reads: "threads" or "processes"
    parallel: str = "threads"

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    channel_names: tuple[str, ...]
    dtype: np.dtype
    #: "brightfield" (RGB transmitted light) or "fluorescence" (dark background, one channel per marker)
    modality: str
    #: the file says which modality it is (e.g. an NDPI's fluorescence filter record); otherwise
    #: ``info`` and ``run`` decide from a thumbnail (:func:`slidecell.tiling.slide_modality`)
    modality_known: bool = False
    #: (x, y) offset of the region QuPath shows as its origin, in level-0 pixels
    bounds_offset: tuple[int, int] = (0, 0)
    #: per channel, what the file says besides the name: ``metal`` (IMC/MIBI mass tag),
    #: ``fluorophore``, ``label`` (the raw label the name was taken from); empty dicts if nothing
    channel_meta: tuple[dict, ...] = ()
    #: where the channel names were overridden from (a markers.csv / panel.csv), if anywhere
    markers_file: str | None = None
    _mpp: float | None = None
    _mpp_override: float | None = None
    _options: dict

    def _setup(self, path, mpp: float | None, options: dict) -> None:
        """Common constructor part: the path, a user-given pixel size, reader options."""
        self.path = Path(path)
        self._mpp_override = mpp  # checked by open_slide (plausible_mpp)
        self._options = dict(options)

    # -- metadata -------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def mpp_known(self) -> bool:
        return self._mpp_override is not None or (self._mpp is not None and plausible_mpp(self._mpp))

    @property
    def mpp(self) -> float:
        """Level-0 pixel size in µm. Raises when the file does not say (or says something no
        microscope gives, such as a 72 dpi screen placeholder) and none was given."""
        if self._mpp_override is not None:
            return float(self._mpp_override)
        value = self._mpp
        if value is None:
            raise MissingPixelSizeError(
                f"{self.path}: the slide does not record its pixel size; pass it with --mpp "
                "(µm per pixel at full resolution)"
            )
        if not plausible_mpp(value):
            raise MissingPixelSizeError(
                f"{self.path}: the file says {value:.4g} µm per pixel, which no microscope gives (a screen "
                "resolution such as 72 dpi?); pass the real pixel size with --mpp (µm per pixel at full "
                "resolution)")
        return float(value)

    def channel_table(self):
        """One row per channel: ``channel`` (name), ``channel_index`` and whatever
        :attr:`channel_meta` holds (metal, fluorophore, label), for AnnData's ``var``."""
        import pandas as pd

        meta = list(self.channel_meta) or [{} for _ in self.channel_names]
        rows = [{"channel": n, "channel_index": i, **m} for i, (n, m) in enumerate(zip(self.channel_names, meta))]
        return pd.DataFrame(rows)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def spec(self) -> ReaderSpec:
        return ReaderSpec(self.name, str(self.path), self._mpp_override, dict(self._options))

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "reader": self.name,
            "dimensions": list(self.dimensions),
            "levels": [list(d) for d in self.level_dimensions],
            "downsamples": [float(d) for d in self.level_downsamples],
            "mpp": self._mpp_override or self._mpp,
            **({} if self.mpp_known or self._mpp is None else
               {"mpp_warning": "not a microscope pixel size (a screen-resolution placeholder?): pass --mpp"}),
            "channels": list(self.channel_names),
            "channel_meta": [dict(m) for m in self.channel_meta] or None,
            "markers_file": self.markers_file,
            "dtype": str(np.dtype(self.dtype)),
            "modality": self.modality,
            "bounds_offset": list(self.bounds_offset),
        }

    # -- reading --------------------------------------------------------------------
    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        raise NotImplementedError

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Read ``w``×``h`` pixels of ``level`` whose top-left corner is at level-0 ``(x, y)``.

        Parts outside the slide are filled with the background value (white for brightfield,
        zero for fluorescence)."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} does not exist (0..{self.level_count - 1})")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        try:
            out = self._read_level(int(x), int(y), int(w), int(h), level)
        except SlideReadError:
            raise
        except Exception as exc:  # decoder errors, truncated files, ...
            raise SlideReadError(
                f"{self.path}: cannot read region x={x} y={y} {w}x{h} at level {level}: {exc}"
            ) from exc
        return out

    def best_level(self, mpp: float) -> int:
        """The lowest-resolution level that is still at least as fine as ``mpp``."""
        target = mpp / self.mpp
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= target * (1 + LEVEL_TOLERANCE):
                best = level if ds >= self.level_downsamples[best] else best
        return best

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        """Read an output of ``w``×``h`` pixels at ``mpp`` µm/px whose top-left corner is at level-0
        ``(x, y)``: read from the best pyramid level and resample."""
        scale = mpp / self.mpp  # level-0 pixels per output pixel
        level = self.best_level(mpp)
        ds = self.level_downsamples[level]
        rw = max(1, int(round(w * scale / ds)))
        rh = max(1, int(round(h * scale / ds)))
        region = self.read_region(x, y, rw, rh, level)
        if (rw, rh) != (w, h):
            region = resize(region, w, h)
        return region

    def thumbnail(self, mpp: float, block: int = 4096) -> np.ndarray:
        """The whole slide at ``mpp`` µm/px (coarser than the finest level), read block by block
        so that memory stays bounded by the output size even for single-level slides."""
        w0, h0 = self.dimensions
        scale = mpp / self.mpp
        tw, th = max(1, int(math.ceil(w0 / scale))), max(1, int(math.ceil(h0 / scale)))
        level = self.best_level(mpp)
        ds = self.level_downsamples[level]
        # output block size so that one read at `level` stays under `block` pixels a side
        ob = max(1, int(block * ds / scale))
        out = np.empty((th, tw, self.n_channels), dtype=self.dtype)
        for oy in range(0, th, ob):
            for ox in range(0, tw, ob):
                bw, bh = min(ob, tw - ox), min(ob, th - oy)
                out[oy : oy + bh, ox : ox + bw] = self.read(
                    int(round(ox * scale)), int(round(oy * scale)), bw, bh, mpp
                )
        return out

    def background_value(self) -> float:
        return 255.0 if self.modality == "brightfield" else 0.0

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"<{type(self).__name__} {self.path.name} {w}x{h} levels={self.level_count} "
            f"mpp={self._mpp_override or self._mpp} channels={list(self.channel_names)}>"
        )


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resample ``(H, W, C)`` to ``(h, w, C)``: area averaging when shrinking, bilinear when
    enlarging. Keeps the dtype."""
    if img.shape[0] == h and img.shape[1] == w:
        return img
    shrinking = w < img.shape[1] or h < img.shape[0]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    if img.dtype == np.uint8 and img.shape[2] in (3, 4):
        mode = "RGB" if img.shape[2] == 3 else "RGBA"
        return np.asarray(Image.fromarray(img, mode).resize((w, h), method))
    out = np.empty((h, w, img.shape[2]), dtype=img.dtype)
    for c in range(img.shape[2]):
        chan = Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32), "F")
        res = np.asarray(chan.resize((w, h), method))
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            res = np.clip(np.rint(res), info.min, info.max)
        out[:, :, c] = res
    return out


def pad_to(region: np.ndarray, w: int, h: int, ox: int, oy: int, fill: float) -> np.ndarray:
    """Place ``region`` at ``(ox, oy)`` inside a ``h``×``w`` canvas filled with ``fill``."""
    out = np.full((h, w, region.shape[2]), fill, dtype=region.dtype)
    out[oy : oy + region.shape[0], ox : ox + region.shape[1]] = region
    return out


def clip_box(x: int, y: int, w: int, h: int, level_w: int, level_h: int, ds: float):
    """Intersect a level-``ds`` box with origin at level-0 ``(x, y)`` with the level bounds.

    Returns ``(lx, ly, cw, ch, ox, oy)``: origin and size of the part inside the level (level
    pixels) and where it goes in the requested box, or ``None`` when nothing overlaps."""
    lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, level_w), min(ly + h, level_h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0, x0 - lx, y0 - ly


def read_clipped(x: int, y: int, w: int, h: int, level_w: int, level_h: int, ds: float, fill, dtype, channels: int,
                 read) -> np.ndarray:
    """A ``h``×``w`` block of a level (downsample ``ds``) whose origin is level-0 ``(x, y)``: the
    part inside the level from ``read(lx, ly, cw, ch)`` (level pixels, an array of ``ch``×``cw``×C),
    the rest filled with ``fill``: the clip-then-pad step every reader shares."""
    box = clip_box(x, y, w, h, level_w, level_h, ds)
    if box is None:
        return np.full((h, w, channels), fill, dtype=dtype)
    lx, ly, cw, ch, ox, oy = box
    region = read(lx, ly, cw, ch)
    return region if (cw, ch) == (w, h) else pad_to(region, w, h, ox, oy, fill)


def float_or_none(value) -> float | None:
    """A positive finite float from a metadata value, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def dedupe_names(names) -> list[str]:
    """Channel names made unique (``CD3``, ``CD3_1``...); blank ones become ``Channel``."""
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


def channel_indices(wanted, names, key: str) -> list[int]:
    """Indices of the channels named ``wanted`` among the image's ``names``; a missing one is a
    :class:`ConfigError` naming the config ``key`` and the image's channels."""
    from ..errors import ConfigError

    names = list(names)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ConfigError(f"{key}: {missing} not among the image's channels {names}")
    return [names.index(c) for c in wanted]
