"""One slide on a Dask LocalCluster: the same cells as a local run, even when a worker dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
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
    # the model's scores differ in the last float32 bit between thread counts (summation order)
    assert np.allclose(x["confidence"], y["confidence"], rtol=1e-5, atol=0)
    assert x.drop(columns=["geometry", "confidence"]).equals(y.drop(columns=["geometry", "confidence"]))
    assert x.geometry.geom_equals_exact(y.geometry, 0).all()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    slidecell.run(need(CMU1), _config(), out, progress=False)
    return out


@pytest.mark.timeout(300)
def test_local_cluster_gives_the_same_cells(local_run, tmp_path):
    res = slidecell.run(CMU1, _config(scheduler="local", dask_workers=2, dask_threads=2), tmp_path / "dask",
                        progress=False)
    assert res.timings["dask"] > 0
    # Dask starts workers with OMP_NUM_THREADS=1; the model gets the threads asked for
    assert res.timings["dask_model_threads"] == 2
    _same(local_run, tmp_path / "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, seconds: float, what: str):
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_run_changes_nothing(local_run, tmp_path):
    """A scheduler and two worker processes started as a user would (``dask scheduler``, ``dask
    worker``); one worker is killed with SIGKILL once a few chunks are written; ``slidecell run
    --scheduler`` (its own process, as users run it) still finishes with the same cells."""
    bindir = Path(sys.executable).parent
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = []

    def start(*cmd):
        p = subprocess.Popen([str(bindir / "dask"), *cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        _wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "the scheduler")
        workers = [start("worker", addr, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                         "--host", "127.0.0.1") for _ in range(2)]
        out = tmp_path / "dask"
        chunks = out / ".slidecell" / "chunks"
        cfg = tmp_path / "config.yaml"  # the same settings as _config()
        cfg.write_text(_config().to_yaml())
        run = subprocess.Popen([str(bindir / "slidecell"), "run", str(CMU1), "--out", str(out), "--config", str(cfg),
                                "--scheduler", addr, "--quiet"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(run)
        killed = False
        deadline = time.time() + 240
        while run.poll() is None and time.time() < deadline:
            if not killed and chunks.exists() and len(list(chunks.glob("chunk-*.parquet"))) >= 3:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        log = run.communicate(timeout=max(1.0, deadline - time.time()))[0]
        assert run.returncode == 0, log
        assert killed, "the run ended before a worker could be killed"
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    _same(local_run, out)


@pytest.mark.timeout(300)
def test_local_cluster_binds_nothing_it_does_not_need():
    """The local cluster listens on loopback only, with no HTTP routes (no dashboard on 8787), and
    speaks TLS with a per-run certificate: a client without it cannot connect."""
    import urllib.error
    import urllib.request

    import psutil

    from slidecell.engine.cluster import connect

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
        # a client without the certificate, in its own process: a Client that fails to connect
        # here would be garbage-collected later inside distributed's shared loop runner, whose
        # lock its __del__ then waits for forever (it hung a whole test session)
        probe = ("import sys\nfrom distributed import Client\n"
                 "try:\n    Client(sys.argv[1], timeout=3)\nexcept Exception:\n    sys.exit(3)\nsys.exit(0)")
        for addr in (cluster.scheduler_address, cluster.scheduler_address.replace("tls://", "tcp://")):
            r = subprocess.run([sys.executable, "-c", probe, addr], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=120)
            assert r.returncode == 3, (addr, r.returncode, r.stderr[-500:])
    finally:
        client.close()
        cluster.close()
