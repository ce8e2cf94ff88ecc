"""slidecell: every cell out of a whole-slide or multiplexed image.

The public API (what the command line calls):

- :func:`open_slide` — open a slide or image behind one reader interface
- :func:`load_config` — load and validate a YAML config (path or preset name); :func:`config_from_dict`
- :func:`detect_tissue`, :func:`plan_tiles` — tissue mask and tile plan
- :func:`run` — the whole pipeline, slide in, cell outputs out
"""

__version__ = "0.1.0"

# imported on first use, so that `slidecell --help` and light tools do not pay for torch
_API = {
    "Config": ".config", "config_from_dict": ".config", "load_config": ".config",
    "RunResult": ".engine", "run": ".engine", "SlidecellError": ".errors", "open_slide": ".io",
    "read_qupath_geojson": ".io.qupath", "TileStream": ".tiling", "detect_tissue": ".tiling", "plan_tiles": ".tiling",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slidecell' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
