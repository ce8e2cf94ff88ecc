"""What a run read, by content: a slide's fingerprint (size and hashed head and tail, or a channel
folder's files) and SHA-256 digests of the other files that decide the cells or an analysis."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .io import SlideReader
    from .segment import Segmenter


def file_digests(files: dict[str, Path]) -> dict[str, str]:
    """SHA-256 of each existing file's whole content (streamed), by key: what a run or an
    analysis read, recorded so that a resume (or a reader of the record) compares contents, not
    paths."""
    import hashlib

    digests = {}
    for key, path in files.items():
        if Path(path).is_file():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            digests[key] = h.hexdigest()
    return digests


#: packages whose versions a run records (those that decide its cells and files)


def slide_fingerprint(path: Path) -> dict:
    """Identity of a slide: size and a hash of the first and last MiB of its file, or of every
    image file of a channel folder (names, sizes, heads and tails, in name order)."""
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        size = 0
        for f in files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            size += _hash_head_tail(f, h)
    else:
        size = _hash_head_tail(path, h)
    return {"name": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


def input_digests(segmenter: Segmenter, reader: SlideReader, annotations=None) -> dict[str, str]:
    """Content hashes of the files besides the slide that decide the cells: the segmentation's
    weights or label image, the markers file naming the channels, the annotations choosing the
    region."""
    files = {f"segmentation:{p}": p for p in map(Path, segmenter.input_files())}
    if reader.markers_file:
        files[f"markers:{reader.markers_file}"] = Path(reader.markers_file)
    if annotations is not None:
        files[f"annotations:{annotations}"] = Path(annotations)
    return file_digests(files)


def _hash_head_tail(path: Path, h) -> int:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return size
