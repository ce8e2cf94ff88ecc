"""The command line: one-line errors with a non-zero exit for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CMU1, SMALLTIF, need


def cli_process(*args):
    """`slidecell ARGS` as a new Python process runs it (``python -m slidecell.cli``)."""
    return subprocess.run([sys.executable, "-m", "slidecell.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def cli(capfd):
    """`slidecell ARGS` through the CLI's own ``main`` in this process, its output captured at the
    file descriptors: what the console script runs, without starting Python and importing torch
    again for each call. What needs a process of its own (the exit status of the console script,
    help without torch, progress lines in a log) runs one."""
    import signal

    from slidecell.cli import main

    def call(*args):
        capfd.readouterr()
        handler = signal.getsignal(signal.SIGTERM)
        try:
            code = main([str(a) for a in args])
        finally:
            signal.signal(signal.SIGTERM, handler)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


def assert_one_line_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("slidecell: error: ")
    for f in fragments:
        assert f in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(cli_process("run", tmp_path / "nope.svs", "-o", tmp_path / "o"), "nope.svs", "file not found")
    assert not (tmp_path / "o").exists()


def test_not_a_slide(tmp_path, cli):
    p = tmp_path / "slide.svs"
    p.write_bytes(b"<html>not a slide</html>")
    assert_one_line_error(cli("run", p, "-o", tmp_path / "o"), "slide.svs", "not a TIFF")


def test_unsupported_format_lists_formats(tmp_path, cli):
    p = tmp_path / "cells.csv"
    p.write_text("x,y\n")
    assert_one_line_error(cli("run", p), "cells.csv", "unsupported format", "Aperio SVS", "OME-TIFF")


def test_truncated_tiff(tmp_path, cli):
    p = tmp_path / "cut.svs"
    p.write_bytes(need(CMU1).read_bytes()[:900_000])
    assert_one_line_error(cli("run", p, "-o", tmp_path / "o"), "cut.svs", "truncated or corrupt")


def test_slide_without_pixel_size(tmp_path, cli):
    res = cli("run", need(SMALLTIF), "-o", tmp_path / "o")
    assert_one_line_error(res, "smalltif.tif", "--mpp")
    ok = cli("run", SMALLTIF, "--mpp", "0.5", "-o", tmp_path / "o2", "-q")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "o2" / "run.json").read_text())["reader"]["mpp"] == 0.5


def test_config_errors(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  tile_size: 10\nfoo: 1\n")
    assert_one_line_error(cli("run", need(CMU1), "-c", bad, "-o", tmp_path / "o"),
                          "bad.yaml", "'tiling.tile_size' = 10", "unknown key 'foo'")
    assert_one_line_error(cli("run", CMU1, "-c", "no-such-preset"), "no-such-preset", "file not found")
    assert_one_line_error(cli("run", CMU1, "--roi", "1,2,3"), "--roi")


def test_finished_output_needs_overwrite(tmp_path, cli):
    out = tmp_path / "o"
    first = cli("run", need(CMU1), "-o", out, "-q", "--roi", "900,1300,500,500")
    assert first.returncode == 0, first.stderr
    assert "cells from" in first.stdout and str(out / "cells.geojson") in first.stdout
    assert_one_line_error(cli("run", CMU1, "-o", out, "--roi", "900,1300,500,500"), "already holds a finished run", "--overwrite")
    again = cli("run", CMU1, "-o", out, "-q", "--overwrite", "--roi", "900,1300,500,500")
    assert again.returncode == 0


def test_usage_error_and_info(cli):
    res = cli("run")
    assert res.returncode == 2 and "Missing argument" in res.stderr and "Traceback" not in res.stderr
    info = cli("info", need(CMU1))
    assert info.returncode == 0
    assert json.loads(info.stdout)["dimensions"] == [2220, 2967]


def test_help_and_version_import_no_torch():
    """`slidecell --help`, `--version` and a command's help answer without importing torch."""
    code = ("import sys\nfrom slidecell.cli import main\n"
            "for args in (['--help'], ['--version'], ['run', '--help'], ['export', '--help']):\n"
            "    assert main(args) == 0, args\n"
            "assert 'torch' not in sys.modules and 'slidecell.engine' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    from slidecell import __version__

    assert f"slidecell {__version__}" in res.stdout and "Usage:" in res.stdout


def test_help_shows_readable_metavars():
    """Every command's help names what an option takes (N, DIR, FORMAT...), never a Python type
    (``<bool>``, ``<list[str]>``, ``<int>``); flags (``--help`` included) show nothing, and every
    command's summary is one line."""
    import re

    commands = [[], ["classify"]] + [[c] for c in ("run", "export", "analyze", "report", "cohort", "info", "train",
                                                   "evaluate", "version")] + [["classify", "train"], ["classify", "apply"]]
    for args in commands:
        res = subprocess.run([sys.executable, "-m", "slidecell.cli", *args, "--help"], capture_output=True, text=True,
                             timeout=60, env={**__import__("os").environ, "COLUMNS": "150"})
        assert res.returncode == 0, (args, res.stderr)
        assert not re.search(r"<(bool|str|int|float|list\[[a-z]+\])>", res.stdout), (args, res.stdout)
        help_row = [line for line in res.stdout.splitlines() if "--help" in line][0]
        assert re.search(r"--help\s+Show this message", help_row), help_row
    top = subprocess.run([sys.executable, "-m", "slidecell.cli", "--help"], capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "COLUMNS": "200"}).stdout
    rows = [r for r in top[top.index("Commands"):].splitlines() if r.startswith("│")]
    assert len(rows) >= 10
    assert all(re.match(r"│ [a-z]+ ", r) for r in rows), rows  # no summary wraps onto a second row


