"""Run the slidecell CLI with one fault injected: the process sends itself a real signal at a
chosen point of its work.

    python fault_inject.py

reads one case per line on stdin (JSON: ``args`` of the CLI, ``stderr`` a file for its error
output, optional ``fault``: ``[target, nth, when, signal, match]``), runs each in a process forked
from this one (the imports every case shares are paid once) and answers one line per case
(JSON: ``rc``, the exit code, -9 for SIGKILL).

``target`` is ``module:attribute`` (a function or ``Class.method``), patched where the code looks
it up (``slidecell.engine.run:plan_tiles``, ``os:replace``); on its ``nth`` call (counting only calls
whose arguments mention ``match``) the process sends itself ``signal`` (KILL, INT or TERM)
``before`` the call runs or ``after`` it returned. Used by ``test_faults.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time


def inject(target: str, nth: int, when: str, sig: str, match: str = "") -> None:
    module, _, attr = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def fire():
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
        time.sleep(2)  # SIGINT/SIGTERM land in the main thread; a worker thread waits for it here

    def faulty(*args, **kwargs):
        hit = match in " ".join(map(str, (*args, *kwargs.values())))
        if hit:
            calls[0] += 1
        if hit and calls[0] == nth and when == "before":
            fire()
        out = original(*args, **kwargs)
        if hit and calls[0] == nth and when == "after":
            fire()
        return out

    setattr(owner, name, faulty)


def _case(case: dict) -> int:
    """In the forked process: as a fresh `slidecell` process would start, then the CLI."""
    err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if case.get("fault"):
        inject(*case["fault"])
    from slidecell.cli import main as cli

    return cli(case["args"])


def serve() -> None:
    # torch, pandas, anndata, squidpy, the engine, the model, the report: imported once, before any
    # fork, and the compiled seeds loaded (a process pays ~0.8 s for numba's first call)
    import anndata  # noqa: F401
    import numpy as np
    import skimage.segmentation  # noqa: F401
    import sklearn.mixture  # noqa: F401
    import squidpy  # noqa: F401

    import slidecell.analysis.report  # noqa: F401
    import slidecell.cli  # noqa: F401
    import slidecell.engine  # noqa: F401
    import slidecell.segment.builtin.model  # noqa: F401
    from slidecell.segment.builtin.hmaxima import h_maxima

    h_maxima(np.eye(3, dtype=np.float32), 0.5)

    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _case(case)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
