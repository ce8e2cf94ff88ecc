"""slidecell.segment.grid: a network with a block-wide term (as Cellpose's style vector) run on
slide-anchored blocks gives every pixel of a window's core the value it has on the whole slide."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from slidecell.segment.grid import context_px, run_anchored, taper


def block_net(blocks: np.ndarray) -> np.ndarray:
    """(N, C, B, B) → (N, 3, B, B): a local filter plus each block's mean (what makes a block's
    output depend on where the block lies, like Cellpose's style vector)."""
    x = blocks.astype(np.float64)
    local = ndi.uniform_filter(x[:, 0], size=(1, 5, 5))
    style = x.mean(axis=(1, 2, 3))[:, None, None]
    return np.stack([local + style, local * style, x[:, -1] - style], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def slide():
    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random((700, 820, 2)), (3, 3, 0)).astype(np.float32)
    img[:, 400:] *= 3  # a brighter half: blocks differ in their means
    return img


@pytest.mark.parametrize("scale", [1.0, 1.67, 0.8])
def test_a_window_core_matches_the_whole_slide(slide, scale):
    block, stride = 64, 53
    whole = run_anchored(block_net, slide, (0, 0), scale, block, stride, batch_size=5)
    assert whole.shape == slide.shape[:2] + (3,)
    ctx = context_px(block, scale, 0)
    for x, y, w, h in [(160, 96, 400, 320), (333, 257, 301, 250), (0, 0, 300, 300), (500, 400, 320, 300)]:
        win = run_anchored(block_net, slide[y:y + h, x:x + w], (x, y), scale, block, stride, batch_size=3)
        # the core: pixels at least ctx from an edge of the window that is not the slide's
        y0 = y + (ctx if y > 0 else 0)
        x0 = x + (ctx if x > 0 else 0)
        y1 = y + h - (ctx if y + h < slide.shape[0] else 0)
        x1 = x + w - (ctx if x + w < slide.shape[1] else 0)
        assert y1 - y0 > 20 and x1 - x0 > 20
        core = win[y0 - y:y1 - y, x0 - x:x1 - x]
        np.testing.assert_allclose(core, whole[y0:y1, x0:x1], rtol=0, atol=1e-5)
    # the block-wide term matters: the same window on a grid not anchored to the slide (its own
    # origin as the slide's) differs in its core
    x, y, w, h = 160, 96, 400, 320
    own = run_anchored(block_net, slide[y:y + h, x:x + w], (0, 0), scale, block, stride)
    assert np.abs(own[ctx:-ctx, ctx:-ctx] - whole[y + ctx:y + h - ctx, x + ctx:x + w - ctx]).max() > 1e-3


def test_blocks_blend_with_cellpose_taper():
    w = taper(224)
    assert w.shape == (224, 224)
    assert w[112, 112] == pytest.approx(1.0, abs=1e-4)
    assert w[0, 112] == pytest.approx(0.0691, abs=1e-3)  # cellpose's _taper_mask at the block's edge
    np.testing.assert_allclose(w, w.T)
    # an identity network returns the image itself (weights normalised), whatever the blocks
    img = np.random.default_rng(0).random((300, 260, 1)).astype(np.float32)
    out = run_anchored(lambda b: b, img, (37, 11), 1.0, 64, 48)
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_context_covers_a_block_and_two_objects():
    assert context_px(224, 30 / 17.96, 17.96) == int(np.ceil(224 * 17.96 / 30 + 2 * 17.96))
    assert context_px(256, 1.0, 30) == 316
