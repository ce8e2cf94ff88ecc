"""The whole-slide engine: plan → stream tiles → segment → keep owned cells → measure → write
per-chunk results → merge into the outputs.

- :mod:`.run` — :func:`run`: the run folder, then plan / calibrate / segment / finish, then the
  analysis stage
- :mod:`.plan` — the region, the calibration windows and the memory check before any tile
- :mod:`.cells` — the unit of work: tiles in, the cells they own out (:func:`process_tiles`)
- :mod:`.pipeline` — one process's streaming pipeline (model batches, post-processing pool)
- :mod:`.chunks` — chunk files, the unit of resumption and of Dask tasks
- :mod:`.outputs` — the outputs written from the chunks in plan order while the run goes on
- :mod:`.cluster` — the chunks as Dask tasks
- :mod:`.runfolder` — the output folder: lock, resume, replacing a finished run
- :mod:`.stage` — the analysis stage of a run, recorded in run.json

Finished chunks are kept in ``OUT/.slidecell/chunks``; a run started again with the same slide
and config continues after the last finished chunk.
"""

from .cells import TileContext, cell_ids, cells_from_labels, process_tile, process_tiles
from .run import RunResult, run

__all__ = ["run", "RunResult", "process_tile", "process_tiles", "cells_from_labels", "cell_ids", "TileContext"]
