"""Cellpose as a segmentation backend (``backend: cellpose``), when the ``cellpose`` package is
installed (``pip install "slidecell[cellpose]" "torch==2.13.0"``).

* cellpose 3.x: CPnet models, e.g. ``model: /path/to/cellpose3_weights.pth`` or a built-in name
  such as ``cyto3``/``nuclei`` whose weights are already in ``~/.cellpose/models``
* cellpose ≥ 4: Cellpose-SAM (``model: cpsam``); cellpose 4 cannot load Cellpose 3 weights

The major version installed decides which API is used. Nothing is downloaded by slidecell: a
model name whose weights are missing locally is an error, not a download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from . import BackendParams, Segmenter, register
from .channels import model_input_channels


class CellposeParams(BackendParams):
    #: weights file or a model name present in cellpose's model folder
    model: str = "cyto3"
    #: expected object diameter in µm; None = the model's default (30 px in cellpose 3)
    diameter_um: float | None = Field(None, gt=0)
    flow_threshold: float = Field(0.4, ge=0)
    cellprob_threshold: float = Field(0.0, ge=-10, le=10)
    #: brightfield: segment the grey image with dark objects inverted to bright (nuclei in H&E)
    invert: bool | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1)
    min_area_um2: float = Field(2.0, ge=0)
    #: whole cells: the membrane / cytoplasm marker(s) by name (averaged), segmented together
    #: with the nuclear channel(s) as Cellpose's two-channel input; empty: nuclei only
    cell_channels: list[str] = Field(default_factory=list)
    #: with ``cell_channels``: also segment the nuclei (nuclear channel alone, same model), so
    #: cells get nucleus and cytoplasm compartments (each cell's nucleus = the nuclear objects'
    #: pixels inside it)
    nuclei: bool = True


def cellpose_major() -> int | None:
    try:
        from importlib.metadata import version

        return int(version("cellpose").split(".")[0])
    except Exception:
        return None


def _model_path(name: str) -> str:
    """Resolve a model name to a local file without letting cellpose download anything."""
    p = Path(os.path.expanduser(name))
    if p.is_file():
        return str(p)
    home = Path(os.environ.get("CELLPOSE_LOCAL_MODELS_PATH", Path.home() / ".cellpose" / "models"))
    cands = [home / name, *sorted(home.glob(f"{name}*"))]
    for c in cands:
        if c.is_file():
            return str(c)
    raise ConfigError(f"cellpose model {name!r}: no weights file at {p} nor in {home} "
                      "(slidecell never downloads weights; copy them there first)")


@register
class CellposeSegmenter(Segmenter):
    name = "cellpose"
    Params = CellposeParams

    def __init__(self, params, channel_names, modality, mpp, nuclear_channels=()):
        super().__init__(params, channel_names, modality, mpp, nuclear_channels)
        self.major = cellpose_major()
        if self.major is None:
            raise ConfigError('segmentation backend "cellpose" needs the cellpose package: '
                              'pip install "cellpose>=3.1" "torch==2.13.0"')
        p = self.params
        if p.cell_channels:
            names = list(channel_names)
            missing = [c for c in p.cell_channels if c not in names]
            if missing:
                raise ConfigError(f"segmentation.params.cell_channels: {missing} not among the image's channels {names}")
            self.cell_idx = [names.index(c) for c in p.cell_channels]
            from .channels import nuclear_channel_indices

            self.channels = nuclear_channel_indices(names, nuclear_channels)
            if not self.channels:
                raise ConfigError(f"segmentation.nuclear_channels: no channel looks nuclear in {names}; name the "
                                  "nuclear channel(s) for Cellpose's two-channel whole-cell mode")
            self.brightfield = False
        else:
            self.cell_idx = []
            mode, self.channels = model_input_channels(channel_names, modality, nuclear_channels, "cellpose")
            self.brightfield = mode == "brightfield"
        import torch
        from cellpose import models

        gpu = torch.cuda.is_available() if p.device == "auto" else p.device == "cuda"
        path = _model_path(p.model)
        self.model = models.CellposeModel(gpu=gpu, pretrained_model=path)
        self.min_px = max(1, int(round(p.min_area_um2 / self.mpp**2)))

    @property
    def objects(self) -> str:
        if not self.cell_idx:
            return "nuclei"
        return "cells+nuclei" if self.params.nuclei else "cells"

    def _prepare(self, image: np.ndarray, channels=None) -> np.ndarray:
        # grey (brightfield: cellpose inverts it, dark nuclei → bright) or the nuclear signal
        return np.nan_to_num(image[:, :, channels or self.channels].astype(np.float32)).mean(axis=2)

    def _eval(self, img: np.ndarray, two_channel: bool) -> np.ndarray:
        from .builtin.postprocess import relabel

        p = self.params
        diameter = p.diameter_um / self.mpp if p.diameter_um else None
        invert = False if two_channel else (self.brightfield if p.invert is None else p.invert)
        kwargs = dict(diameter=diameter, flow_threshold=p.flow_threshold,
                      cellprob_threshold=p.cellprob_threshold, batch_size=p.batch_size)
        if self.major < 4:  # cellpose 3: [cytoplasm channel, nuclear channel], 1-based; 0 = grey
            kwargs["channels"] = [1, 2] if two_channel else [0, 0]
            kwargs["invert"] = invert
        else:  # cellpose 4 (Cellpose-SAM): channels as given on the last axis; inversion is a normalisation option
            if two_channel:
                kwargs["channel_axis"] = -1
            if invert:
                kwargs["normalize"] = {"invert": True}
        masks = self.model.eval(img, **kwargs)[0]
        return relabel(np.asarray(masks, np.int32), self.min_px)

    def input_files(self) -> list:
        path = Path(self.params.model).expanduser()
        return [path] if path.is_file() else []  # a built-in name: cellpose's own cached file

    def channels_used(self) -> dict:
        used = super().channels_used()
        if getattr(self, "cell_idx", None):
            used["membrane"] = [self.channel_names[i] for i in self.cell_idx]
        return used

    def segment(self, image: np.ndarray):
        """Nuclei; with ``cell_channels``, cells (or ``(nuclei, cells)`` with ``nuclei``)."""
        empty = np.zeros(image.shape[:2], np.int32)
        if image.shape[0] == 0 or image.shape[1] == 0:
            return (empty, empty) if self.objects == "cells+nuclei" else empty
        nuc = self._prepare(image)
        if not self.cell_idx:
            return empty if np.ptp(nuc) == 0 else self._eval(nuc, False)
        cyto = self._prepare(image, self.cell_idx)
        two = np.stack([cyto, nuc], axis=-1)
        cells = empty if np.ptp(two) == 0 else self._eval(two, True)
        if not self.params.nuclei:
            return cells
        return (empty if np.ptp(nuc) == 0 else self._eval(nuc, False)), cells
