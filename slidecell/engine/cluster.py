"""One slide across a Dask cluster: the engine's chunks of tiles as ``dask.distributed`` tasks.

Only the slide's path, the tile coordinates, the config and the slide-level state travel to
the workers; each worker opens the slide and builds the segmenter once (model loaded once per
worker), processes its chunk (read → segment → cells it owns → measure), and writes the chunk
file atomically to the run's folder (which must be on a filesystem the workers share). The
run's process streams the outputs from the chunks in plan order as they complete, exactly as
in a local run, so the cells are the same. A task lost with a dying worker is run again by
the scheduler; chunk files are replaced atomically, so nothing is duplicated or half-written.
With several GPUs on a machine, each worker takes one (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..progress import RunProgress

_WORKER: dict = {}  # in a worker process: the slide reader and segmenter of the current run


def _pin_gpu() -> None:
    """One GPU per worker when the machine has several (by the worker's position)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ or _WORKER.get("pinned"):
        return
    _WORKER["pinned"] = True
    try:
        import torch

        n = torch.cuda.device_count()
        if n > 1:
            from distributed import get_worker

            name = str(get_worker().name)
            index = int(name) if name.isdigit() else abs(hash(name))
            torch.cuda.set_device(index % n)
    except Exception:  # no torch, no GPU, not in a worker: nothing to pin
        pass


def _tools(job: dict):
    """The worker's reader and segmenter for this run, made once per worker and run."""
    key = job["key"]
    if _WORKER.get("key") != key:
        from ..io import open_spec
        from ..segment import get_segmenter

        old = _WORKER.pop("reader", None)
        if old is not None:
            old.close()
        _pin_gpu()
        if job.get("threads"):
            import torch

            torch.set_num_threads(int(job["threads"]))
        reader = open_spec(job["reader"])
        seg = get_segmenter(job["backend"], job["params"], job["ctx"].channel_names, job["modality"],
                            job["plan"].mpp, job["nuclear_channels"])
        seg.state = job["state"]
        seg.locate(job["plan"], reader.dimensions)
        _WORKER.update(key=key, reader=reader, segmenter=seg)
    return _WORKER["reader"], _WORKER["segmenter"]


def chunk_task(k: int, tiles: list, job: dict, path: str) -> tuple[int, int, int, float, int]:
    """Process chunk ``k`` (its tiles) and write its file. Returns (k, cells, tiles read again
    for large cells, seconds, the worker's torch threads or 0 without torch)."""
    import sys
    from pathlib import Path

    from .cells import finish_tile
    from .chunks import chunk_part, write_chunk
    from .pipeline import more_context, same_size_batches

    t0 = time.perf_counter()
    reader, seg = _tools(job)
    plan, ctx = job["plan"], job["ctx"]
    parts, retried = [], 0
    for batch in same_size_batches(tiles, max(1, seg.batch_size), lambda t: (t.h, t.w)):
        images = [reader.read(*plan.level0_origin(t), t.w, t.h, plan.mpp) for t in batch]
        raws = seg.predict_tiles(batch, images)
        for t, im, raw in zip(batch, images, raws):
            part, n = more_context(t, chunk_part(finish_tile(t, im, raw, seg, ctx), ctx), reader, plan, seg, ctx,
                                   job["max_overlap"])
            retried += n
            parts.append(part)
    write_chunk(parts, Path(path))
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0
    return k, int(sum(p.num_rows for p in parts)), retried, time.perf_counter() - t0, threads


def connect(scheduler: str, workers: int):
    """A client: ``local`` starts a LocalCluster of ``workers`` single-threaded worker
    processes; anything else is a scheduler address (tcp://host:8786 or tls://...; Dask's own
    ``distributed.comm.tls`` configuration supplies certificates). Returns (client, cluster or
    None).

    The local cluster listens on 127.0.0.1 only, speaks TLS with a certificate made for this run
    (so no other process, even on this machine, can connect and run code in its workers) and
    serves no HTTP pages (no dashboard, metrics or health routes)."""
    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    if scheduler == "local":
        sec = Security.temporary()
        with dask.config.set({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   protocol="tls://", security=sec, dashboard_address="127.0.0.1:0",
                                   worker_dashboard_address="127.0.0.1:0")
        return Client(cluster, security=sec), cluster
    return Client(scheduler), None


def run_chunks(client, chunks: list[tuple[int, list]], job: dict, chunk_path, on_chunk, progress_cb=None) -> dict:
    """Submit every pending chunk; call ``on_chunk(k)`` and ``progress_cb(tiles, cells)`` as each
    finishes (in any order; the output writer puts them in order). Returns totals."""
    from distributed import as_completed

    futures = [client.submit(chunk_task, k, tiles, job, str(chunk_path(k)), key=f"slidecell-chunk-{job['key']}-{k}",
                             retries=2, pure=False) for k, tiles in chunks]
    totals = {"cells": 0, "retried": 0, "task_seconds": 0.0, "threads": 0}
    sizes = {k: len(tiles) for k, tiles in chunks}
    for fut in as_completed(futures):
        k, n, retried, dt, threads = fut.result()
        totals["threads"] = max(totals["threads"], threads)
        totals["cells"] += n
        totals["retried"] += retried
        totals["task_seconds"] += dt
        on_chunk(k)
        if progress_cb is not None:
            progress_cb(sizes[k], n)
    return totals


def run_dask(cfg: Config, chunks, job: dict, chunk_path, on_chunk, timings: dict, bar: RunProgress) -> int:
    """The pending chunks on the config's Dask cluster; returns the tiles read again for large
    cells."""
    t0 = time.perf_counter()
    threads = cfg.engine.dask_threads
    if threads is None and cfg.engine.scheduler == "local":
        threads = max(1, (os.cpu_count() or 1) // cfg.engine.dask_workers)
    job = {**job, "threads": threads}
    client, cluster = connect(cfg.engine.scheduler, cfg.engine.dask_workers)
    try:
        totals = run_chunks(client, chunks, job, chunk_path, on_chunk, bar.advance)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    timings["dask"] = time.perf_counter() - t0
    timings["dask_task_seconds"] = totals["task_seconds"]
    timings["dask_model_threads"] = totals["threads"]
    return totals["retried"]


__all__ = ["chunk_task", "connect", "run_chunks", "run_dask"]
