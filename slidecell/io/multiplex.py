"""Multiplexed images beyond (OME-)TIFF: IMC ``.txt`` acquisitions, folders with one file per
channel, and channel names from a ``markers.csv`` (MCMICRO) or ``panel.csv`` (steinbock).

Channels are always named from what the data says (OME-XML, QPTIFF XML, MIBI page JSON, IMC
channel labels, file names) or from a markers file, never guessed from their position.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import SlideOpenError
from .base import SlideReader, dedupe_names, read_clipped
from .markers import read_markers
from .registry import open_slide, register_reader

#: an IMC channel label: ``Target_clone((panel id))Metal``, e.g. ``Cytoker_651((3356))Pr141``
_IMC_LABEL = re.compile(r"^(?P<target>.*?)\(\([^()]*\)\)(?P<metal>[A-Z][a-z]?\d+)$")
#: a bare isotope label like ``107Ag`` or ``Ag107``
_ISOTOPE = re.compile(r"^(\d+[A-Z][a-z]?|[A-Z][a-z]?\d+)(Di)?$")


def imc_channel_name(label: str, metal: str) -> str:
    """The marker name of an IMC channel from its acquisition label: the target part of
    ``Target((id))Metal`` labels, the metal for bare isotope labels or empty ones."""
    label = (label or "").strip()
    m = _IMC_LABEL.match(label)
    if m and m.group("target").strip():
        return m.group("target").strip()
    if not label or _ISOTOPE.match(label):
        return metal
    return label


@register_reader("imc-txt", suffixes=(".txt",))
class IMCTextReader(SlideReader):
    """Imaging mass cytometry ``.txt`` acquisitions (Fluidigm / Standard BioTools), read with
    readimc. One acquisition is small (≤ a few thousand pixels a side) and is held in memory.
    Pixel size: 1 µm (the laser's step)."""

    name = "imc-txt"
    parallel = "threads"

    def __init__(self, path, mpp: float | None = None, **options):
        try:
            from readimc import TXTFile
        except ImportError as exc:  # pragma: no cover - a dependency
            raise SlideOpenError(f"{path}: reading IMC .txt needs the readimc package ({exc})") from exc
        self._setup(path, mpp, options)
        try:
            with TXTFile(self.path) as f:
                data = f.read_acquisition()  # (c, y, x) float32
                metals = list(f.channel_names)
                labels = list(f.channel_labels)
        except Exception as exc:
            raise SlideOpenError(f"{self.path}: not a readable IMC .txt acquisition: {exc}") from exc
        if data.ndim != 3 or data.shape[0] == 0:
            raise SlideOpenError(f"{self.path}: the acquisition holds no channels")
        self._image = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        h, w = self._image.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.dtype = self._image.dtype
        self.modality = "fluorescence"
        self.format = "imc-txt"
        self._mpp = 1.0
        names = [imc_channel_name(lab, met) for lab, met in zip(labels, metals)]

        self.channel_names = tuple(dedupe_names(names))
        self.channel_meta = tuple({"metal": met, "label": lab} for met, lab in zip(metals, labels))

    def _read_level(self, x, y, w, h, level):
        H, W = self._image.shape[:2]
        return read_clipped(x, y, w, h, W, H, 1.0, self.background_value(), self.dtype, self.n_channels,
                            lambda lx, ly, cw, ch: self._image[ly:ly + ch, lx:lx + cw].copy())


CHANNEL_FILE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png")


@register_reader("channel-folder")
class ChannelFolderReader(SlideReader):
    """A folder with one single-channel image per marker (CODEX/PhenoCycler exports, per-channel
    TIFFs): the channel name is the file name without its extension; channels are ordered by a
    ``markers.csv`` in the folder when there is one, else by name. Every file must have the same
    size; each is read (tiles only) through its own reader."""

    name = "channel-folder"
    parallel = "threads"

    def __init__(self, path, mpp: float | None = None, **options):

        self._setup(path, mpp, options)
        files = sorted(p for p in self.path.iterdir() if p.is_file() and p.name.lower().endswith(CHANNEL_FILE_SUFFIXES)
                       and not p.name.startswith("."))
        if not files:
            raise SlideOpenError(f"{self.path}: the folder holds no channel images ({', '.join(CHANNEL_FILE_SUFFIXES)})")
        stems = [_stem(p) for p in files]
        markers = self.path / "markers.csv"
        if markers.is_file():  # its marker names, when they are the file names, give the order
            kind, rows = read_markers(markers)
            order = [r["marker_name" if kind == "mcmicro" else "name"] for r in rows]
            if sorted(order) == sorted(stems):
                files = [files[stems.index(m)] for m in order]
                stems = order
        self._readers = []
        try:
            for f in files:
                r = open_slide(f, mpp=mpp)
                if r.n_channels != 1:
                    raise SlideOpenError(f"{f}: a channel folder needs single-channel images; this one has "
                                         f"{r.n_channels} ({list(r.channel_names)})")
                self._readers.append(r)
        except BaseException:
            self.close()
            raise
        first = self._readers[0]
        for f, r in zip(files, self._readers):
            if r.level_dimensions != first.level_dimensions or r.dtype != first.dtype:
                self.close()
                raise SlideOpenError(f"{f}: size/levels {r.level_dimensions} dtype {r.dtype} differ from "
                                     f"{files[0].name} ({first.level_dimensions}, {first.dtype})")
        self.level_dimensions = first.level_dimensions
        self.level_downsamples = first.level_downsamples
        self.dtype = first.dtype
        self.modality = "fluorescence"
        self.format = "channel-folder"
        self._mpp = next((r._mpp for r in self._readers if r._mpp), None)
        self.channel_names = tuple(stems)
        self.channel_meta = tuple({"file": f.name} for f in files)

    def _read_level(self, x, y, w, h, level):
        parts = [r._read_level(x, y, w, h, level) for r in self._readers]
        return np.concatenate(parts, axis=2)

    def close(self):
        for r in getattr(self, "_readers", []):
            r.close()
        self._readers = []


def _stem(p: Path) -> str:
    name = p.name
    for suf in CHANNEL_FILE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


__all__ = ["IMCTextReader", "ChannelFolderReader", "imc_channel_name"]
