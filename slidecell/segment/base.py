"""The contract between the engine and a segmentation backend: :class:`Segmenter` (what a
backend declares and implements), its parameters, scored labels, and the registry of backends by
name. See the package docstring for what a backend returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ..schema import Strict, validate

BACKENDS: dict[str, type["Segmenter"]] = {}


def register(cls):
    BACKENDS[cls.name] = cls
    return cls


@dataclass
class Scored:
    """A label image with a confidence in [0, 1] for each object: ``scores[k]`` is label
    ``k``'s (``scores[0]`` unused)."""

    labels: np.ndarray
    scores: np.ndarray


def unscored(result):
    """The label image(s) of a :meth:`Segmenter.finish` result, without scores."""
    return result.labels if isinstance(result, Scored) else result


class BackendParams(Strict):
    """A backend's ``segmentation.params``: unknown keys are errors."""


class Segmenter:
    """Base class. Subclasses set ``name`` and ``Params`` and implement :meth:`segment`."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type[BackendParams]] = BackendParams

    def __init__(self, params: dict[str, Any] | None, channel_names, modality: str, mpp: float,
                 nuclear_channels=()):
        self.params = validate(self.Params, params or {}, f"segmentation.params ({self.name})")
        self.channel_names = tuple(channel_names)
        self.modality = modality
        self.mpp = float(mpp)
        self.nuclear_channels = tuple(nuclear_channels)
        #: values fitted on the slide by :meth:`calibrate`; recorded so a resumed run reuses them
        self.state: dict[str, Any] = {}

    def calibrate(self, samples: list[np.ndarray]) -> dict[str, Any]:
        """Fit slide-level values (e.g. a global threshold) on sample tiles so that every tile is
        segmented the same way. Returns the fitted state."""
        return self.state

    def segment(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def objects(self) -> str:
        """What :meth:`finish` returns: ``"nuclei"`` or ``"cells"`` (a label image), or
        ``"cells+nuclei"`` (a ``(nuclei, cells)`` pair of label images)."""
        return "nuclei"

    @property
    def confidence(self) -> bool:
        """Whether :meth:`finish` returns :class:`Scored` labels (a ``confidence`` per cell)."""
        return False

    @property
    def align(self) -> int:
        """Working pixels that read windows must start and end on (in slide coordinates) for the
        backend to see every pixel at the same phase in every tile: a network padding its input
        to a multiple of 2^poolings declares that period (:func:`window_period`); the plan
        honours it. 1: any window."""
        return 1

    @property
    def context(self) -> int:
        """Working pixels of context a read window needs around its core for the backend's
        output there not to depend on the window (a network whose blocks are anchored to the
        slide needs one block); the plan reads at least this much. 0: the tiling's overlap."""
        return 0

    @property
    def labels_are_ids(self) -> bool:
        """Whether a label's value means something outside the run (a mask's cell ids from
        another tool): the cells then keep it (``mask_label``)."""
        return False

    @property
    def tile_exact(self) -> bool:
        """Whether the backend draws a cell the same in every tile that sees it whole (tested
        by tests/test_seams.py); otherwise the engine drops the copies a second tile drew
        (:mod:`slidecell.stitch`) before writing the outputs."""
        return False

    @property
    def model_bytes_per_pixel(self) -> int:
        """Host memory the backend's model needs per input pixel of a tile in a batch (its
        activations on the CPU), for the engine's pre-run memory estimate; 0: unknown/none."""
        return 0

    @property
    def batch_size(self) -> int:
        """Tiles the engine hands to :meth:`predict` at once."""
        return int(getattr(self.params, "batch_size", None) or 1)

    def describe(self) -> dict[str, Any]:
        """What produced the cells, recorded in run.json (with the channels that drove the
        segmentation)."""
        return {"backend": self.name, "params": self.params.model_dump(mode="json"),
                "channels_used": self.channels_used()}

    def input_files(self) -> list:
        """Files the backend reads (weights, a label image): fingerprinted by content for resume,
        so a file replaced at the same path between a stop and a resume is noticed."""
        return []

    def channels_used(self) -> dict[str, Any]:
        """Which of the image's channels the segmentation reads, by role: ``nuclear`` (names),
        ``membrane`` (names), or ``rgb``/``haematoxylin`` for brightfield colour input.
        Default: the nuclear channel indices in ``self.channels``, when a backend keeps them."""
        idx = getattr(self, "channels", None)
        return {"nuclear": [self.channel_names[i] for i in idx]} if idx else {}

    def segment_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Several tiles at once; backends with a batched model override this."""
        return [self.segment(im) for im in images]

    def predict(self, images: list[np.ndarray]) -> list[Any]:
        """The batched, heavy part (a model's forward pass) for several tiles. The engine runs it
        in one thread and hands each result to :meth:`finish`, possibly in another thread, so
        post-processing overlaps the next batch. Default: the labels themselves."""
        return self.segment_batch(images)

    def locate(self, plan, slide_dimensions) -> None:
        """Told by the engine where its tiles lie (the :class:`~slidecell.tiling.TilePlan`) and
        the slide's level-0 size, before any tile; for backends that read by position (mask)."""

    def predict_tiles(self, tiles, images: list[np.ndarray]) -> list[Any]:
        """:meth:`predict` for tiles of the plan given to :meth:`locate`; what the engine calls."""
        return self.predict(images)

    def finish(self, raw: Any, image: np.ndarray) -> np.ndarray:
        """One tile's :meth:`predict` output → its label image. Must be thread-safe."""
        return raw

    def finisher(self):
        """A picklable callable doing :meth:`finish`, sent once to each post-processing process
        (so a backend holding a model can send just its post-processing settings)."""
        return _identity if type(self).finish is Segmenter.finish else self.finish


def window_period(multiple: int, factor: float) -> int:
    """The window alignment, in working pixels, for a network whose input is padded to
    ``multiple`` pixels after tiles are scaled by ``factor`` (model px per working px): windows
    ``multiple / factor`` working px apart put the network at the same phase. A non-integral
    period cannot be honoured exactly (resampling mixes phases anyway): ``multiple`` then."""
    p = multiple / factor
    return int(round(p)) if round(p) >= 1 and abs(p - round(p)) < 1e-6 else int(multiple)


def _identity(raw, image):
    return raw


def get_segmenter(name: str, params, channel_names, modality, mpp, nuclear_channels=()) -> Segmenter:
    """A backend by its registered name (plug-ins included), built for a slide's channels."""
    from ..plugins import load_plugins

    load_plugins()
    if name not in BACKENDS:
        raise ConfigError(f"unknown segmentation backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](params, channel_names, modality, mpp, nuclear_channels)
