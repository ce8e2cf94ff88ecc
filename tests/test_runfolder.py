"""The run folder: slidecell touches only what it writes, one run at a time, and --overwrite
keeps the finished run until the new one completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from conftest import CMU1, need
from slidecell import load_config, run
from slidecell.errors import OutputError
from slidecell.engine.runfolder import LOCK_FILE, PREVIOUS_DIR

ROI = {"roi": [800, 1200, 300, 300], "output": {"h5ad": False}}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own notes\n")
    (out / ".tmp-notes").write_text("keep\n")
    before = _files(out)
    with pytest.raises(OutputError, match="not a slidecell run"):
        run(need(CMU1), load_config("he-brightfield", ROI), out, progress=False)
    assert _files(out) == before


def test_only_slidecell_files_are_touched_in_a_run_folder(tmp_path):
    out = tmp_path / "o"
    cfg = load_config("he-brightfield", ROI)
    run(need(CMU1), cfg, out, progress=False)
    (out / "notes.txt").write_text("mine\n")
    (out / ".tmp-42-notes.txt").write_text("mine too\n")  # not a slidecell output name
    (out / ".tmp-42-cells.parquet").write_text("left by a killed run\n")
    run(CMU1, cfg, out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine\n" and (out / ".tmp-42-notes.txt").exists()
    assert not (out / ".tmp-42-cells.parquet").exists()
    assert not (out / LOCK_FILE).exists() and not (out / PREVIOUS_DIR).exists()


def test_failed_overwrite_keeps_the_finished_run(tmp_path):
    out = tmp_path / "o"
    run(need(CMU1), load_config("he-brightfield", ROI), out, progress=False)
    before = _files(out)
    bad_mask = tmp_path / "mask.tif"
    tifffile.imwrite(bad_mask, np.zeros((10, 10), np.uint16))  # not the slide's size: fails in the run
    bad = load_config("he-brightfield", {**ROI, "segmentation": {"backend": "mask", "params": {"path": str(bad_mask)}}})
    with pytest.raises(Exception):
        run(CMU1, bad, out, overwrite=True, progress=False)
    assert _files(out) == before
    assert not (out / PREVIOUS_DIR).exists() and not (out / LOCK_FILE).exists()


def test_lock_refuses_a_second_run_and_stale_locks_are_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".slidecell").mkdir()
    import socket

    host = socket.gethostname()
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": host, "since": "then"}))
    before = _files(out)
    with pytest.raises(OutputError, match=f"another slidecell run is writing this folder \\(pid {os.getppid()}"):
        run(need(CMU1), load_config("he-brightfield", ROI), out, progress=False)
    assert _files(out) == before
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": host, "since": "then"}))
    r = run(CMU1, load_config("he-brightfield", ROI), out, progress=False)
    assert r.n_cells > 10 and not (out / LOCK_FILE).exists()


def test_two_concurrent_runs_on_one_folder(tmp_path):
    """The second run is refused (exit 2) without touching the first, which completes."""
    need(CMU1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tiling: {tile_size: 128, chunk_tiles: 1}\noutput: {geojson: false, h5ad: false}\n")
    out = tmp_path / "o"
    args = [sys.executable, "-m", "slidecell.cli", "run", str(CMU1), "-c", str(cfg), "--roi", "700,1700,600,600",
            "-q", "-o", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks = out / ".slidecell" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and not (chunks.is_dir() and any(chunks.glob("*.parquet"))):
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "another slidecell run is writing this folder" in second.stderr, second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (room for a chunk, not for the final outputs); skipped where mounting is
    not allowed (not root, or a container without the capability)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_exit_3_and_the_run_resumes(small_disk, tmp_path, capsys):
    """The disk fills while the final outputs are written: one line naming the run folder and
    the problem, exit code 3 (the environment, not the input), no run.json claiming completion;
    after room is made, the same command resumes from the kept chunk to the outputs an
    uninterrupted run gives. (As a user runs it, in a process of its own: HDF5 2.0 is left
    unusable in a process where a write failed for want of space.)"""
    import geopandas as gpd

    slide = need(CMU1)
    args = [sys.executable, "-m", "slidecell.cli", "run", str(slide), "--roi", "600,1200,768,768", "-q"]
    out = small_disk / "run"

    def cli(*extra):
        return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=600)

    full = cli("--out", str(out))
    err = full.stderr.strip().splitlines()
    assert full.returncode == 3, full.stderr
    assert len(err) == 1 and err[0].startswith(f"slidecell: error: {out}: no space left on the device"), err
    assert not (out / "run.json").exists()
    assert list((out / ".slidecell" / "chunks").glob("chunk-*.parquet"))
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)  # room + the h5ad headroom
    again = cli("--out", str(out))
    assert again.returncode == 0 and "resumed" in again.stdout, again.stderr
    assert cli("--out", str(tmp_path / "ref")).returncode == 0
    a, b = gpd.read_parquet(out / "cells.parquet"), gpd.read_parquet(tmp_path / "ref" / "cells.parquet")
    assert len(a) == len(b) > 300
    assert (a["cell_id"].to_numpy() == b["cell_id"].to_numpy()).all()
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()


def test_a_read_only_folder_is_one_line(small_disk, capsys):
    from slidecell.cli import main

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    rc = main(["run", str(need(CMU1)), "--roi", "600,1200,300,300", "-q", "--out", str(small_disk / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Read-only file system" in err[0], err
