"""A toy plug-in of each kind (CONTRIBUTING.md's three recipes): a slide format, an output
format and a segmentation backend, each one class and one registration, run end to end through
`slidecell run` and `slidecell export`; and plug-ins found through the entry-point group."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from slidecell import load_config, run
from slidecell.errors import ConfigError
from slidecell.export import export
from slidecell.io import READERS, open_slide, register_reader
from slidecell.io.base import SlideReader, read_clipped
from slidecell.io.registry import SUFFIXES
from slidecell.io.writers import FORMATS, OutputFormat, register_format
from slidecell.segment import BACKENDS, BackendParams, Segmenter, register


class NpyReader(SlideReader):
    """An H×W×C array saved with numpy (pass --mpp)."""

    def __init__(self, path, mpp=None, **options):
        self._setup(path, mpp, options)
        self._image = np.load(self.path, mmap_mode="r")
        h, w, c = self._image.shape
        self.level_dimensions, self.level_downsamples = ((w, h),), (1.0,)
        self.dtype, self._mpp = self._image.dtype, None
        self.channel_names = tuple(f"Channel {i}" for i in range(c))
        self.modality = "fluorescence"

    def _read_level(self, x, y, w, h, level):
        W, H = self.dimensions
        return read_clipped(x, y, w, h, W, H, 1.0, self.background_value(), self.dtype, self.n_channels,
                            lambda lx, ly, cw, ch: np.array(self._image[ly:ly + ch, lx:lx + cw]))


class TsvWriter:
    def __init__(self, path, ctx):
        self.fh = open(path, "w")
        self.header = True

    def write(self, part):
        part.plain_frame.to_csv(self.fh, sep="\t", index=False, header=self.header)
        self.header = False

    def close(self, complete):
        self.fh.close()


class ThresholdParams(BackendParams):
    threshold: float = 0.5


class ThresholdSegmenter(Segmenter):
    name = "toy-threshold"
    Params = ThresholdParams

    def segment(self, image):
        return ndi.label(image[:, :, 0] > self.params.threshold)[0].astype(np.int32)

    @property
    def tile_exact(self) -> bool:  # a pixel threshold sees the same pixels in every tile
        return True


@pytest.fixture
def toys():
    """The three toys registered for one test, and taken out of the registries after it."""
    register_reader("npy", suffixes=(".npy",))(NpyReader)
    register_format(OutputFormat("tsv", "cells.tsv", TsvWriter, description="tab-separated cells"))
    register(ThresholdSegmenter)
    yield
    READERS.pop("npy"), SUFFIXES.pop(".npy"), FORMATS.pop("tsv"), BACKENDS.pop("toy-threshold")


def blobs(path, n_side=6, size=600):
    """A fluorescence image of ``n_side``² square nuclei, one per 100 px."""
    img = np.zeros((size, size, 2), np.float32)
    step = size // n_side
    for r in range(n_side):
        for c in range(n_side):
            y, x = r * step + step // 2, c * step + step // 2
            img[y - 6:y + 6, x - 6:x + 6, 0] = 1.0
    img[:, :, 1] = 0.25
    np.save(path, img)
    return n_side * n_side


def test_three_toy_plugins_run_end_to_end(toys, tmp_path):
    n = blobs(tmp_path / "blobs.npy")
    r = open_slide(tmp_path / "blobs.npy", mpp=0.5)  # chosen by its extension
    assert isinstance(r, NpyReader) and r.channel_names == ("Channel 0", "Channel 1")
    cfg = load_config(None, {"segmentation": {"backend": "toy-threshold", "params": {"threshold": 0.5}},
                             "tissue": {"enabled": False}, "tiling": {"tile_size": 256, "overlap_um": 20},
                             "measure": {"stains": "none"}, "output": {"formats": ["tsv"]}})
    result = run(tmp_path / "blobs.npy", cfg, tmp_path / "out", mpp=0.5, progress=False)
    assert result.n_cells == n and result.n_tiles == 9
    tsv = pd.read_csv(tmp_path / "out" / "cells.tsv", sep="\t")
    parquet = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert len(tsv) == n and list(tsv["cell_id"]) == list(parquet["cell_id"])
    assert tsv["area_um2"].tolist() == pytest.approx([36.0] * n)  # 12×12 px at 0.5 µm/px
    assert tsv["mean:Channel 1"].tolist() == pytest.approx([0.25] * n)
    # the same format from the finished run
    again = export(tmp_path / "out", "tsv", tmp_path / "again.tsv")
    pd.testing.assert_frame_equal(pd.read_csv(again, sep="\t"), tsv)


def test_an_unknown_output_format_is_one_line(toys, tmp_path):
    blobs(tmp_path / "blobs.npy")
    cfg = load_config(None, {"segmentation": {"backend": "toy-threshold"}, "tissue": {"enabled": False},
                             "output": {"formats": ["nope"]}})
    with pytest.raises(ConfigError, match=r"output.formats: unknown format\(s\) \['nope'\]; registered: .*tsv"):
        run(tmp_path / "blobs.npy", cfg, tmp_path / "out", mpp=0.5, progress=False)


def test_plugins_from_entry_points(monkeypatch, tmp_path):
    """A module named in the ``slidecell.plugins`` entry-point group is imported before a
    registry is read; one that fails to import is named in one line."""
    import importlib.metadata
    import sys

    import slidecell.plugins as plugins

    module = tmp_path / "toy_plugin_mod.py"
    module.write_text("from slidecell.segment import Segmenter, register\n"
                      "@register\nclass Toy(Segmenter):\n    name = 'toy-from-entry-point'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("toy", "toy_plugin_mod", "slidecell.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "slidecell.plugins" else [])
    monkeypatch.setattr(plugins, "_LOADED", False)
    try:
        cfg = load_config(None, {"segmentation": {"backend": "toy-from-entry-point"}})
        assert cfg.segmentation.backend == "toy-from-entry-point"
    finally:
        BACKENDS.pop("toy-from-entry-point", None)
        sys.modules.pop("toy_plugin_mod", None)
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_here", "slidecell.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setattr(plugins, "_LOADED", False)
    with pytest.raises(ConfigError, match="slidecell plug-in broken .*cannot be loaded: ModuleNotFoundError"):
        plugins.load_plugins()
    monkeypatch.setattr(plugins, "_LOADED", True)
