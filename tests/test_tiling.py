"""Tile plan, tissue detection and the prefetching tile stream."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import shapely

from conftest import CMU1, NDPI, need, write_rgb_pyramid
from slidecell.io import open_slide
from slidecell.io.readers import ImageReader
from slidecell.tiling import TileStream, detect_tissue, plan_tiles, working_mpp


def test_plan_covers_the_slide_exactly_once():
    r = open_slide(need(CMU1))
    plan = plan_tiles(r, mpp=0.5, tile_size=512, overlap_um=16)
    assert plan.mpp == pytest.approx(0.499)  # within 5%: the slide's own resolution, no resampling
    assert plan.scale == pytest.approx(1.0)
    assert (plan.width, plan.height) == (2220, 2967)
    assert plan.overlap == 33  # ceil(16 / 0.499)
    cores = [shapely.box(*t.core) for t in plan.tiles]
    assert len(plan.tiles) == 5 * 6 == plan.n_grid
    assert sum(c.area for c in cores) == pytest.approx(2220 * 2967)
    assert shapely.union_all(cores).equals(shapely.box(0, 0, 2220, 2967))
    for t in plan.tiles:
        x0, y0, x1, y1 = t.core
        assert t.x == max(0, x0 - 33) and t.y == max(0, y0 - 33)
        assert t.x + t.w == min(2220, x1 + 33) and t.y + t.h == min(2967, y1 + 33)
    # every point of the slide is owned by exactly one tile
    pts = np.random.default_rng(0).uniform([0, 0], [2220, 2967], (5000, 2))
    owners = np.sum([t.owns(pts[:, 0], pts[:, 1]) for t in plan.tiles], axis=0)
    assert (owners == 1).all()


def test_plan_level_choice_and_resampling():
    r = open_slide(need(NDPI))  # 0.2282 µm/px, downsamples 1..64
    assert working_mpp(r, 0.91) == pytest.approx(r.level_mpp(2))  # snapped to level 2
    assert working_mpp(r, 1.0) == 1.0  # 9% away: resample
    plan = plan_tiles(r, mpp=1.0, tile_size=256, overlap_um=10)
    assert plan.level == 2
    assert plan.scale == pytest.approx(1.0 / r.mpp)
    assert plan.width == int(3968 * r.mpp / 1.0) and plan.height == int(4864 * r.mpp / 1.0)
    t = plan.tiles[5]
    x0, y0 = plan.level0_origin(t)
    img = r.read(x0, y0, t.w, t.h, plan.mpp)
    assert img.shape == (t.h, t.w, 1)  # the DAPI scan: its one stained channel
    # the resampled tile matches level 2 scaled by 0.9127 (compare a smooth statistic)
    lv = r.read_region(x0, y0, int(t.w * plan.scale / 4), int(t.h * plan.scale / 4), 2)
    assert abs(float(img.mean()) - float(lv.mean())) < 1.0
    # a 2x coarser plan reads a coarser level
    assert plan_tiles(r, mpp=3.6).level == 4


def test_tissue_detection_cmu1():
    r = open_slide(need(CMU1))
    tissue = detect_tissue(r, thumbnail_mpp=8.0)
    assert tissue.modality == "brightfield"
    assert 0.2 < tissue.tissue_fraction < 0.6
    full = plan_tiles(r, mpp=0.5, tile_size=256)
    kept = plan_tiles(r, mpp=0.5, tile_size=256, tissue=tissue, min_tissue_fraction=0.05)
    kept_cores = {t.core for t in kept.tiles}
    skipped = [t for t in full.tiles if t.core not in kept_cores]
    assert 20 < len(skipped) < len(full.tiles) - 20
    od = lambda t: float(-np.log10(np.maximum(r.read_region(t.core[0], t.core[1], t.core[2] - t.core[0], t.core[3] - t.core[1]), 1) / 255).mean())  # noqa: E731
    # skipped tiles are background (glass), kept tiles hold stained tissue
    assert max(od(t) for t in skipped) < 0.06
    assert np.median([od(t) for t in kept.tiles]) > 0.15
    # the white top-left corner is skipped; the middle of the tissue is kept
    assert (0, 0, 256, 256) not in kept_cores
    assert any(t.owns(np.array([1100.0]), np.array([2000.0]))[0] for t in kept.tiles)


def test_tissue_detection_fluorescence():
    r = open_slide(need(NDPI))
    tissue = detect_tissue(r, thumbnail_mpp=8.0)
    assert tissue.modality == "fluorescence"  # RGB but dark background
    assert 0.05 < tissue.tissue_fraction < 0.95


def test_roi_restricts_tiles():
    r = open_slide(need(CMU1))
    roi = shapely.box(1000, 1000, 1270, 1200)
    plan = plan_tiles(r, mpp=0.5, tile_size=256, roi=roi)
    assert len(plan.tiles) == 4  # the box spans 2x2 tile cores (768..1280 x 768..1280)
    assert all(shapely.box(*t.core).intersects(roi) for t in plan.tiles)
    # the cores are cut to the box (working pixels): together exactly its pixels, so the windows
    # are the region and its context, not four whole tiles
    x0, y0 = (int(np.floor(v / plan.scale)) for v in roi.bounds[:2])
    x1, y1 = (int(np.floor(v / plan.scale)) + 1 for v in roi.bounds[2:])
    cores = np.array([t.core for t in plan.tiles])
    assert (cores[:, 0].min(), cores[:, 1].min(), cores[:, 2].max(), cores[:, 3].max()) == (x0, y0, x1, y1)
    assert ((cores[:, 2] - cores[:, 0]) * (cores[:, 3] - cores[:, 1])).sum() == (x1 - x0) * (y1 - y0)
    whole = {(t.row, t.col): t for t in plan_tiles(r, mpp=0.5, tile_size=256).tiles}
    assert plan.summary()["window_pixels"] < 0.6 * sum(whole[t.row, t.col].w * whole[t.row, t.col].h for t in plan.tiles)


class CountingReader(ImageReader):
    """In-memory slide that records how many reads were started."""

    def __init__(self, arr):
        self.path = __import__("pathlib").Path("mem.png")
        self._options, self._mpp_override, self._mpp = {}, None, 0.5
        self._image = arr
        self.level_dimensions = ((arr.shape[1], arr.shape[0]),)
        self.level_downsamples = (1.0,)
        self.dtype = arr.dtype
        self.channel_names = ("Red", "Green", "Blue")
        self.modality = "brightfield"
        self.started = 0
        self.lock = threading.Lock()

    def _read_level(self, *a):
        with self.lock:
            self.started += 1
        return super()._read_level(*a)


def test_stream_is_ordered_and_bounded(rng):
    arr = rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    r = CountingReader(arr)
    plan = plan_tiles(r, mpp=0.5, tile_size=128, overlap_um=8)
    assert len(plan.tiles) == 256
    seen, max_ahead = [], 0
    with TileStream(r, plan, workers=2, prefetch=6, parallel="threads") as stream:
        for i, (tile, img) in enumerate(stream(plan.tiles)):
            seen.append(tile.index)
            max_ahead = max(max_ahead, r.started - i)
            assert np.array_equal(img, arr[tile.y : tile.y + tile.h, tile.x : tile.x + tile.w])
    assert seen == list(range(256))
    assert max_ahead <= 7  # the prefetch window (+ the one being consumed)


def test_stream_processes_equal_threads(tmp_path, rng):
    img = rng.integers(0, 255, (1500, 1300, 3), dtype=np.uint8)
    write_rgb_pyramid(tmp_path / "p.tif", img, mpp=0.25, levels=2, compression="zlib")
    r = open_slide(tmp_path / "p.tif")
    plan = plan_tiles(r, mpp=0.5, tile_size=200, overlap_um=10)
    with TileStream(r, plan, workers=2, parallel="threads") as s:
        a = [(t.index, x) for t, x in s(plan.tiles)]
    with TileStream(r, plan, workers=2, parallel="processes") as s:
        b = [(t.index, x) for t, x in s(plan.tiles)]
    assert [i for i, _ in a] == [i for i, _ in b] == list(range(len(plan.tiles)))
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    # level 1 read directly: 0.5 µm/px is the level's own resolution
    t = plan.tiles[3]
    assert np.array_equal(a[3][1], img[::2, ::2][t.y : t.y + t.h, t.x : t.x + t.w])
