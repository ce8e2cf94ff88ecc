"""`backend: torchscript`: an exported label model (InstanSeg's convention: B×C×H×W floats in,
B×K×H×W labels out) run on tiles, with channels by name, per-slide percentile scaling, resampling
to the model's µm/px and back, and nuclei + cells from two output channels."""

import anndata as ad
import numpy as np
import pytest
import torch

import slidecell
from slidecell.errors import ConfigError
from slidecell.segment import get_segmenter

G = 16  # the toy model's grid at its own resolution


class GridLabels(torch.nn.Module):
    """Objects = pixels above 0.5 in input channel 0 (nuclei) and 1 (cells); each object's id is
    its 16-px grid square. Output channel 0: nuclei, 1: cells."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ys = torch.arange(h).view(h, 1) // 16
        xs = torch.arange(w).view(1, w) // 16
        ids = (1 + ys * ((w + 15) // 16) + xs).to(x.dtype)
        nuc = torch.where(x[:, 0] > 0.5, ids, torch.zeros_like(ids))
        cells = torch.where(x[:, 1] > 0.5, ids, torch.zeros_like(ids))
        return torch.stack([nuc, cells], 1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "grid.pt"
    torch.jit.save(torch.jit.script(GridLabels()), str(path))
    return path


def planted(size=256, scale=2):
    """At the slide's resolution (scale × the model's): DAPI squares of 6 model px inside 12-px
    membrane squares, one per 16-px grid square; a 3-channel image [CD45, DAPI, Membrane]."""
    img = np.zeros((size, size, 3), np.uint16)
    img[:, :, 0] = 7000  # a bright channel the model must not see
    n = 0
    for gy in range(0, size // scale, G):
        for gx in range(0, size // scale, G):
            if (gy // G + gx // G) % 3 == 0:
                continue
            n += 1
            y, x = gy * scale, gx * scale
            img[y + 2 * scale:y + 14 * scale, x + 2 * scale:x + 14 * scale, 2] = 4000
            img[y + 5 * scale:y + 11 * scale, x + 5 * scale:x + 11 * scale, 1] = 5000
    img[:, :, 1:] += 100
    return img, n


def test_torchscript_nuclei_and_cells_by_name_and_resolution(model_file):
    img, n = planted()
    seg = get_segmenter("torchscript", {"path": str(model_file), "model_mpp": 0.5, "channels": ["DAPI", "Membrane"],
                                        "output": "cells+nuclei", "min_area_um2": 0},
                        ["CD45", "DAPI", "Membrane"], "fluorescence", 0.25)
    seg.calibrate([img])
    nuc, cells = seg.segment(img)
    assert nuc.max() == n and cells.max() == n
    # back at the slide's resolution: 12² and 24² px squares, nuclei inside their cells
    assert set(np.bincount(nuc.ravel())[1:]) == {144}
    assert set(np.bincount(cells.ravel())[1:]) == {576}
    assert (cells[nuc > 0] > 0).all()
    # the percentiles were fitted on the slide, per channel
    lo, hi = seg.state["value_range"][0]
    assert lo == 100 and hi == 5100
    # nuclei only, and a tile of another size goes through the same model
    seg_n = get_segmenter("torchscript", {"path": str(model_file), "model_mpp": 0.5, "channels": ["DAPI", "Membrane"]},
                          ["CD45", "DAPI", "Membrane"], "fluorescence", 0.25)
    seg_n.state = dict(seg.state)
    out = seg_n.segment(img[:200, :136])
    assert out.shape == (200, 136) and out.max() > 0
    assert seg_n.objects == "nuclei" and seg.objects == "cells+nuclei"


def test_torchscript_bad_inputs(model_file, tmp_path):
    names = ["CD45", "DAPI", "Membrane"]
    with pytest.raises(ConfigError, match="not found"):
        get_segmenter("torchscript", {"path": str(tmp_path / "none.pt")}, names, "fluorescence", 0.5)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="junk.pt: not a TorchScript model"):
        get_segmenter("torchscript", {"path": str(junk)}, names, "fluorescence", 0.5)
    with pytest.raises(ConfigError, match=r"\['CD8'\] not among"):
        get_segmenter("torchscript", {"path": str(model_file), "channels": ["CD8"]}, names, "fluorescence", 0.5)
    seg = get_segmenter("torchscript", {"path": str(model_file), "channels": ["DAPI", "Membrane"]}, names,
                        "fluorescence", 0.5)
    # an all-background tile and NaNs: empty labels, no crash
    assert seg.segment(np.zeros((64, 64, 3), np.float32)).max() == 0
    nan = np.full((64, 64, 3), np.nan, np.float32)
    assert seg.segment(nan).max() == 0
    with pytest.raises(ValueError, match="2 channels"):
        seg.segment(np.zeros((64, 64, 2), np.float32))
    # a model returning one channel cannot give cells + nuclei
    bad = get_segmenter("torchscript", {"path": str(model_file), "channels": ["DAPI", "Membrane"],
                                        "output": "cells+nuclei", "cells_index": 5}, names, "fluorescence", 0.5)
    with pytest.raises(ValueError, match="output channel 5"):
        bad.segment(planted(64, 1)[0])


def test_torchscript_backend_in_a_run(model_file, tmp_path):
    """`slidecell run` with the exported model: every planted cell once, with its nucleus, across
    tile seams."""
    from conftest import write_ome_pyramid

    img, n = planted(512)
    write_ome_pyramid(tmp_path / "grid.ome.tif", img.transpose(2, 0, 1), ["CD45", "DAPI", "Membrane"], 0.25,
                      levels=1, tile=64)
    cfg = slidecell.config_from_dict({
        "tissue": {"enabled": False, "modality": "fluorescence"},
        # windows start on the planted 32-px grid (the toy model numbers objects by tile position)
        "tiling": {"mpp": 0.25, "tile_size": 256, "overlap_um": 16},
        "segmentation": {"backend": "torchscript",
                         "params": {"path": str(model_file), "model_mpp": 0.5, "channels": ["DAPI", "Membrane"],
                                    "output": "cells+nuclei"}},
        "measure": {"compartments": ["cell", "nucleus", "cytoplasm"]},
        "output": {"geojson": False, "h5ad": True, "parquet": False},
    })
    res = slidecell.run(tmp_path / "grid.ome.tif", cfg, tmp_path / "out", progress=False)
    a = ad.read_h5ad(res.outputs["h5ad"])
    assert len(a) == n
    np.testing.assert_allclose(a.obs["area_um2"], 576 * 0.25**2)
    np.testing.assert_allclose(a.obs["nucleus_area_um2"], 144 * 0.25**2)
    m = list(a.var_names).index("Membrane")
    d = list(a.var_names).index("DAPI")
    np.testing.assert_allclose(a.layers["nucleus_mean"][:, d], 5100)
    np.testing.assert_allclose(a.layers["cytoplasm_mean"][:, m], 4100)
