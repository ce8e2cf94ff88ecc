"""The shipped nucleus model: loads offline without pickle, reaches a minimum accuracy on real
annotated images, is deterministic, and handles bad input without crashing."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SHARED, STARDIST, need
from slidecell import load_config
from slidecell.errors import ConfigError
from slidecell.metrics import SetScore
from slidecell.segment import get_segmenter
from slidecell.segment.builtin.weights import SHIPPED, WEIGHTS_DIR
from slidecell.segment.builtin.model import load_weights

DSB = SHARED / "nuclei" / "dsb2018"
RGB = ("Red", "Green", "Blue")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_without_pickle(name, monkeypatch):
    path = WEIGHTS_DIR / f"{name}.safetensors"
    assert path.is_file() and path.stat().st_size <= 10 * 2**20
    assert (WEIGHTS_DIR / f"{name}.md").is_file()  # model card

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr("torch.load", forbidden)
    net, meta = load_weights(name)
    assert meta.name == name and meta.mpp == 0.5
    assert meta.extra["research_only"] is (name == "nuclei-research")
    card = (WEIGHTS_DIR / f"{name}.md").read_text()
    assert ("RESEARCH USE ONLY" in card) is (name == "nuclei-research")


def test_default_config_uses_builtin_nuclei():
    cfg = load_config(None)
    assert cfg.segmentation.backend == "builtin"
    seg = get_segmenter(cfg.segmentation.backend, cfg.segmentation.params, RGB, "brightfield", 0.5)
    assert seg.params.model == "nuclei" and not seg.research_only


def score(gt, pred):
    s = SetScore()
    s.add(gt, pred)
    return s.summary()


def test_stardist_demo_fluorescence():
    img = tifffile.imread(need(STARDIST / "img2d.tif"))
    gt = tifffile.imread(STARDIST / "mask2d.tif")
    seg = get_segmenter("builtin", {}, ["DAPI"], "fluorescence", 0.5)
    seg.calibrate([img[:, :, None]])
    pred = seg.segment(img[:, :, None])
    r = score(gt, pred)
    # shipped nuclei: F1 0.855, precision 0.951; a broken model fails F1, an over-eager one precision
    assert r["F1_50"] >= 0.78 and r["precision"] >= 0.85, r


def test_dsb2018_test_histology():
    need(DSB)
    rows = [r for r in csv.DictReader(open(DSB / "index.csv")) if r["split"] == "test" and r["kind"].startswith("histology")]
    seg = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    s = SetScore()
    for r in rows:
        img = np.asarray(Image.open(DSB / "images" / f"{r['image_id']}.png").convert("RGB"))
        gt = tifffile.imread(DSB / "labels" / f"{r['image_id']}.tif")
        s.add(gt, seg.segment(img))
    out = s.summary()
    # shipped nuclei: F1 0.724, precision 0.836
    assert out["images"] == 16 and out["F1_50"] >= 0.65 and out["precision"] >= 0.75, out


def blobs(shape=(96, 128), seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape + (3,), 235, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(12):
        cy, cx = rng.uniform(8, np.array(shape) - 8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = (70, 40, 130)
    return img


def test_deterministic_and_batch_equals_single():
    img = blobs()
    seg = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    a = seg.segment(img)
    b = seg.segment(img)
    batch = seg.segment_batch([img, blobs(seed=1), img])
    assert a.max() > 0
    assert np.array_equal(a, b) and np.array_equal(a, batch[0]) and np.array_equal(a, batch[2])


def test_onnxruntime_gives_torchs_nuclei_on_real_he(monkeypatch):
    """``runtime: onnxruntime`` runs the same network (exported in memory): on a real H&E window
    (CMU-1, 512²; synthetic nuclei without ../shared) its maps equal torch's to 1e-4 and its
    nuclei are the same pixels; a GPU or bf16 request, or a missing package, is a clear
    configuration error."""
    pytest.importorskip("onnxruntime")
    import sys

    from conftest import CMU1
    from slidecell.io import open_slide
    from slidecell.segment.builtin.model import Predictor

    if CMU1.exists():
        with open_slide(CMU1) as r:
            img = np.asarray(r.read_region(700, 1500, 512, 512))[:, :, :3]
    else:
        img = blobs((512, 512))
    torch_seg = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    ort_seg = get_segmenter("builtin", {"runtime": "onnxruntime"}, RGB, "brightfield", 0.5)
    assert ort_seg.predictor.session is not None and torch_seg.predictor.session is None
    x = np.stack([img.astype(np.float32) / 255] * 2)
    np.testing.assert_allclose(ort_seg.predictor.maps(x), torch_seg.predictor.maps(x), rtol=0, atol=1e-4)
    a, b = torch_seg.segment(img), ort_seg.segment(img)
    assert a.max() > (100 if CMU1.exists() else 10) and np.array_equal(a, b)
    with pytest.raises(ConfigError, match="CPU in fp32"):
        Predictor.load("nuclei", "cpu", "bf16", runtime="onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r'slidecell\[onnx\]'):
        Predictor.load("nuclei", "cpu", "fp32", runtime="onnxruntime")


def test_resolution_is_resampled_to_the_model():
    img = blobs()
    seg05 = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    seg025 = get_segmenter("builtin", {}, RGB, "brightfield", 0.25)
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.BILINEAR))
    a = seg05.segment(img)
    b = seg025.segment(big)
    assert b.shape == big.shape[:2]
    assert abs(int(a.max()) - int(b.max())) <= 1


def test_bad_inputs_never_crash():
    seg = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    assert seg.segment(np.full((64, 64, 3), 240, np.uint8)).max() == 0      # all background
    assert seg.segment(np.zeros((0, 10, 3), np.uint8)).shape == (0, 10)     # empty
    assert seg.segment(np.full((3, 2, 3), 200, np.uint8)).shape == (3, 2)  # tiny
    with pytest.raises(ValueError, match="channels"):
        seg.segment(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(ConfigError, match="3 channels"):
        get_segmenter("builtin", {}, ["A", "B"], "brightfield", 0.5)
    with pytest.raises(ConfigError, match="no weights file"):
        get_segmenter("builtin", {"model": "nope"}, RGB, "brightfield", 0.5)
    fl = get_segmenter("builtin", {}, ["DAPI"], "fluorescence", 0.5)
    nan = np.full((48, 48, 1), np.nan, np.float32)
    assert fl.segment(nan).max() == 0
    part = np.zeros((64, 64, 1), np.float32)
    part[20:30, 20:30] = 100
    part[:8] = np.nan
    fl.state = {}
    out = fl.segment(part)
    assert out.shape == (64, 64) and out[:8].max() == 0 and out[25, 25] > 0
    assert fl.segment(np.zeros((40, 40, 1), np.float32)).max() == 0        # constant image


def test_test_time_augmentation_is_flip_equivariant():
    """With ``tta`` the maps are the mean over the four flips: flipping the input flips the maps
    (a single pass is not equivariant); an input the network has to pad keeps its size."""
    img = blobs((96, 128))
    seg = get_segmenter("builtin", {"tta": True}, RGB, "brightfield", 0.5)
    plain = get_segmenter("builtin", {}, RGB, "brightfield", 0.5)
    a = seg.predict([img])[0]
    for axis in (0, 1):
        b = seg.predict([np.ascontiguousarray(np.flip(img, axis))])[0]
        np.testing.assert_allclose(np.flip(b, axis + 1), a, atol=1e-5)
    p = plain.predict([img])[0]
    assert np.abs(np.flip(plain.predict([np.ascontiguousarray(np.flip(img, 1))])[0], 2) - p).max() > 1e-3
    assert (seg.segment(img) > 0).sum() > 0
    assert seg.predict([blobs((120, 150))])[0].shape == (3, 120, 150)


def _disks(n=6, size=160, seed=0):
    """Nucleus-like disks (radius 6-9 px) on a dark background, values 0..1, smooth edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for _ in range(n * n):
        cy, cx, r = rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(6, 9)
        img = np.maximum(img, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1))
    return img


