"""What a run leaves behind, typed (slidecell.records): run.json and analysis.json read through one
object, keys of a newer slidecell kept, a damaged record one line naming the file."""

import json

import pytest

from slidecell.errors import InputError
from slidecell.records import RUN_FILE, AnalysisStage, RunDir, RunRecord, as_record


def test_a_run_record_round_trips_and_keeps_unknown_keys(tmp_path):
    r = RunRecord(n_cells=3, n_tiles=1, slide="/data/s1.ome.tiff", outputs={"parquet": "cells.parquet"},
                  reader={"mpp": 0.5, "channels": ["DAPI"]}, future_key={"from": "a newer slidecell"})
    r.analysis_stage = AnalysisStage(status="pending")
    r.write(tmp_path / RUN_FILE)
    back = RunDir(tmp_path).record()
    assert back == r and back.future_key == {"from": "a newer slidecell"}
    assert back.slide_id == "s1" and back.analysis_stage.status == "pending"
    assert json.loads((tmp_path / RUN_FILE).read_text())["future_key"] == {"from": "a newer slidecell"}
    assert as_record(back.info()) == back and as_record(back) is back


def test_a_damaged_or_missing_record_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"not a finished slidecell run \(no run.json\)"):
        RunDir(tmp_path).record()
    (tmp_path / RUN_FILE).write_text('{"n_cells": "many"')
    with pytest.raises(InputError, match=r"run.json: not a readable slidecell record"):
        RunDir(tmp_path).record()
    (tmp_path / RUN_FILE).write_text('{"n_cells": "many"}')
    with pytest.raises(InputError, match=r"run.json: not a readable slidecell record .*n_cells"):
        RunDir(tmp_path).record()


def test_a_real_run_reads_back_typed(tmp_path):
    """A real run's record, as every reader of a run gets it (export, report, cohort)."""
    from conftest import CMU1, need
    from slidecell import load_config, run as run_slide

    out = tmp_path / "o"
    result = run_slide(need(CMU1), load_config("he-brightfield", {"roi": [0, 0, 1024, 1024]}), out, progress=False)
    run = RunDir(out)
    r = run.record()
    assert r.status == "complete" and r.n_cells == result.n_cells > 50 and r.modality == "brightfield"
    assert r.outputs["geojson"] == "cells.geojson" and r.timings_s["total"] > 0
    assert r.segmentation["backend"] == "builtin" and r.slide_id == "CMU-1-Small-Region"
    assert run.config()["output"]["geojson"] is True and run.analysis() is None
    with r.open_slide() as reader:
        assert reader.dimensions == (2220, 2967)
