"""The built-in model's shipped weights and their post-processing defaults: what the backend needs
to know before (and without) loading torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = ("nuclei", "nuclei-research")
FORMAT = "slidecell-nuclei-1"


@dataclass
class PostParams:
    """Defaults chosen on the validation images (benchmarks/choose_postprocess.py, RESULTS.md)."""

    fg_threshold: float = 0.5
    seed_threshold: float = 0.75
    min_pixels: int = 4
    seeds: str = "hmax"
    grow: str = "watershed"
    #: nuclei whose mean foreground probability is below this are dropped
    min_confidence: float = 0.0


def weights_path(name_or_path: str | Path) -> Path:
    if str(name_or_path) in SHIPPED:
        return WEIGHTS_DIR / f"{name_or_path}.safetensors"
    return Path(name_or_path)