def test_progress_lines_reach_a_log_during_the_run(tmp_path):
    """`slidecell run ... > log 2>&1` (SLURM, Snakemake): plain progress lines on stderr while the
    run goes on (tiles, cells, rate, elapsed, time left), no terminal escapes."""
    import re
    import time

    need(CMU1)
    (tmp_path / "c.yaml").write_text("tiling: {tile_size: 256}\nengine: {progress_interval_s: 0.2}\n")
    log = tmp_path / "log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "slidecell.cli", "run", str(CMU1), "-c", str(tmp_path / "c.yaml"),
                                 "--roi", "700,1700,700,700", "-o", str(tmp_path / "o")], stdout=fh, stderr=fh)
        seen_while_running = False
        while proc.poll() is None:
            if "slidecell: segmenting:" in log.read_text():
                seen_while_running = not (tmp_path / "o" / "run.json").exists()
                break
            time.sleep(0.05)
        assert proc.wait(timeout=300) == 0, log.read_text()
    assert seen_while_running, log.read_text()
    text = log.read_text()
    assert "\x1b" not in text
    lines = [line for line in text.splitlines() if line.startswith("slidecell: segmenting:")]
    pattern = r"slidecell: segmenting: (\d+)/(\d+) tiles \(\d+%\), [\d,]+ cells(, [\d.]+ tiles/s)?, elapsed \d:\d\d:\d\d"
    assert all(re.match(pattern, line) for line in lines), lines
    done, total = map(int, re.match(pattern, lines[-1]).groups()[:2])
    assert done == total > 4 and "tiles/s" in lines[-1]
    n_cells = json.loads((tmp_path / "o" / "run.json").read_text())["n_cells"]
    assert f"{n_cells:,} cells" in lines[-1]


def test_absurd_pixel_sizes_are_refused_before_any_work(tmp_path, cli):
    """--mpp outside a microscope's range (or not a number) and resolution tags that are a screen
    placeholder (72 dpi → 352.8 µm/px) are refused in one line that says how to pass --mpp."""
    import numpy as np
    import tifffile

    need(CMU1)
    for bad in ("1e9", "inf", "nan", "0", "-0.5", "1e-5"):
        assert_one_line_error(cli("run", CMU1, "--mpp", bad, "-o", tmp_path / "o"), f"--mpp {float(bad)}",
                              "not a microscope pixel size")
        assert not (tmp_path / "o").exists()
    img = np.full((512, 512, 3), 200, np.uint8)
    for unit, res in (("CENTIMETER", 72 / 2.54), ("INCH", 72.0)):
        path = tmp_path / f"screen-{unit}.tif"
        tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", resolution=(res, res), resolutionunit=unit)
        res_run = cli("run", path, "-o", tmp_path / f"o-{unit}")
        assert_one_line_error(res_run, path.name, "--mpp")
        ok = cli("run", path, "--mpp", "0.5", "-o", tmp_path / f"ok-{unit}", "-q")
        assert ok.returncode == 0, ok.stderr


