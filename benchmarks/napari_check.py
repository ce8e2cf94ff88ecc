"""Open a run's label OME-TIFF and SpatialData store in napari itself, headless (napari's
``ViewerModel``: the viewer without its Qt window), through slidecell's reader plug-in, and print
each layer's kind, scale, levels and world extent in µm. Needs napari (no Qt binding) beside
slidecell in one environment:

    python -m venv .venv-napari && .venv-napari/bin/pip install napari "torch==2.13.0" -e .
    .venv-napari/bin/python benchmarks/napari_check.py RUN_DIR

The run needs ``output.label_image: true`` and ``output.spatialdata: true``. Exits non-zero when
a layer is missing or the layers' extents disagree by more than one working pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    a = ap.parse_args(argv)
    import napari
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari.Viewer does at start: find installed plug-ins

    run = json.loads((a.run / "run.json").read_text())
    mpp = run["plan"]["mpp"]
    viewer = ViewerModel()
    for name in ("cells_labels.ome.tif", "cells.spatialdata.zarr"):
        layers = viewer.open(str(a.run / name), plugin="slidecell")
        print(f"{name}: {len(layers)} layer(s)")
    extents = {}
    for layer in viewer.layers:
        ext = np.asarray(layer.extent.world)
        levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
        extents[layer.name] = ext
        print(f"  {type(layer).__name__:7s} {layer.name!r:18s} scale {tuple(np.round(layer.scale, 4))} "
              f"levels {levels} world extent (µm) y {ext[0, 0]:.1f}-{ext[1, 0]:.1f} x {ext[0, 1]:.1f}-{ext[1, 1]:.1f}")
    need = {"cells_labels", "cell centroids"}
    if not need <= set(extents) or not any(k.startswith(("image", "DAPI", "Red")) or k not in need | {"cells"}
                                           for k in extents):
        print("missing layers", file=sys.stderr)
        return 1
    labels = extents["cells_labels"]
    images = [v for k, v in extents.items() if k not in need | {"cells"}]
    bad = [e for e in images if np.abs(e - labels).max() > mpp]
    print(f"napari {napari.__version__}; working resolution {mpp} µm/px; image and labels extents agree: {not bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