def test_noisy_nuclear_channels_are_smoothed_clean_ones_are_not():
    """The auto-smoothing's noise test: ion counts (Poisson, ~6 counts in a nucleus, as MIBI's HH3)
    are smoothed, also when read at twice their resolution (as the multiplex preset reads IMC);
    a clean stain is not; an explicit ``smooth_um`` wins; no samples, no crash. (That it helps:
    tests/test_seams.py's Point14 test.)"""
    from slidecell.io.base import resize
    from slidecell.segment.builtin.inputs import NOISY, noise_ratio

    clean = _disks() * 1000 + 50
    counts = np.random.default_rng(1).poisson(_disks() * 6).astype(np.float32)
    up = resize(counts[:, :, None], 320, 320)[:, :, 0]
    assert noise_ratio([clean]) < NOISY / 5
    assert noise_ratio([counts]) > 2 * NOISY
    assert noise_ratio([up], source_px=2.0) > NOISY > noise_ratio([up], source_px=1.0)  # why source_px exists
    seg = get_segmenter("builtin", {}, ["HH3"], "fluorescence", 0.5)
    assert seg.calibrate([counts[:, :, None]])["smooth_um"] == 0.75
    seg.state = {}
    assert seg.calibrate([clean[:, :, None]])["smooth_um"] == 0.0
    seg.state = {}
    assert "value_range" in seg.calibrate([])
    fixed = get_segmenter("builtin", {"smooth_um": 0.0}, ["HH3"], "fluorescence", 0.5)
    assert "smooth_um" not in fixed.calibrate([counts[:, :, None]])


