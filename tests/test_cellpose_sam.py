"""The Cellpose backend's cellpose ≥ 4 (Cellpose-SAM) code path, in .venv-cellpose4 (see
benchmarks/peers/setup_cellpose4.sh; `pytest -m cellpose4`). No cpsam weights can be downloaded
here, so a randomly initialised CPSAM network is built and saved offline: this checks that the
backend drives cellpose 4's API (no `channels`/`invert` keywords, inversion as a normalisation
option, two channels on the last axis, a weights path instead of a download), not accuracy."""

import numpy as np
import pytest

from slidecell.errors import ConfigError
from slidecell.segment import get_segmenter

pytestmark = pytest.mark.cellpose4


@pytest.fixture(scope="module")
def random_cpsam(tmp_path_factory):
    from slidecell.segment.cellpose import cellpose_major

    if (cellpose_major() or 0) < 4:
        pytest.skip("needs cellpose >= 4")
    import torch
    from cellpose import vit

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cpsam") / "cpsam_random.pth"
    vit.CPSAM(dtype=torch.bfloat16).save_model(str(path))
    return path


def test_cellpose_sam_nuclei_brightfield_and_fluorescence(random_cpsam):
    rng = np.random.default_rng(0)
    rgb = rng.integers(150, 255, (64, 80, 3), dtype=np.uint8)
    seg = get_segmenter("cellpose", {"model": str(random_cpsam), "diameter_um": 8}, ["R", "G", "B"], "brightfield", 0.5)
    assert seg.major >= 4 and seg.brightfield
    out = seg.segment(rgb)  # inverted grey image through normalize={"invert": True}
    assert out.shape == (64, 80) and out.dtype == np.int32 and out.min() == 0
    fl = get_segmenter("cellpose", {"model": str(random_cpsam)}, ["DAPI"], "fluorescence", 0.5)
    dapi = rng.normal(100, 5, (64, 64, 1)).astype(np.float32)
    assert fl.segment(dapi).shape == (64, 64)
    assert fl.segment(np.zeros((0, 10, 1), np.float32)).shape == (0, 10)


def test_cellpose_sam_precision_follows_the_cpu(random_cpsam):
    """bf16 where the CPU computes it natively (or asked for), fp32 where torch would emulate it
    (a CPU without AVX512: CPSAM in bf16 was measured many times slower there, RESULTS.md)."""
    import torch

    from slidecell.segment.cellpose import use_bfloat16

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert use_bfloat16("auto", gpu=False) is native and use_bfloat16("auto", gpu=True) is True

    def weights(params):
        seg = get_segmenter("cellpose", {"model": str(random_cpsam), **params}, ["DAPI"], "fluorescence", 0.5)
        return {w.dtype for w in seg.model.net.parameters() if w.is_floating_point()}

    assert weights({}) == {torch.bfloat16 if native else torch.float32}
    assert weights({"precision": "fp32"}) == {torch.float32}
    assert weights({"precision": "bf16"}) == {torch.bfloat16}


def test_cellpose_sam_whole_cells_and_no_download(random_cpsam):
    rng = np.random.default_rng(1)
    img = rng.normal(100, 5, (96, 96, 2)).astype(np.float32)
    seg = get_segmenter("cellpose", {"model": str(random_cpsam), "cell_channels": ["Membrane"]},
                        ["DAPI", "Membrane"], "fluorescence", 0.5, ["DAPI"])
    assert seg.objects == "cells+nuclei"
    nuclei, cells = seg.segment(img)  # two channels on the last axis (channel_axis=-1)
    assert nuclei.shape == cells.shape == (96, 96)
    with pytest.raises(ConfigError, match="never downloads"):
        get_segmenter("cellpose", {"model": "cpsam"}, ["DAPI"], "fluorescence", 0.5)


def test_cellpose_sam_network_is_tile_exact(random_cpsam):
    """The seam promise at the network: CPSAM attends over each 256-px block, so a window's output
    depends on where its blocks lie; on blocks anchored to the slide (``blocks: slide``) a window
    with the backend's context gives its core exactly the whole image's flows and cell
    probability. (A random CPSAM draws no cells, so the masks cannot be compared; the flow
    dynamics after the network are local and shared with cellpose 3, whose masks are compared on
    real data in tests/test_seams.py.)"""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    img = ndi.gaussian_filter(rng.random((120, 469)), 3).astype(np.float32)[:, :, None] * 1000
    seg = get_segmenter("cellpose", {"model": str(random_cpsam)}, ["DAPI"], "fluorescence", 0.5)
    seg.calibrate([img])
    assert seg.context == 256 + 60  # one block at the model's scale + two 30-px objects
    whole = seg._flows(seg._scaled(img, "nuclear"), False, (0, 0))
    x0 = 100  # the window's own blocks (at 100, 313) are not the slide's (0, 213)
    win = seg._flows(seg._scaled(img[:, x0:], "nuclear"), False, (x0, 0))
    core = x0 + seg.context  # to the image's right edge, which both share
    np.testing.assert_allclose(win[:, core - x0:], whole[:, core:], rtol=0, atol=2e-2 * np.abs(whole).max())
    # cellpose placing the blocks in the window instead: the same pixels differ
    own = seg._flows(seg._scaled(img[:, x0:], "nuclear"), False, (0, 0))
    assert np.abs(own[:, core - x0:] - whole[:, core:]).max() > 5e-2 * np.abs(whole).max()
