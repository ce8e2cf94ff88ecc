"""Which reader opens which file: the registry of slide readers and :func:`open_slide`.

A reader is a :class:`~slidecell.io.base.SlideReader` subclass registered by name with
:func:`register_reader`, with the file extensions it claims; a folder is read as channel files,
TIFF files by tiffslide or tifffile depending on what they hold. ``reader.backend`` in the config
forces one by name."""

from __future__ import annotations

from pathlib import Path

from ..errors import SlideOpenError
from .base import MPP_RANGE, ReaderSpec, SlideReader, plausible_mpp
from .markers import MARKERS_NAME, apply_markers
from .tiff import tiff_problems

#: readers by name (``reader.backend``)
READERS: dict[str, type[SlideReader]] = {}
#: file extensions (lower case, with the dot) → the reader that claims them
SUFFIXES: dict[str, str] = {}


def register_reader(name: str, suffixes=()):
    """Class decorator: register a :class:`SlideReader` under ``name``, opening files whose
    extension is one of ``suffixes`` (e.g. ``(".xyz",)``)."""
    def add(cls):
        cls.name = name  # the name a worker process reopens it by (ReaderSpec)
        READERS[name] = cls
        for s in suffixes:
            SUFFIXES[s.lower()] = name
        return cls
    return add


#: TIFF files: tiffslide or tifffile, chosen by what the file holds (:func:`_open_tiff`)
TIFF_SUFFIXES = {".svs", ".tif", ".tiff", ".qptiff", ".btf", ".tf2", ".tf8"}

SUPPORTED = (
    "Aperio SVS, Hamamatsu NDPI, MIRAX MRXS, Leica SCN, Ventana BIF, generic tiled TIFF, "
    "OME-TIFF, Vectra QPTIFF, MIBI multipage TIFF, IMC .txt, plain TIFF, PNG, JPEG, "
    "a folder of single-channel images"
)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff", ".ome.btf")):
        return ".ome.tif"
    return path.suffix.lower()


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def open_slide(path, mpp: float | None = None, reader: str = "auto", markers=None, **options) -> SlideReader:
    """Open a slide or image and return a :class:`SlideReader`.

    ``mpp`` overrides (or supplies) the level-0 pixel size in µm. ``reader`` forces one of
    :data:`READERS`; ``"auto"`` chooses by format: tiffslide for SVS and generic pyramidal TIFF
    (faster decoding), OpenSlide for the vendor formats only it reads, tifffile for OME-TIFF,
    QPTIFF, MIBI and plain TIFF, readimc for IMC ``.txt``, Pillow for PNG/JPEG; a folder is read
    as one single-channel image per marker.

    ``markers``: a ``markers.csv`` (MCMICRO) or ``panel.csv`` (steinbock) that renames the
    channels; ``None`` uses a ``markers.csv`` beside a multi-channel image (or inside a channel
    folder) if there is one; ``False`` never renames."""
    r = _open(Path(path), mpp, reader, **options)
    try:
        if markers is None and r.n_channels > 1 and r.modality == "fluorescence":
            beside = (r.path if r.path.is_dir() else r.path.parent) / MARKERS_NAME
            markers = beside if beside.is_file() else None
        if markers:
            apply_markers(r, markers)
    except BaseException:
        r.close()
        raise
    return r


def _open(path: Path, mpp, reader: str, **options) -> SlideReader:
    from ..plugins import load_plugins

    load_plugins()
    path = Path(path)
    if mpp is not None and not plausible_mpp(mpp):
        raise SlideOpenError(f"{path}: --mpp {mpp}: not a microscope pixel size (expected {MPP_RANGE[0]} to "
                             f"{MPP_RANGE[1]} µm per pixel at full resolution)")
    if not path.exists():
        raise SlideOpenError(f"{path}: file not found")
    if path.is_dir():
        if reader in ("auto", "channel-folder"):
            return READERS["channel-folder"](path, mpp=mpp, **options)
        raise SlideOpenError(f"{path}: is a directory, not a slide file (supported: {SUPPORTED})")
    if path.stat().st_size == 0:
        raise SlideOpenError(f"{path}: the file is empty")
    if reader != "auto":
        if reader not in READERS:
            raise SlideOpenError(f"unknown reader {reader!r}; choose one of {sorted(READERS)}")
        return READERS[reader](path, mpp=mpp, **options)

    suffix = _suffix(path)
    if suffix in SUFFIXES:  # a format its reader claims by extension
        return READERS[SUFFIXES[suffix]](path, mpp=mpp, **options)
    if suffix in TIFF_SUFFIXES or suffix == ".ome.tif":
        magic = _magic(path)
        if magic[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            raise SlideOpenError(f"{path}: not a TIFF file (bad header); supported: {SUPPORTED}")
        return _open_tiff(path, mpp, **options)
    raise SlideOpenError(f"{path}: unsupported format {path.suffix or '(no extension)'!r}; supported: {SUPPORTED}")


def _open_tiff(path: Path, mpp, **options) -> SlideReader:
    import tifffile

    with tiff_problems() as problems:
        try:
            with tifffile.TiffFile(str(path)) as tif:
                if not len(tif.pages) or not tif.series:
                    detail = f" ({problems[0]})" if problems else ""
                    raise SlideOpenError(f"{path}: the file is truncated or corrupt: no readable image{detail}")
                multichannel = tif.is_ome or tif.is_qpi
                tiled_rgb = False
                if not multichannel:
                    s = tif.series[0]
                    # 8-bit only: tifffile's reader scales 16-bit/float RGB to 8 bits
                    tiled_rgb = s.axes.endswith("S") and s.shape[-1] in (3, 4) and tif.pages[0].is_tiled \
                        and s.dtype == "uint8"
        except SlideOpenError:
            raise
        except Exception as exc:
            raise SlideOpenError(f"{path}: not a readable TIFF: {exc}") from exc
    if tiled_rgb:
        # Aperio / generic pyramidal RGB: tiffslide decodes faster than OpenSlide
        return READERS["tiffslide"](path, mpp=mpp, **options)
    return READERS["tifffile"](path, mpp=mpp, **options)


def open_spec(spec: ReaderSpec) -> SlideReader:
    """Re-open a slide from :meth:`SlideReader.spec` (used by worker processes, where a plug-in's
    reader is registered by loading the plug-ins first)."""
    from ..plugins import load_plugins

    load_plugins()
    return READERS[spec.reader](spec.path, mpp=spec.mpp, **spec.options)
