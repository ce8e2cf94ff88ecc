"""Any exported label model as a backend (``backend: torchscript``), e.g. InstanSeg's ``instanseg.pt``.

The model is a TorchScript file (``torch.jit.save``; loaded with ``torch.jit.load``, which runs
no pickled Python) that maps a float tensor ``B×C×H×W`` to instance labels ``B×K×H×W`` (or
``B×H×W``): 0 = background, one id per object in each of the K output channels. InstanSeg's
models work this way at 0.5 µm/px with each channel scaled by its 0.1–99.9th percentiles, which
are this backend's defaults.

* Input channels are chosen by name (``params.channels``); by default RGB for brightfield, else
  the nuclear channel(s).
* Percentiles are fitted once per slide on the engine's calibration tiles (``normalize:
  percentile``), so every tile is scaled alike; ``unit`` divides by the dtype's maximum.
* Tiles are resampled to ``model_mpp`` and padded (reflect) to a multiple of ``pad_multiple``;
  labels are cropped and resampled back (nearest) and renumbered 1..n.
* ``output: cells+nuclei`` takes nuclei from output channel ``nuclei_index`` and cells from
  ``cells_index`` (InstanSeg's ``*_nuclei_and_cells`` models: 0 and 1); a model with one output
  channel gives ``nuclei`` or ``cells`` from it whatever the index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from ..errors import ConfigError
from ..io.base import channel_indices
from .base import BackendParams, Segmenter, register, window_period
from .channels import model_input_channels
from .models import ModelCache, default_batch_size, pick_device, relabel, resample, resample_factor

_MODULES = ModelCache()


class TorchScriptParams(BackendParams):
    #: the TorchScript file
    path: str = Field(..., min_length=1)
    #: µm/px the model expects (InstanSeg: 0.5); tiles are resampled to it. None: the run's µm/px
    model_mpp: float | None = Field(None, gt=0)
    #: channel names in the model's input order; empty: RGB for brightfield, else the nuclear channel(s)
    channels: list[str] = Field(default_factory=list)
    normalize: Literal["percentile", "unit", "none"] = "percentile"
    percentiles: tuple[float, float] = (0.1, 99.9)
    output: Literal["nuclei", "cells", "cells+nuclei"] = "nuclei"
    nuclei_index: int = Field(0, ge=0)
    cells_index: int = Field(1, ge=0)
    #: input height and width are padded to a multiple of this
    pad_multiple: int = Field(32, ge=1)
    #: objects smaller than this are dropped
    min_area_um2: float = Field(2.0, ge=0)
    batch_size: int | None = Field(None, ge=1, le=256)
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


def load_module(path: Path, device):
    import torch

    def load():
        try:
            module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{path}: not a TorchScript model ({first})") from None
        return module.eval()

    return _MODULES.get((str(path), str(device)), load)


@register
class TorchScriptSegmenter(Segmenter):
    name = "torchscript"
    Params = TorchScriptParams

    def __init__(self, params, channel_names, modality, mpp, nuclear_channels=()):
        super().__init__(params, channel_names, modality, mpp, nuclear_channels)

        p = self.params
        path = Path(p.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"segmentation.params.path: TorchScript model {path} not found")
        self.device = pick_device(p.device)
        self.module = load_module(path, self.device)
        names = list(channel_names)
        if p.channels:
            self.channels = channel_indices(p.channels, names, "segmentation.params.channels")
        else:
            self.channels = model_input_channels(names, modality, nuclear_channels, "torchscript model")[1]
        self.factor = resample_factor(self.mpp, p.model_mpp)
        self.min_px = max(1, int(round(p.min_area_um2 / self.mpp**2)))

    @property
    def objects(self) -> str:
        return self.params.output

    @property
    def batch_size(self) -> int:
        return default_batch_size(self.params.batch_size, self.device)

    @property
    def align(self) -> int:
        return window_period(self.params.pad_multiple, self.factor)

    def input_files(self) -> list:
        return [Path(self.params.path).expanduser()]

    def describe(self) -> dict:
        return {**super().describe(), "device": str(self.device)}

    # -- input scaling, fitted once per slide --------------------------------------------------------
    def calibrate(self, samples):
        p = self.params
        if p.normalize == "percentile":
            ranges = []
            for c in self.channels:
                vals = np.concatenate([np.asarray(s[:, :, c], np.float32).ravel() for s in samples]) if samples else np.zeros(0)
                vals = vals[np.isfinite(vals)]
                lo, hi = np.percentile(vals, p.percentiles) if vals.size else (0.0, 1.0)
                ranges.append([float(lo), float(max(hi, lo + 1e-3))])
            self.state["value_range"] = ranges
        return self.state

    def _input(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != len(self.channel_names):
            raise ValueError(f"tile has {image.shape[2]} channels, the slide has {len(self.channel_names)}")
        p = self.params
        x = image[:, :, self.channels].astype(np.float32)
        if p.normalize == "percentile":
            if "value_range" not in self.state:
                self.calibrate([image])
            r = np.asarray(self.state["value_range"], np.float32)
            x = np.where(np.isfinite(x), x, r[:, 0])  # missing pixels count as background
            x = (x - r[:, 0]) / (r[:, 1] - r[:, 0])
        else:
            if p.normalize == "unit" and image.dtype.kind in "ui":
                x /= float(np.iinfo(image.dtype).max)
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return np.ascontiguousarray(resample(x, self.factor))

    # -- inference ------------------------------------------------------------------------------------
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """Label maps K×h×w at the model's resolution per tile (None for an empty tile); tiles of
        equal size go through the model together."""
        import torch

        p = self.params
        m = p.pad_multiple
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list] = {}
        for i, image in enumerate(images):
            if image.shape[0] and image.shape[1]:
                x = self._input(image)
                h, w = x.shape[:2]
                ph, pw = -h % m, -w % m
                if ph or pw:
                    mode = "reflect" if ph < h and pw < w else "edge"
                    x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)
                groups.setdefault(x.shape, []).append((i, x, h, w))
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p.precision]
        for group in groups.values():
            for k in range(0, len(group), self.batch_size):
                part = group[k:k + self.batch_size]
                batch = torch.from_numpy(np.stack([x for _, x, _, _ in part]).transpose(0, 3, 1, 2).copy())
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                    y = self.module(batch.to(self.device))
                if isinstance(y, (tuple, list)):
                    y = y[0]
                y = y.float().cpu().numpy()
                if y.ndim == 3:
                    y = y[:, None]
                if y.ndim != 4 or y.shape[0] != len(part) or y.shape[2:] != batch.shape[2:]:
                    raise ValueError(f"{p.path}: expected labels of shape {(len(part), 'K', *batch.shape[2:])}, "
                                     f"the model returned {tuple(y.shape)}")
                for (i, _, h, w), lab in zip(part, y):
                    out[i] = np.rint(lab[:, :h, :w]).astype(np.int32)
        return out

    def finish(self, raw: np.ndarray | None, image: np.ndarray):
        return self.finisher()(raw, image)

    def finisher(self) -> "LabelsBack":
        p = self.params
        return LabelsBack(p.output, p.nuclei_index, p.cells_index, self.min_px)

    def segment(self, image: np.ndarray):
        return self.finish(self.predict([image])[0], image)


class LabelsBack:
    """The model's label maps → labels at the tile's resolution (picklable, for post-processing
    processes)."""

    def __init__(self, output: str, nuclei_index: int, cells_index: int, min_px: int):
        self.output, self.nuclei_index, self.cells_index, self.min_px = output, nuclei_index, cells_index, min_px

    def _one(self, raw: np.ndarray | None, index: int, shape) -> np.ndarray:

        if raw is None:
            return np.zeros(shape, np.int32)
        if raw.shape[0] == 1 and self.output != "cells+nuclei":
            index = 0  # a one-output model gives its objects whatever the index
        if index >= raw.shape[0]:
            raise ValueError(f"output channel {index} asked for; the model returned {raw.shape[0]} channel(s)")
        lab = raw[index]
        if lab.shape != tuple(shape):
            lab = cv2.resize(lab, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        return relabel(np.maximum(lab, 0), self.min_px)

    def __call__(self, raw: np.ndarray | None, image: np.ndarray):
        shape = image.shape[:2]
        if self.output == "cells+nuclei":
            return self._one(raw, self.nuclei_index, shape), self._one(raw, self.cells_index, shape)
        return self._one(raw, self.cells_index if self.output == "cells" else self.nuclei_index, shape)
