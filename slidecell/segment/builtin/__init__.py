"""The built-in nucleus model as a segmentation backend (``backend: builtin``).

Shipped variants (``params.model``): ``nuclei`` (default; trained on CC0/CC BY data only) and
``nuclei-research`` (adds non-commercial and unlicensed sets; research use only). A path to a
``.safetensors`` file written by ``slidecell train`` works too. Model cards sit beside the
weights in ``weights/``.

Tiles at another µm/px than the model's are resampled to it; the output maps are resampled back
and post-processed at the tile's resolution.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from ..base import BackendParams, Scored, Segmenter, register, unscored, window_period
from ..channels import model_input_channels, smooth
from ..models import ModelCache, default_batch_size, resample, resample_factor
from .inputs import NOISY, NOISY_SMOOTH_UM, fit_range, model_input, noise_ratio, nuclear_signal
from .weights import SHIPPED, PostParams, weights_path
from .postprocess import maps_to_labels

_PREDICTORS = ModelCache()


class BuiltinParams(BackendParams):
    #: shipped model name or path to a .safetensors file from ``slidecell train``
    model: str = "nuclei"
    device: str = "auto"
    #: "auto": bf16 autocast on GPU, fp32 on CPU. bf16 on a CPU with AVX512-BF16 is ~1.5× faster
    #: but measured less accurate on fluorescence (mSA -0.04, RESULTS.md): opt in with "bf16"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: tiles per forward pass; default: 2 on a CPU (as fast as 4 per pixel, half the memory:
    #: ~1.9 GB peak for 1280² windows), 8 on a GPU
    batch_size: int | None = Field(None, ge=1, le=256)
    #: overrides of the model's own post-processing thresholds
    fg_threshold: float | None = Field(None, gt=0, lt=1)
    seed_threshold: float | None = Field(None, gt=0, lt=1)
    #: nuclei whose confidence (mean foreground probability, the cells' ``confidence``) is
    #: below this are dropped; None: the model's own threshold, chosen on validation images
    min_confidence: float | None = Field(None, ge=0, le=1)
    #: nuclei smaller than this are dropped; None: the model's own minimum
    min_area_um2: float | None = Field(None, ge=0)
    #: µm/px the network is run at (tiles are resampled to it); None: the model's own, the one it
    #: was trained at. Like Cellpose's diameter: a smaller value shows the network larger nuclei
    model_mpp: float | None = Field(None, gt=0.05, le=10)
    #: fluorescence: Gaussian blur of the nuclear signal, sigma in µm, before the network (0:
    #: none). None: 0.75 µm when the slide's nuclear signal is noisy as counting instruments'
    #: (MIBI, IMC) are, whose nuclei the network otherwise splits into fragments; else none
    #: (measured on the slide's calibration tiles, recorded in run.json)
    smooth_um: float | None = Field(None, ge=0, le=10)
    #: test-time augmentation: the maps averaged over the input and its three flips (horizontal,
    #: vertical, both); 4× the network's time
    tta: bool = False
    #: what runs the network on a CPU in fp32: ``torch``, or ``onnxruntime`` (the same network
    #: exported once per process; ~1.4× faster on the development VM's CPU, maps equal to 1e-5:
    #: benchmarks/RESULTS.md; needs ``pip install "slidecell[onnx]"``)
    runtime: Literal["torch", "onnxruntime"] = "torch"


def get_predictor(model: str, device: str, precision: str, runtime: str = "torch"):
    """The model's :class:`~.model.Predictor`, loaded once per process (torch is imported here)."""
    from .model import Predictor

    key = (model, device, precision, runtime)
    return _PREDICTORS.get(key, lambda: Predictor.load(model, device, precision, runtime))


