"""slidecell: every cell out of a whole-slide or multiplexed image.

The public API (what the command line calls):

- :func:`open_slide` — open a slide or image behind one reader interface
- :func:`load_config` — load and validate a YAML config (path or preset name); :func:`config_from_dict`
- :func:`detect_tissue`, :func:`plan_tiles` — tissue mask and tile plan
- :func:`run` — the whole pipeline, slide in, cell outputs out
"""

__version__ = "0.1.0"

from .config import Config, config_from_dict, load_config  # noqa: E402
from .engine import RunResult, run  # noqa: E402
from .errors import SlidecellError  # noqa: E402
from .io import open_slide  # noqa: E402
from .io.qupath import read_qupath_geojson  # noqa: E402
from .tiling import TileStream, detect_tissue, plan_tiles  # noqa: E402

__all__ = [
    "__version__", "Config", "config_from_dict", "load_config", "RunResult", "run", "SlidecellError", "open_slide",
    "TileStream", "detect_tissue", "plan_tiles", "read_qupath_geojson",
]
