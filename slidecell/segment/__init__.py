"""Segmentation backends behind one interface, selected by name in the config.

A backend is a :class:`Segmenter` subclass (the contract: :mod:`.base`) registered in
:data:`BACKENDS`. It receives tiles as ``(height, width, channels)`` arrays at the working
resolution and returns, per tile, an ``int32`` label image of the same height and width (0 =
background, one positive id per object): nuclei or cells as its ``objects`` says, or a
``(nuclei, cells)`` pair for ``cells+nuclei``; a backend whose model scores its objects returns
them as :class:`Scored` (the cells get a ``confidence``). What model backends share (model
cache, device, batch size, resampling, renumbering) is in :mod:`.models`.
"""

from __future__ import annotations

from .base import (BACKENDS, BackendParams, Scored, Segmenter, get_segmenter, register, unscored,  # noqa: F401
                   window_period)

# each backend module registers itself (one line here per backend)
from . import watershed  # noqa: E402,F401  (the classical backend)
from . import builtin  # noqa: E402,F401  (the built-in model)
from . import cellpose  # noqa: E402,F401  (Cellpose 3/4; cellpose is imported when a run uses it)
from . import mask  # noqa: E402,F401  (a label image from another tool)
from . import torchscript  # noqa: E402,F401  (exported TorchScript label models)

__all__ = ["BACKENDS", "Segmenter", "BackendParams", "Scored", "get_segmenter", "register", "unscored",
           "window_period"]
