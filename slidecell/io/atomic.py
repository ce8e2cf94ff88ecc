"""Files written whole or not at all: a temporary name beside the destination, renamed into place
only when complete; temporary files of killed processes swept by the next write."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """A process with this PID exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def sweep_stale_tmp(path: Path) -> None:
    """Remove the temporary files (``.tmp-<pid>-<name>``) of ``path`` left by processes that are
    gone (killed mid-write). Files of live processes are left alone. PIDs are this machine's: two
    machines writing one path of a shared file system at once is refused nowhere else either."""
    import re
    import shutil

    pattern = re.compile(rf"\.tmp-(\d+)-{re.escape(path.name)}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.
    Temporary files of ``path`` left by killed processes are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_tmp(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o644)  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary path beside the directory store ``path`` (zarr); if the block
    succeeds, replace ``path`` (a directory or file) with it; else remove it. Temporary stores
    of ``path`` left by killed processes are removed first."""
    import shutil

    path = Path(path)
    sweep_stale_tmp(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
