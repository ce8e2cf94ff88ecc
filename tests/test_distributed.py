"""One slide on a Dask LocalCluster: the same cells as a local run, even when a worker dies."""

from __future__ import annotations

import os
import signal
import threading
import time

import geopandas as gpd
import pytest

import slidecell
from conftest import CMU1, need


def _config(**engine):
    return slidecell.load_config("he-brightfield", {
        "roi": [0, 0, 1500, 1200], "output": {"geojson": False, "h5ad": False},
        "tiling": {"tile_size": 256, "chunk_tiles": 1}, "engine": engine})


def _same(a, b):
    x, y = gpd.read_parquet(a / "cells.parquet"), gpd.read_parquet(b / "cells.parquet")
    assert len(x) == len(y) > 300
    assert list(x["cell_id"]) == list(y["cell_id"])
    assert x.drop(columns="geometry").equals(y.drop(columns="geometry"))
    assert x.geometry.geom_equals_exact(y.geometry, 0).all()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    slidecell.run(need(CMU1), _config(), out, progress=False)
    return out


def test_local_cluster_gives_the_same_cells(local_run, tmp_path):
    res = slidecell.run(CMU1, _config(scheduler="local", dask_workers=2, dask_threads=2), tmp_path / "dask",
                        progress=False)
    assert res.timings["dask"] > 0
    # Dask starts workers with OMP_NUM_THREADS=1; the model gets the threads asked for
    assert res.timings["dask_model_threads"] == 2
    _same(local_run, tmp_path / "dask")


def test_a_worker_killed_mid_run_changes_nothing(local_run, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)  # {worker address: pid}
        chunks = tmp_path / "dask" / ".slidecell" / "chunks"
        killed = {}

        def kill_one():
            deadline = time.time() + 120
            while time.time() < deadline:  # once a few chunks are done, kill a busy worker
                if chunks.exists() and len(list(chunks.glob("chunk-*.parquet"))) >= 3:
                    addr, pid = sorted(pids.items())[0]
                    os.kill(pid, signal.SIGKILL)
                    killed[addr] = pid
                    return
                time.sleep(0.05)

        t = threading.Thread(target=kill_one)
        t.start()
        slidecell.run(CMU1, _config(scheduler=cluster.scheduler_address), tmp_path / "dask", progress=False)
        t.join()
    assert killed, "the run ended before a worker could be killed"
    _same(local_run, tmp_path / "dask")


def test_local_cluster_binds_nothing_it_does_not_need():
    """The local cluster listens on loopback only, with no HTTP routes (no dashboard on 8787), and
    speaks TLS with a per-run certificate: a client without it cannot connect."""
    import urllib.error
    import urllib.request

    import psutil
    from distributed import Client

    from slidecell.distributed import connect

    client, cluster = connect("local", 1)
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2]).result() == 3
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        pids = {p.pid for p in procs}
        listening = [c.laddr for c in psutil.net_connections() if c.status == "LISTEN" and c.pid in pids]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
        assert 8787 not in {a.port for a in listening}
        for a in listening:  # whatever HTTP server distributed starts serves no pages
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=3)
                served = True
            except (urllib.error.HTTPError, urllib.error.URLError, ConnectionError, OSError):
                served = False
            assert not served, a
        with pytest.raises(Exception):
            Client(cluster.scheduler_address, timeout=3)
        with pytest.raises(Exception):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=3)
    finally:
        client.close()
        cluster.close()
