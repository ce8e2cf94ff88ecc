"""Bring your own segmentation (``backend: mask``): the objects come from an existing instance
label image of the slide (MCMICRO's ``cell.ome.tif``, steinbock/Mesmer masks, a QuPath label
export), read tile by tile like the slide itself. The engine's ownership, outlines and
measurements apply unchanged, so the same slide measured with its study's masks gives the
same per-cell values as the study's own pipeline (tested against steinbock)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from .base import BackendParams, Segmenter, register


class MaskParams(BackendParams):
    #: the label image: same width and height as the slide's full resolution, 0 = background
    path: str = Field(..., min_length=1)


@register
class MaskSegmenter(Segmenter):
    name = "mask"
    Params = MaskParams

    def __init__(self, params, channel_names, modality, mpp, nuclear_channels=()):
        super().__init__(params, channel_names, modality, mpp, nuclear_channels)
        from ..io import open_slide

        path = Path(self.params.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"segmentation.params.path: label image {path} not found")
        self.path = path
        self.reader = open_slide(path, markers=False)
        if self.reader.n_channels != 1 or not np.issubdtype(self.reader.dtype, np.integer):
            raise ConfigError(f"{path}: a label image must be one channel of integers; it has "
                              f"{self.reader.n_channels} channel(s) of {self.reader.dtype}")
        self.plan = None

    def locate(self, plan, slide_dimensions) -> None:
        """Told by the engine where tiles lie (the plan) and the slide's level-0 size."""
        if tuple(self.reader.dimensions) != tuple(slide_dimensions):
            raise ConfigError(f"{self.path}: the label image is {self.reader.dimensions[0]}x{self.reader.dimensions[1]} "
                              f"but the slide is {slide_dimensions[0]}x{slide_dimensions[1]} at full resolution")
        self.plan = plan

    def predict_tiles(self, tiles, images) -> list[np.ndarray]:
        if self.plan is None:
            raise RuntimeError("mask backend used before locate()")
        return [self._labels(t) for t in tiles]

    def _labels(self, tile) -> np.ndarray:
        """The labels under ``tile`` at the working resolution (nearest neighbour)."""
        scale = self.plan.scale
        x0, y0 = self.plan.level0_origin(tile)
        if abs(scale - 1.0) < 1e-9:
            return self.reader.read_region(x0, y0, tile.w, tile.h, 0)[:, :, 0].astype(np.int32)
        w0, h0 = int(np.ceil(tile.w * scale)) + 1, int(np.ceil(tile.h * scale)) + 1
        region = self.reader.read_region(x0, y0, w0, h0, 0)[:, :, 0]
        ys = np.minimum(((np.arange(tile.h) + 0.5) * scale).astype(np.int64), h0 - 1)
        xs = np.minimum(((np.arange(tile.w) + 0.5) * scale).astype(np.int64), w0 - 1)
        return region[np.ix_(ys, xs)].astype(np.int32)

    @property
    def labels_are_ids(self) -> bool:  # the other tool's cell ids are kept (mask_label)
        return True

    @property
    def tile_exact(self) -> bool:  # tests/test_seams.py
        return True

    def segment(self, image: np.ndarray) -> np.ndarray:
        raise ConfigError("the mask backend segments tiles of a slide (slidecell run), not loose images")

    def input_files(self) -> list:
        return [Path(self.params.path).expanduser()]

    def describe(self):
        return {**super().describe(), "label_image": str(self.path.resolve())}
