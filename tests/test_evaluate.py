"""`slidecell evaluate` on a tiny synthetic labelled set: scores, sweeps, append, errors."""

import json

import numpy as np

import pytest
import yaml

from slidecell.cli import main
from slidecell.errors import ConfigError
from slidecell.evaluate import evaluate
from test_train import make_set


def write_eval(path, root, backends):
    path.write_text(yaml.safe_dump({
        "data_root": str(root), "sweep_images": 2,
        # 32 µm images are below the presets' smallest tissue piece: no tissue mask
        "sets": [{"label": "toy-all", "name": "toy", "mpp": 0.5, "overrides": {"tissue": {"enabled": False}}},
                 {"label": "toy-test", "name": "toy", "mpp": 0.5, "where": {"split": "test"},
                  "overrides": {"tissue": {"enabled": False}}},
                 {"label": "toy-down", "name": "toy", "mpp": 0.5, "protocol": "downsampled"}],
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


def test_run_protocol_scores_40x_images_at_native_resolution(tmp_path):
    """A "40x" toy set run as scanned and as a 20x scanner would give it: the outlines are
    filled in at the labels' own resolution, so every true nucleus is counted once and the
    disks are found either way; the downsampled protocol scores at half the resolution."""
    # five 3 µm nuclei (12 px at 0.25 µm/px) per image, apart from each other
    root = make_set(tmp_path / "data", n=3, size=200, radius=12,
                    centres=[(40, 40), (40, 150), (100, 95), (160, 40), (160, 150)])
    def off():
        return {"tissue": {"enabled": False}}
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_root": str(root),
        "sets": [{"label": "native", "name": "toy", "mpp": 0.25, "overrides": off()},
                 {"label": "as-20x", "name": "toy", "mpp": 0.25, "scan_mpp": 0.5, "overrides": off()},
                 {"label": "down", "name": "toy", "mpp": 0.25, "protocol": "downsampled", "eval_mpp": 0.5}],
        "backends": [{"label": "ws", "backend": "watershed", "params": {"min_area_um2": 1.0}}],
    }))
    res = evaluate(cfg, log=lambda m: None)["results"]["ws"]
    for label in ("native", "as-20x"):
        r = res[label]
        assert r["nuclei_true"] == 15 and r["images"] == 3, r
        # 3 µm nuclei: found by the watershed at both scan resolutions
        assert r["recall"] >= 0.8 and r["precision"] >= 0.8 and r["F1_50"] >= 0.8, (label, r)
    assert res["native"]["precision"] * res["native"]["nuclei_pred"] == pytest.approx(
        res["native"]["recall"] * res["native"]["nuclei_true"])
    with pytest.raises(ConfigError, match="scan_mpp"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"data_root": str(root), "backends": [{"label": "ws", "backend": "watershed"}],
                                       "sets": [{"label": "x", "name": "toy", "protocol": "downsampled",
                                                 "scan_mpp": 0.5}]}))
        evaluate(bad, log=lambda m: None)


def test_outlines_fill_exactly_their_pixels_at_any_scale():
    """Outlines of a run at half the labels' resolution come back as the same pixels ×2."""
    from slidecell.evaluate import outlines_to_labels
    from slidecell.polygons import label_polygons

    lab = np.zeros((40, 50), np.int32)
    lab[5:12, 7:20] = 1
    lab[20:31, 30:34] = 2
    lab[25, 10] = 3
    polys = label_polygons(lab, np.array([1, 2, 3]))
    same = outlines_to_labels(polys, lab.shape, 1.0)
    assert np.array_equal(same, lab)
    big = outlines_to_labels(polys, (80, 100), 0.5)
    assert np.array_equal(big, np.kron(lab, np.ones((2, 2), np.int32)))


def test_restrict_to_region_drops_predictions_outside():
    from slidecell.evaluate import restrict_to_region

    pred = np.zeros((20, 20), np.int32)
    pred[2:5, 2:5] = 1
    pred[12:16, 12:18] = 2
    region = np.zeros((20, 20), bool)
    region[:10, :10] = True
    out = restrict_to_region(pred, region)
    assert set(np.unique(out)) == {0, 1}
    assert restrict_to_region(pred, None) is pred


def test_cryonuseg_roi_zips():
    """The two public CryoNuSeg tiles: ImageJ polygons filled by pixel centre; the annotated
    part of each tile is its region."""
    from conftest import SHARED, need
    from slidecell.evaluate import EvalSet, load_set

    need(SHARED / "nuclei" / "cryonuseg")
    items = load_set(SHARED / "nuclei", EvalSet(label="c", name="cryonuseg", mpp=0.25))
    assert [it["id"] for it in items] == ["TCGA-DE-A4MA", "TCGA-S4-A8RO"]
    # one label per ROI of RoiSet.zip (59 and 117), but one ROI of the second tile lies under another
    assert [int(it["labels"].max()) for it in items] == [59, 116]
    for it in items:
        assert it["image"].shape == (512, 512, 3) and it["image"].dtype == np.uint8
        lab, region = it["labels"], it["region"]
        assert len(np.unique(lab)) == lab.max() + 1  # no ROI hidden entirely by a later one
        assert region[lab > 0].mean() > 0.99 and 0.2 < region.mean() < 0.9
