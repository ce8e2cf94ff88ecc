"""Cellpose as a segmentation backend (``backend: cellpose``), when the ``cellpose`` package is
installed (``pip install "slidecell[cellpose]" "torch==2.13.0"``).

* cellpose 3.x: CPnet models, e.g. ``model: /path/to/cellpose3_weights.pth`` or a built-in name
  such as ``cyto3``/``nuclei`` whose weights are already in ``~/.cellpose/models``
* cellpose ≥ 4: Cellpose-SAM (``model: cpsam``); cellpose 4 cannot load Cellpose 3 weights

Tile invariance: by default (``normalize: slide``) the input planes are scaled by percentiles of
the whole slide, fitted once on the engine's calibration tiles (and optionally equalised by the
slide's histogram), so neighbouring tiles see the same values where they overlap; cellpose's own
per-tile scaling (``normalize: tile``) makes them disagree near seams. And (``blocks: slide``)
the network runs on blocks anchored to the slide (:mod:`slidecell.segment.grid`), not on blocks
cellpose places by each window's size, with the context that needs (:attr:`context`): a cell
then comes out the same in every tile that sees it. Brightfield input is the haematoxylin
optical density by default.

The major version installed decides which API is used. Nothing is downloaded by slidecell: a
model name whose weights are missing locally is an error, not a download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import ConfigError
from ..io.base import channel_indices
from .base import BackendParams, Segmenter, register
from .channels import channel_scales, haematoxylin, model_input_channels, scaled_mean, smooth
from .models import relabel


class CellposeParams(BackendParams):
    #: weights file or a model name present in cellpose's model folder
    model: str = "cyto3"
    #: expected object diameter in µm; None = the model's default (30 px in cellpose 3)
    diameter_um: float | None = Field(None, gt=0)
    #: defaults chosen on real IMC whole cells (benchmarks/choose_cellpose.py; cellpose's own
    #: 0.4 rejects many good cells on tissue; flow 2 was level, 0.007 F1 higher) and checked on the
    #: MIBI Point14 field of view
    flow_threshold: float = Field(1.0, ge=0)
    cellprob_threshold: float = Field(0.0, ge=-10, le=10)
    #: brightfield input: the haematoxylin optical density (colour deconvolution; nuclei bright)
    #: or the grey image (inverted, see ``invert``)
    brightfield_input: Literal["haematoxylin", "grey"] = "haematoxylin"
    #: brightfield grey input: invert it (dark nuclei → bright); None = yes for brightfield
    invert: bool | None = None
    #: input scaling: ``slide`` maps the ``percentiles`` of the slide (fitted once, on the
    #: engine's calibration tiles) to 0–1, so every tile is scaled alike and neighbouring tiles
    #: agree in their shared margin; ``tile`` leaves it to cellpose, which scales each tile by
    #: its own percentiles (tiles then disagree near seams)
    normalize: Literal["slide", "tile"] = "slide"
    #: where the network's blocks lie: ``slide``, on a grid anchored to the slide (every tile
    #: sees a pixel in the same block; the plan reads one block of context around each core:
    #: tile-exact); ``cellpose``, placed by cellpose for each window (as ``model.eval`` does)
    blocks: Literal["slide", "cellpose"] = "slide"
    percentiles: tuple[float, float] = (1.0, 99.0)
    #: contrast equalisation by the slide's histogram (a look-up table fitted on the calibration
    #: tiles, the same for every tile); needs ``normalize: slide``
    equalize: bool = False
    #: Gaussian smoothing of the input, sigma in µm (0: none); None: 1 µm for fluorescence /
    #: mass-cytometry counts (shot noise), none for brightfield
    smooth_um: float | None = Field(None, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: cellpose >= 4 (Cellpose-SAM) network precision: ``auto`` is bf16 (cellpose 4's own
    #: default) on a GPU or on a CPU whose oneDNN supports bf16 (AVX-512 and later), fp32 on any
    #: other CPU, where torch emulates bf16 far slower (7× on AVX2: benchmarks/RESULTS.md);
    #: cellpose 3 is fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1)
    #: smallest object kept (µm²); None: for whole cells (``cell_channels``) 30 % of the disc of
    #: ``diameter_um`` (chosen on the IMC crops, benchmarks/choose_cellpose.py; SOPA keeps cells
    #: from 32 %), else 2 µm²
    min_area_um2: float | None = Field(None, ge=0)
    #: whole cells: the membrane / cytoplasm marker(s) by name, segmented together with the
    #: nuclear channel(s) as Cellpose's two-channel input; several are averaged, each divided by
    #: its slide-level 99th percentile (so a marker counted on a larger scale does not drown the
    #: others); ``auto``: every channel named like a membrane marker
    #: (slidecell.segment.channels.MEMBRANE_NAME); empty: nuclei only
    cell_channels: list[str] | Literal["auto"] = Field(default_factory=list)
    #: with ``cell_channels``: also segment the nuclei (nuclear channel alone, same model), so
    #: cells get nucleus and cytoplasm compartments (each cell's nucleus = the nuclear objects'
    #: pixels inside it)
    nuclei: bool = True

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles {list(self.percentiles)}: need 0 <= low < high <= 100")
        if self.equalize and self.normalize != "slide":
            raise ValueError("equalize needs normalize: slide (a per-tile equalisation would differ between tiles)")
        if self.blocks == "slide" and self.normalize != "slide":
            raise ValueError("blocks: slide needs normalize: slide (per-tile scaling differs between tiles anyway); "
                             "set blocks: cellpose")
        return self


#: values sampled from the calibration tiles per input plane (enough for stable percentiles)
_CALIBRATION_VALUES = 2_000_000
#: bins of the equalisation look-up table
_EQ_BINS = 256


def cellpose_major() -> int | None:
    try:
        from importlib.metadata import version

        return int(version("cellpose").split(".")[0])
    except Exception:
        return None


def use_bfloat16(precision: str, gpu: bool) -> bool:
    """Whether Cellpose-SAM runs in bf16: asked for, or ``auto`` on a GPU or on a CPU whose
    oneDNN supports bf16 (elsewhere torch emulates it, many times slower than fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if gpu:
        return True
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
            from .channels import membrane_channel_indices, nuclear_channel_indices

            key = "segmentation.params.cell_channels"
            self.cell_idx = membrane_channel_indices(names, [], key) if p.cell_channels == "auto" else \
                channel_indices(p.cell_channels, names, key)

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
        kwargs = {}
        if self.major >= 4:
            kwargs["use_bfloat16"] = use_bfloat16(p.precision, gpu)
        elif p.precision == "bf16":
            raise ConfigError("segmentation.params.precision: bf16 needs cellpose >= 4 (cellpose 3 runs fp32)")
        self.model = models.CellposeModel(gpu=gpu, pretrained_model=path, **kwargs)
        min_um2 = p.min_area_um2
        if min_um2 is None:
            min_um2 = 0.3 * np.pi * (p.diameter_um / 2) ** 2 if p.diameter_um and p.cell_channels else 2.0
        self.min_px = max(1, int(round(min_um2 / self.mpp**2)))

    @property
    def objects(self) -> str:
        if not self.cell_idx:
            return "nuclei"
        return "cells+nuclei" if self.params.nuclei else "cells"

    # -- input planes, scaled alike on every tile ------------------------------------------------------
    def _plane(self, image: np.ndarray, role: str) -> np.ndarray:
        """One input plane (float32): ``nuclear`` (haematoxylin, grey or the nuclear channels'
        mean) or ``membrane`` (the ``cell_channels``' mean), before scaling."""
        if role == "membrane":
            scales = self.state.get("membrane_scales") or channel_scales([image], self.cell_idx)  # uncalibrated: its own
            return np.nan_to_num(scaled_mean(image, self.cell_idx, scales))
        if self.brightfield and self.params.brightfield_input == "haematoxylin":
            return haematoxylin(np.nan_to_num(image[:, :, self.channels]))
        return np.nan_to_num(image[:, :, self.channels].astype(np.float32)).mean(axis=2)

    @property
    def _invert(self) -> bool:
        """Dark objects made bright: the grey brightfield input (haematoxylin is bright already)."""
        if self.cell_idx or not self.brightfield or self.params.brightfield_input != "grey":
            return False
        return True if self.params.invert is None else self.params.invert

    def _roles(self) -> list[str]:
        return ["nuclear", "membrane"] if self.cell_idx else ["nuclear"]

    def _fit(self, planes: list[np.ndarray]) -> dict:
        """Percentile range (and equalisation table) of one plane's values over sample tiles."""
        p = self.params
        vals = np.concatenate([q.ravel() for q in planes]) if planes else np.zeros(0, np.float32)
        vals = vals[np.isfinite(vals)]
        if vals.size > _CALIBRATION_VALUES:  # a fixed, evenly spaced subsample: deterministic
            vals = vals[:: int(np.ceil(vals.size / _CALIBRATION_VALUES))]
        lo, hi = (np.percentile(vals, p.percentiles) if vals.size else (0.0, 1.0))
        fit = {"range": [float(lo), float(max(hi, lo + 1e-6))]}
        if p.equalize:
            x = np.clip((vals - fit["range"][0]) / (fit["range"][1] - fit["range"][0]), 0, 1)
            hist = np.histogram(x, _EQ_BINS, (0.0, 1.0))[0].astype(np.float64)
            cdf = np.concatenate([[0.0], np.cumsum(hist)]) / max(hist.sum(), 1.0)
            fit["cdf"] = [round(float(c), 6) for c in cdf]
        return fit

    def calibrate(self, samples):
        """Whole cells: each membrane channel's slide-level scale; ``normalize: slide``: each input
        plane's percentiles (and equalisation table); over the slide's calibration tiles, recorded
        in run.json and reused on resume."""
        if self.cell_idx and samples:
            self.state["membrane_scales"] = channel_scales(samples, self.cell_idx)
        if self.params.normalize == "slide" and samples:
            self.state["planes"] = {r: self._fit([self._plane(s, r) for s in samples]) for r in self._roles()}
        return self.state

    def _scaled(self, image: np.ndarray, role: str) -> np.ndarray:
        x = self._plane(image, role)
        if self.params.normalize == "slide":
            fit = self.state.get("planes", {}).get(role) or self._fit([x])  # uncalibrated: this image's own
            lo, hi = fit["range"]
            x = (x - lo) / (hi - lo)
            if "cdf" in fit:
                x = np.interp(np.clip(x, 0, 1), np.linspace(0, 1, _EQ_BINS + 1), fit["cdf"]).astype(np.float32)
            if self._invert:
                x = 1 - x
        sigma_um = self.params.smooth_um
        if sigma_um is None:
            sigma_um = 0.0 if self.brightfield else 1.0
        return smooth(x, sigma_um, self.mpp).astype(np.float32)

    # -- the network ---------------------------------------------------------------------------------
    @property
    def _diameter_px(self) -> float | None:
        return self.params.diameter_um / self.mpp if self.params.diameter_um else None

    @property
    def _scale(self) -> float:
        """Network pixels per working pixel: cellpose's ``rescale`` for the diameter."""
        d = self._diameter_px
        if self.major < 4:
            return float(self.model.diam_mean / (d if d else self.model.diam_labels))
        return 30.0 / d if d else 1.0

    @property
    def _block(self) -> int:
        if self.major < 4:
            return 224
        return 256 if getattr(self.model, "backbone", "sam_vitl") == "sam_vitl" else 384

    @property
    def context(self) -> int:
        """``blocks: slide``: one network block plus two object diameters (working px)."""
        if self.params.blocks != "slide":
            return 0
        from .grid import context_px

        return context_px(self._block, self._scale, self._diameter_px or 30.0 / self._scale)

    def _eval(self, img: np.ndarray, two_channel: bool, origin: tuple[int, int]) -> np.ndarray:
        p = self.params
        if p.blocks == "slide":
            return relabel(self._eval_anchored(img, two_channel, origin), self.min_px)
        kwargs = dict(diameter=self._diameter_px, flow_threshold=p.flow_threshold,
                      cellprob_threshold=p.cellprob_threshold, batch_size=p.batch_size)
        slide = p.normalize == "slide"  # scaled here; cellpose must not rescale each tile
        invert = self._invert and not slide
        if self.major < 4:  # cellpose 3: [cytoplasm channel, nuclear channel], 1-based; 0 = grey
            kwargs["channels"] = [1, 2] if two_channel else [0, 0]
            kwargs["invert"] = invert
            kwargs["normalize"] = not slide
        else:  # cellpose 4 (Cellpose-SAM): channels as given on the last axis; inversion is a normalisation option
            if two_channel:
                kwargs["channel_axis"] = -1
            kwargs["normalize"] = False if slide else ({"invert": True} if invert else True)
        masks = self.model.eval(img, **kwargs)[0]
        return relabel(np.asarray(masks, np.int32), self.min_px)

    def _flows(self, img: np.ndarray, two_channel: bool, origin: tuple[int, int]) -> np.ndarray:
        """The network's flows and cell probability (H, W, 3) for an already scaled image in
        cellpose's own channel layout, run on slide-anchored blocks (:func:`grid.run_anchored`)."""
        from cellpose import core, transforms

        from .grid import run_anchored

        if self.major < 4:
            x = transforms.convert_image(img, [1, 2] if two_channel else [0, 0],
                                         channel_axis=-1 if two_channel else None, nchan=self.model.nchan)
        else:
            x = transforms.convert_image(img, channel_axis=-1 if two_channel else None)
        x = np.asarray(x, np.float32).reshape(img.shape[0], img.shape[1], -1)
        block = self._block
        y = run_anchored(lambda b: core._forward(self.model.net, b)[0], x, origin, self._scale, block,
                         int(block / 1.2), self.params.batch_size)  # cellpose's block overlap: 10 % a side
        return y[..., -3:]

    def _eval_anchored(self, img: np.ndarray, two_channel: bool, origin: tuple[int, int]) -> np.ndarray:
        """What ``model.eval`` does for an already scaled image (cellpose's network, flow dynamics
        and mask rules), with the network run on slide-anchored blocks."""
        import inspect

        from cellpose import dynamics

        y, p = self._flows(img, two_channel, origin), self.params
        kwargs = dict(niter=int(round(200 / self._scale)), cellprob_threshold=p.cellprob_threshold,
                      flow_threshold=p.flow_threshold, min_size=15, max_size_fraction=0.4, resize=None,
                      device=self.model.device)
        if "interp" in inspect.signature(dynamics.resize_and_compute_masks).parameters:
            kwargs["interp"] = True  # cellpose 3
        masks = dynamics.resize_and_compute_masks(np.ascontiguousarray(y[..., :2].transpose(2, 0, 1)),
                                                  np.ascontiguousarray(y[..., 2]), **kwargs)
        return np.asarray(masks, np.int32).reshape(img.shape[:2])

    def input_files(self) -> list:
        path = Path(self.params.model).expanduser()
        return [path] if path.is_file() else []  # a built-in name: cellpose's own cached file

    def channels_used(self) -> dict:
        used = super().channels_used()
        if getattr(self, "cell_idx", None):
            used["membrane"] = [self.channel_names[i] for i in self.cell_idx]
        return used

    def predict_tiles(self, tiles, images) -> list:
        return [self.segment(im, (t.x, t.y)) for t, im in zip(tiles, images)]

    def segment(self, image: np.ndarray, origin: tuple[int, int] = (0, 0)):
        """Nuclei; with ``cell_channels``, cells (or ``(nuclei, cells)`` with ``nuclei``), of a
        window whose top-left pixel is slide pixel ``origin`` (working resolution)."""
        empty = np.zeros(image.shape[:2], np.int32)
        if image.shape[0] == 0 or image.shape[1] == 0:
            return (empty, empty) if self.objects == "cells+nuclei" else empty
        flat = np.ptp(self._plane(image, "nuclear")) == 0
        nuc = None if flat else self._scaled(image, "nuclear")
        if not self.cell_idx:
            return empty if flat else self._eval(nuc, False, origin)
        cyto = self._scaled(image, "membrane")
        cells = empty if flat and np.ptp(cyto) == 0 else \
            self._eval(np.stack([cyto, nuc if nuc is not None else np.zeros_like(cyto)], axis=-1), True, origin)
        if not self.params.nuclei:
            return cells
        return (empty if flat else self._eval(nuc, False, origin)), cells