@register
class BuiltinSegmenter(Segmenter):
    name = "builtin"
    Params = BuiltinParams

    def __init__(self, params, channel_names, modality, mpp, nuclear_channels=()):
        super().__init__(params, channel_names, modality, mpp, nuclear_channels)
        p = self.params
        self.predictor = get_predictor(p.model, p.device, p.precision, p.runtime)
        meta = self.predictor.meta
        self.post = PostParams(**meta.post.__dict__)
        if p.fg_threshold is not None:
            self.post.fg_threshold = p.fg_threshold
        if p.seed_threshold is not None:
            self.post.seed_threshold = p.seed_threshold
        if p.min_confidence is not None:
            self.post.min_confidence = p.min_confidence
        self.model_mpp = p.model_mpp or meta.mpp
        self.factor = resample_factor(self.mpp, self.model_mpp)
        min_area = p.min_area_um2 if p.min_area_um2 is not None else float(meta.extra.get("min_area_um2", 2.0))
        self.min_area_um2 = min_area
        self.post.min_pixels = max(1, int(round(min_area / self.mpp**2)))
        self.input_modality, self.channels = model_input_channels(
            channel_names, modality, nuclear_channels, "builtin model")
        #: working pixels per scanned pixel (set by :meth:`locate`)
        self.source_px = 1.0

    @property
    def batch_size(self) -> int:
        return default_batch_size(self.params.batch_size, self.predictor.device)

    @property
    def confidence(self) -> bool:
        return True

    @property
    def model_bytes_per_pixel(self) -> int:
        # measured: ~1.9 GB peak for batches of two 1280² windows on the CPU (RESULTS.md, issue 3);
        # ONNX Runtime's memory arena ~0.64 GB more for two 1216² windows (RESULTS.md, issue 15);
        # on a GPU the activations live in device memory
        if self.predictor.device.type != "cpu":
            return 0
        return 800 if self.predictor.session is not None else 580

    @property
    def align(self) -> int:
        return window_period(self.predictor.meta.spec.multiple, self.factor)

    @property
    def tile_exact(self) -> bool:
        return True

    def input_files(self) -> list:
        return [weights_path(self.params.model)]

    def channels_used(self) -> dict:
        if self.input_modality == "brightfield":
            return {"rgb": [self.channel_names[i] for i in self.channels]}
        return {"nuclear": [self.channel_names[i] for i in self.channels]}

    @property
    def research_only(self) -> bool:
        return bool(self.predictor.meta.extra.get("research_only"))

    def describe(self) -> dict:
        meta = self.predictor.meta
        return {**super().describe(), "model": meta.name, "model_mpp": self.model_mpp,
                "min_confidence": self.post.min_confidence, "min_area_um2": self.min_area_um2,
                "research_only": self.research_only, "device": str(self.predictor.device),
                "precision": self.predictor.precision, "runtime": self.predictor.runtime}

    # -- slide-level calibration ----------------------------------------------------------------
    def _raw_signal(self, image: np.ndarray) -> np.ndarray:
        sig = nuclear_signal(image[:, :, self.channels])
        return np.where(np.isfinite(sig), sig, np.nan)

    def _signal(self, image: np.ndarray) -> np.ndarray:
        return smooth(self._raw_signal(image), self._smooth_um(), self.mpp)

    def locate(self, plan, slide_dimensions) -> None:
        # working pixels per scanned pixel: the noise test looks at the scan's own pixels
        self.source_px = max(1.0, 1.0 / plan.scale)

    def _smooth_um(self) -> float:
        if self.params.smooth_um is not None:
            return self.params.smooth_um
        return float(self.state.get("smooth_um", 0.0))

    def calibrate(self, samples):
        if self.input_modality == "fluorescence":
            raw = [self._raw_signal(s) for s in samples]
            if self.params.smooth_um is None:
                noise = noise_ratio(raw, self.source_px)
                self.state["noise"] = round(noise, 4)
                self.state["smooth_um"] = NOISY_SMOOTH_UM if noise > NOISY else 0.0
            sigs = [smooth(r, self._smooth_um(), self.mpp) for r in raw]
            sigs = [s[np.isfinite(s)] for s in sigs]
            self.state["value_range"] = list(fit_range(sigs)) if any(s.size for s in sigs) else [0.0, 1.0]
        return self.state

    # -- inference ------------------------------------------------------------------------------------
    def _input(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != len(self.channel_names):
            raise ValueError(f"tile has {image.shape[2]} channels, the slide has {len(self.channel_names)}")
        if self.input_modality == "fluorescence":
            if "value_range" not in self.state:
                self.calibrate([image])
            lo, hi = self.state["value_range"]
            sig = self._signal(image)
            sig = np.where(np.isnan(sig), lo, sig)  # missing pixels count as background
            x = model_input(sig, "fluorescence", (lo, hi))
        else:
            img = image[:, :, :3]
            if img.dtype.kind == "f":
                img = np.nan_to_num(img, nan=1.0, posinf=1.0, neginf=0.0)  # missing = white
            x = model_input(img, "brightfield")
        return np.ascontiguousarray(resample(x, self.factor), dtype=np.float32)

    def segment(self, image: np.ndarray) -> np.ndarray:
        return self.segment_batch([image])[0]

    def segment_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [unscored(self.finish(r, im)) for r, im in zip(self.predict(images), images)]

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """Probability maps (3×H×W at the model's resolution) per tile, ``None`` for an empty
        tile; tiles of equal size go through the network together, ``batch_size`` at a time."""
        out: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple, list] = {}
        for i, image in enumerate(images):
            if image.shape[0] and image.shape[1]:
                x = self._input(image)
                by_shape.setdefault(x.shape, []).append((i, x))
        bs = self.batch_size
        for group in by_shape.values():
            for k in range(0, len(group), bs):
                part = group[k:k + bs]
                maps = self._maps(np.stack([x for _, x in part]))
                for (i, _), m in zip(part, maps):
                    out[i] = m
        return out

    def _maps(self, batch: np.ndarray) -> np.ndarray:
        """The network's maps for an N×H×W×3 batch; with ``tta`` the mean over the four flips.
        The batch is first padded at its bottom and right to the network's period, as the
        predictor pads it, so that every flip sees the pooling grid anchored where the unflipped
        pass does (at the window's start, which the plan aligns): cells stay tile-exact."""
        if not self.params.tta:
            return self.predictor.maps(batch)
        h, w = batch.shape[1:3]
        batch = self.predictor.pad(batch)
        total = None
        for axes in ((), (2,), (1,), (1, 2)):
            m = self.predictor.maps(np.ascontiguousarray(np.flip(batch, axes)) if axes else batch)
            m = np.flip(m, tuple(a + 1 for a in axes)) if axes else m  # N×3×H×W: H, W one axis later
            total = m if total is None else total + m
        return np.ascontiguousarray(total[:, :, :h, :w] / 4.0, dtype=np.float32)

    def finish(self, raw: np.ndarray | None, image: np.ndarray) -> np.ndarray:
        return self.finisher()(raw, image)

    def finisher(self) -> "MapsToLabels":
        return MapsToLabels(self.post, self.factor)


class MapsToLabels:
    """The model's maps (at the model's resolution) → labels at the tile's resolution; small and
    picklable, for post-processing processes."""

    def __init__(self, post: PostParams, factor: float):
        self.post, self.factor = post, factor

    def __call__(self, maps: np.ndarray | None, image: np.ndarray) -> Scored:
        h, w = image.shape[:2]
        if maps is None:
            return Scored(np.zeros((h, w), np.int32), np.zeros(1, np.float32))
        if self.factor != 1.0:
            maps = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])
        return Scored(*maps_to_labels(maps[0], maps[1], maps[2], **self.post.__dict__, return_scores=True))


__all__ = ["BuiltinSegmenter", "BuiltinParams", "SHIPPED", "get_predictor"]
