"""`slidecell evaluate` on a tiny synthetic labelled set: scores, sweeps, append, errors."""

import json

import pytest
import yaml

from slidecell.cli import main
from slidecell.errors import ConfigError
from slidecell.evaluate import evaluate
from test_train import make_set


def write_eval(path, root, backends):
    path.write_text(yaml.safe_dump({
        "data_root": str(root), "sweep_images": 2,
        "sets": [{"label": "toy-all", "name": "toy", "mpp": 0.5},
                 {"label": "toy-test", "name": "toy", "mpp": 0.5, "where": {"split": "test"}}],
        "backends": backends,
    }))
    return path


def test_evaluate_scores_sweeps_and_appends(tmp_path):
    root = make_set(tmp_path / "data")
    cfg = write_eval(tmp_path / "e.yaml", root, [
        {"label": "ws", "backend": "watershed", "params": {"min_area_um2": 2.0}},
        {"label": "ws-sweep", "backend": "watershed", "sweep": {"min_distance_um": [1.0, 3.0]}},
        {"label": "nuclei", "backend": "builtin"},
    ])
    res = evaluate(cfg, tmp_path / "out", only=["ws", "ws-sweep"], log=lambda m: None)
    r = res["results"]["ws"]["toy-all"]
    # synthetic disks on a flat background: the classical baseline finds them
    assert r["images"] == 6 and r["nuclei_true"] == 30 and r["F1_50"] > 0.8 and r["s_per_MP"] > 0
    assert res["results"]["ws-sweep"]["toy-test"]["chosen"]["min_distance_um"] in (1.0, 3.0)
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "out"), "-b", "nuclei", "--append"]) == 0
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert list(data["results"]) == ["ws", "ws-sweep", "nuclei"]
    md = (tmp_path / "out" / "evaluation.md").read_text()
    assert md.count("| toy-all |") == 3


def test_evaluate_errors(tmp_path):
    root = make_set(tmp_path / "data")
    bad = write_eval(tmp_path / "b.yaml", root, [{"label": "x", "backend": "watershed", "foo": 1}])
    with pytest.raises(ConfigError, match="foo"):
        evaluate(bad, log=lambda m: None)
    cfg = write_eval(tmp_path / "e.yaml", root, [{"label": "x", "backend": "watershed"}])
    with pytest.raises(ConfigError, match="not all in"):
        evaluate(cfg, only=["nope"], log=lambda m: None)
    none = tmp_path / "n.yaml"
    none.write_text(yaml.safe_dump({"data_root": str(root), "backends": [{"label": "x", "backend": "watershed"}],
                                    "sets": [{"label": "s", "name": "toy", "where": {"split": "nope"}}]}))
    with pytest.raises(ConfigError, match="selects no image"):
        evaluate(none, log=lambda m: None)
