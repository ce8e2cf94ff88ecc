"""Reading slides: :func:`open_slide` picks the reader for a file (:mod:`.registry`).

Readers register themselves when their module is imported; one line per module here."""

from __future__ import annotations

from .base import MPP_RANGE, ReaderSpec, SlideReader, plausible_mpp, resize  # noqa: F401
from .markers import apply_markers
from .registry import READERS, SUPPORTED, open_slide, open_spec, register_reader
from .tiff import tiff_problems  # noqa: F401

from . import readers  # noqa: E402,F401  (OpenSlide, tiffslide, Pillow)
from . import tifffile_reader  # noqa: E402,F401  (OME-TIFF, QPTIFF, MIBI, plain TIFF)
from . import multiplex  # noqa: E402,F401  (IMC .txt, channel folders)

__all__ = ["open_slide", "open_spec", "apply_markers", "register_reader", "SlideReader", "ReaderSpec", "READERS",
           "SUPPORTED", "resize"]
