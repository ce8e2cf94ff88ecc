"""The run folder (``--out``): what slidecell owns in it, the lock that keeps two runs out of
one folder, and replacing a finished run (``--overwrite``) without losing it if the new run fails.

Rules:

* slidecell writes into a new or empty folder, or into a folder that already holds a slidecell
  run (its ``.slidecell`` work folder or ``run.json``); a folder with other files is refused.
* Inside, it only ever touches what it writes (:data:`OWNED`, the work folder and its own
  temporary files ``.tmp-<pid>-<name>``); other files are left alone.
* ``.slidecell.lock`` holds the PID and host of the run writing the folder; a second run is
  refused before it changes anything. A lock whose process is gone (same host) is stale and
  taken over.
* ``--overwrite`` moves the finished run aside into ``.slidecell-previous``; it is deleted when
  the new run completes and put back if the new run fails or is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from ..config import Config
from ..errors import OutputError
from ..io.atomic import pid_alive
from ..io.writers import OUTPUT_NAMES
from ..records import CONFIG_FILE, RUN_FILE, RunRecord

WORK_DIR = ".slidecell"
LOCK_FILE = ".slidecell.lock"
PREVIOUS_DIR = ".slidecell-previous"


RECORDED_PACKAGES = ("torch", "numpy", "scipy", "scikit-image", "opencv-python-headless", "shapely", "pyarrow",
                     "anndata", "tifffile", "tiffslide", "openslide-python", "zarr", "dask", "cellpose")


def provenance(started: float) -> dict:
    """Who, where and with what a run was made: start/end times (UTC, ISO 8601; ``started`` is a
    ``time.time()``), the command line, host, CPU, Python and package versions, and the peak
    resident memory of this process and its children."""
    import platform
    import resource
    import shlex
    import sys
    from datetime import datetime, timezone
    from importlib import metadata

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")

    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:  # the CPU's model name on Linux
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rss = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"started": iso(started), "finished": iso(time.time()), "command": shlex.join(sys.argv),
            "host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "packages": versions, "peak_rss_gib": round(max(rss) * scale / 2**30, 3)}


def owned_names() -> list[str]:
    """The top-level entries of a run folder that slidecell writes."""
    from ..io.label_image import LABELS_NAME
    from ..io.spatialdata import SPATIALDATA_NAME
    from ..io.writers import FORMATS

    names = [RUN_FILE, CONFIG_FILE, *(f.filename for f in FORMATS.values()), LABELS_NAME, SPATIALDATA_NAME,
             "cells_classified.geojson", "analysis"]
    return list(dict.fromkeys(names))  # each once (export's formats register the label image and SpatialData too)


def _is_ours_tmp(name: str, owned) -> bool:
    m = re.fullmatch(r"\.tmp-\d+-(.+)", name)
    return bool(m) and m.group(1) in owned


class RunFolder:
    """``with RunFolder(out, overwrite):`` around a run: lock, checks, moving a finished run
    aside for ``overwrite``, and cleaning or restoring on the way out."""

    def __init__(self, out: Path, overwrite: bool = False, finished_ok: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        #: a finished run may be there (a stage is added to it, e.g. a failed analysis retried)
        self.finished_ok = finished_ok
        self.owned = owned_names()
        self._locked = False
        self.previous: Path | None = None

    # -- lock ----------------------------------------------------------------------------
    def _acquire(self) -> None:
        lock = self.out / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    held = json.loads(lock.read_text())
                except (OSError, ValueError):
                    held = {}
                if held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not pid_alive(held["pid"]):
                    lock.unlink(missing_ok=True)  # stale: that run is gone
                    continue
                who = f"pid {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('since', '?')}"
                raise OutputError(f"{self.out}: another slidecell run is writing this folder ({who}); wait for it "
                                  f"to finish or choose another --out (remove {LOCK_FILE} if that run is gone)") from None
            except PermissionError as err:
                raise OutputError(f"{self.out}: cannot write in this folder ({err.strerror})") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._locked = True
            return
        raise OutputError(f"{self.out}: cannot take the folder's lock {LOCK_FILE}")

    def _release(self) -> None:
        if self._locked:
            (self.out / LOCK_FILE).unlink(missing_ok=True)
            self._locked = False

    # -- entering ------------------------------------------------------------------------------
    def __enter__(self) -> "RunFolder":
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{out}: cannot create the output folder ({err.strerror})") from None
        self._check_foreign()
        self._acquire()
        try:
            self._prepare()
        except BaseException:
            self._release()
            raise
        return self

    def _check_foreign(self) -> None:
        entries = [p.name for p in self.out.iterdir()]
        ours = {WORK_DIR, RUN_FILE, LOCK_FILE, PREVIOUS_DIR}
        if entries and not ours & set(entries):
            raise OutputError(f"{self.out}: holds files that are not a slidecell run ({', '.join(sorted(entries)[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); choose a new or empty --out")

    def _prepare(self) -> None:
        out = self.out
        if (out / PREVIOUS_DIR).is_dir():  # left by a run that died while replacing another
            self._restore(out / PREVIOUS_DIR)
        if (out / RUN_FILE).exists() and not self.overwrite and not self.finished_ok:
            raise OutputError(f"{out}: already holds a finished run ({RUN_FILE}); pass --overwrite to replace it "
                              "or choose another --out")
        if self.overwrite:
            present = [n for n in [*self.owned, WORK_DIR] if (out / n).exists()]
            if present:
                prev = out / PREVIOUS_DIR
                prev.mkdir()
                for n in present:
                    os.replace(out / n, prev / n)
                self.previous = prev
        (out / WORK_DIR / "chunks").mkdir(parents=True, exist_ok=True)
        # temporary files of a killed run: only slidecell's own names (the lock is ours)
        for stale in [p for p in out.iterdir() if _is_ours_tmp(p.name, self.owned)] + \
                list((out / WORK_DIR / "chunks").glob(".tmp-*")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    # -- leaving ---------------------------------------------------------------------------------
    def _remove_ours(self) -> None:
        for n in [*self.owned, WORK_DIR]:
            p = self.out / n
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()

    def _restore(self, prev: Path) -> None:
        """Put a finished run moved aside back in place of whatever the failed run left."""
        self._remove_ours()
        for p in prev.iterdir():
            os.replace(p, self.out / p.name)
        prev.rmdir()

    def commit(self) -> None:
        """The new run is complete (its run.json written): the one it replaced goes."""
        if self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous = None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.previous is not None:
                if exc_type is None:
                    shutil.rmtree(self.previous, ignore_errors=True)
                else:
                    self._restore(self.previous)
        finally:
            self._release()


def manifest_key(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def drop_chunks(out: Path, cfg: Config) -> None:
    """A finished run's chunk cache goes (unless ``output.keep_chunks``) once ``cells.parquet``
    holds every cell: nothing reads it any more (``export`` reads the parquet)."""
    import shutil

    if not cfg.output.keep_chunks and (out / OUTPUT_NAMES["parquet"]).is_file() and (out / RUN_FILE).is_file():
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def analysis_pending(out: Path, cfg: Config) -> bool:
    """``out`` holds a finished run of this config (the same cells) whose analysis stage is not
    complete: it failed, was killed while running, or was never run."""
    if cfg.analysis is None:
        return False
    from ..errors import InputError

    try:
        record = RunRecord.read(out / RUN_FILE)
    except InputError:
        return False
    return (record.status == "complete" and record.config_fingerprint == cfg.fingerprint()
            and (record.analysis_stage is None or record.analysis_stage.status != "complete"))
