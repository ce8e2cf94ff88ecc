"""TIFF helpers shared by the TIFF readers: problems tifffile logs while opening a file, truncated
files, and tiled pages decoded directly with ``os.pread`` (reader threads in parallel)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import SlideOpenError


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