def test_regions_that_miss_the_slide(tmp_path, cli):
    """A NaN ROI, or one outside the slide, is refused; a region with no tissue in it finishes
    with 0 cells and a warning on stderr and in run.json (not a silent 'complete')."""
    need(CMU1)
    assert_one_line_error(cli("run", CMU1, "--roi", "nan,nan,100,100", "-o", tmp_path / "a"), "finite")
    assert_one_line_error(cli("run", CMU1, "--roi", "50000,50000,100,100", "-o", tmp_path / "b"), "outside the slide")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    blank = cli("run", CMU1, "--roi", "1950,150,200,200", "-o", tmp_path / "c", "-q")  # white background
    assert blank.returncode == 0, blank.stderr
    assert "slidecell: warning: no cells:" in blank.stderr and "(the region (ROI or annotations)" in blank.stderr
    info = json.loads((tmp_path / "c" / "run.json").read_text())
    assert info["n_cells"] == 0 and info["warnings"]


def test_hostile_inputs_get_one_line_and_echo_nothing(tmp_path, cli):
    """A GeoJSON nested 200k deep, a truncated cells.parquet, `classify train` on a folder that
    is not a run, a markers file that is not a CSV (never echoing what it holds) and a YAML alias
    bomb: each one line naming the file, exit 2, quickly."""
    import time

    need(CMU1)
    deep = tmp_path / "deep.geojson"
    deep.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon",'
                    '"coordinates":' + "[" * 200000 + "]" * 200000 + '},"properties":{}}]}')
    assert_one_line_error(cli("run", CMU1, "--annotations", deep, "-o", tmp_path / "o1"), "deep.geojson", "nested")
    run_dir = tmp_path / "r"
    ok = cli("run", CMU1, "--roi", "800,1200,300,300", "-o", run_dir, "-q")
    assert ok.returncode == 0, ok.stderr
    data = (run_dir / "cells.parquet").read_bytes()
    (run_dir / "cells.parquet").write_bytes(data[: len(data) // 3])
    assert_one_line_error(cli("export", run_dir, "--to", "geojson", "-o", tmp_path / "x.geojson"), "cells.parquet",
                          "not a readable Parquet file")
    (tmp_path / "notrun").mkdir()
    assert_one_line_error(cli("classify", "train", tmp_path / "notrun", "--labels", deep, "-o", tmp_path / "m.skops"),
                          "not a finished slidecell run")
    secret = tmp_path / "secret"
    secret.write_text("root:$y$j9T$SECRETHASH:19000:0:99999:7:::\n")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"reader:\n  markers: {secret}\n")
    res = cli("run", CMU1, "-c", cfg, "-o", tmp_path / "o2")
    assert_one_line_error(res, "secret", "not a markers file")
    assert "SECRETHASH" not in res.stderr
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")))
    t0 = time.time()
    assert_one_line_error(cli("run", CMU1, "-c", bomb, "-o", tmp_path / "o3"), "bomb.yaml", "aliases")
    assert time.time() - t0 < 30


def test_verbose_logs_each_step_and_shows_tracebacks(tmp_path, monkeypatch, cli):
    """`slidecell --verbose run` logs each step with its figures on stderr (none without it); an
    internal error then raises with its traceback instead of one line."""
    need(CMU1)
    args = ["run", CMU1, "--roi", "700,1700,700,700", "-q"]
    loud = cli("--verbose", *args, "-o", tmp_path / "a")
    assert loud.returncode == 0, loud.stderr
    steps = [ln.split(":")[1].strip() for ln in loud.stderr.splitlines() if ln.startswith("slidecell: ")]
    assert steps == ["plan", "calibrate", "segment", "segmented", "complete"], loud.stderr
    n_cells = json.loads((tmp_path / "a" / "run.json").read_text())["n_cells"]
    assert f"segmented: {n_cells} cells" in loud.stderr and "tiles of 1024 px at 0.499 µm/px" in loud.stderr
    quiet = cli(*args, "-o", tmp_path / "b")
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr

    import slidecell.tiling
    from slidecell.cli import main

    def broken(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(slidecell.tiling, "slide_modality", broken)
    assert main(["info", str(CMU1)]) == 1
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--verbose", "info", str(CMU1)])