@pytest.mark.cellpose
def test_cellpose_backend_when_installed():
    pytest.importorskip("cellpose")
    model = need(SHARED.parent / "models" / "cellpose-scellseg" / "scellseg_cellpose_cellpose3.pth")
    img = tifffile.imread(need(STARDIST / "img2d.tif"))[:192, :192]
    gt = tifffile.imread(STARDIST / "mask2d.tif")[:192, :192]
    seg = get_segmenter("cellpose", {"model": str(model), "diameter_um": 8.0}, ["DAPI"], "fluorescence", 0.5)
    r = score(gt, seg.segment(img[:, :, None]))
    assert r["F1_50"] >= 0.6, r
    with pytest.raises(ConfigError, match="never downloads"):
        get_segmenter("cellpose", {"model": "no-such-model"}, ["DAPI"], "fluorescence", 0.5)
    if seg.major < 4:  # cellpose 3 has no bf16 network
        with pytest.raises(ConfigError, match="bf16 needs cellpose >= 4"):
            get_segmenter("cellpose", {"model": str(model), "precision": "bf16"}, ["DAPI"], "fluorescence", 0.5)


def test_against_recorded_peers_on_dsb2018_histology(tmp_path):
    """Live scores of the shipped model, through ``slidecell run`` (the evaluation's run
    protocol), against the peers' recorded scores on the same images
    (benchmarks/evaluation/evaluation.json, written by benchmarks/run_evaluation.sh)."""
    import json

    from slidecell.evaluate import load_eval_config, load_set, run_backend
    from conftest import REPO

    need(DSB)
    recorded = json.loads((REPO / "benchmarks" / "evaluation" / "evaluation.json").read_text())["results"]
    cfg = load_eval_config(REPO / "configs" / "evaluate" / "nuclei-heldout.yaml")
    s = next(x for x in cfg.sets if x.label == "dsb2018-histology")
    b = next(x for x in cfg.backends if x.label == "nuclei")
    live, _ = run_backend(b, b.params, load_set(SHARED / "nuclei", s), s, tmp_path)
    # deterministic: the recorded run gave the same numbers
    assert live["mSA"] == pytest.approx(recorded["nuclei"][s.label]["mSA"], abs=1e-6)
    assert live["mSA"] >= recorded["watershed"][s.label]["mSA"] + 0.05
    assert live["mSA"] > recorded["cellpose-scellseg"][s.label]["mSA"]
