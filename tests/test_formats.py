"""The format matrix: every format the README lists goes through `slidecell run` (the CLI) end to
end, on a real file from ../shared where there is one and on a file written as its producer
writes it otherwise, and gives cells with the channels named as the file names them.

MIRAX, Leica SCN and Ventana BIF are read by OpenSlide like NDPI; no file of theirs is available
here, so they are not in the matrix."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from conftest import CMU1, GENERIC_TIFF, MIBI_PANEL, NDPI, QPTIFF, SHARED, need, write_mibitiff, write_ome_pyramid
from slidecell.cli import app

IMC_TXT = SHARED / "multiplex" / "imc-mockdata" / "raw" / "20210305_NE_mockData2_ROI_001_1.txt"
MIBI_NAMES = [t for t, _ in MIBI_PANEL]


def nuclei_image(size=(384, 384), n=40, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A DAPI-like plane (uint16) with ``n`` nuclei (radius 7-9 px at 0.5 µm/px) and a membrane-
    like plane; returns (CYX stack, nucleus mask)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    nuc = np.zeros(size, bool)
    ring = np.zeros(size, bool)
    for _ in range(n):
        cy, cx, r = rng.uniform(20, h - 20), rng.uniform(20, w - 20), rng.uniform(7, 9)
        d = np.hypot(yy - cy, xx - cx)
        nuc |= d <= r
        ring |= (d > r + 3) & (d <= r + 5)
    dapi = (rng.normal(200, 20, size) + 3000 * nuc).clip(0, 65535).astype(np.uint16)
    mem = (rng.normal(150, 20, size) + 1500 * ring).clip(0, 65535).astype(np.uint16)
    return np.stack([dapi, mem]), nuc


def he_region() -> np.ndarray:
    from slidecell.io import open_slide

    with open_slide(need(CMU1)) as r:
        return r.read_region(600, 1200, 768, 768)


def _svs(tmp):
    return need(CMU1), ["--roi", "600,1200,768,768"], ["Red", "Green", "Blue"], 100


def _ndpi(tmp):
    return need(NDPI), ["--roi", "1000,1500,1200,1200"], ["DAPI"], 20


def _generic_tiff(tmp):
    # real file whose resolution tag is a 72 dpi placeholder: --mpp is required
    return need(GENERIC_TIFF), ["--mpp", "0.5"], ["Red", "Green", "Blue"], 3


def _ome_pyramid(tmp):
    data, _ = nuclei_image()
    write_ome_pyramid(tmp / "img.ome.tif", data, ["DAPI", "CD45"], mpp=0.5, levels=2)
    return tmp / "img.ome.tif", ["--config", "multiplex-fluorescence"], ["DAPI", "CD45"], 30


def _ome_flat(tmp):
    data, _ = nuclei_image(seed=1)
    meta = {"axes": "CYX", "Channel": {"Name": ["Hoechst", "E-cadherin"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(tmp / "flat.ome.tif", data, ome=True, metadata=meta)
    return tmp / "flat.ome.tif", ["--config", "multiplex-fluorescence"], ["Hoechst", "E-cadherin"], 30


def _qptiff(tmp):
    return need(QPTIFF), ["--config", "multiplex-fluorescence"], ["DAPI", "FITC", "Cy3"], 100


#: a field of view large enough for tissue detection (150 µm a side at 0.39 µm/px), 64 nuclei
FOV = {"size": (384, 384), "centres": [(30 + 45 * i, 30 + 45 * j) for i in range(8) for j in range(8)]}


def _mibitiff(tmp):
    write_mibitiff(tmp / "fov.tiff", **FOV)
    return tmp / "fov.tiff", ["--config", "multiplex-fluorescence"], MIBI_NAMES, 50


def _imc_txt(tmp):
    return (need(IMC_TXT), ["--config", "multiplex-fluorescence"],
            ["Ag107", "Cytoker_651", "Laminin_681", "YBX1_2987", "H3K27Ac_1977"], 20)


def _channel_folder(tmp):
    data, _ = write_mibitiff(tmp / "fov.tiff", **FOV)
    (tmp / "fov").mkdir()
    for name, page in zip(MIBI_NAMES, data):
        tifffile.imwrite(tmp / "fov" / f"{name}.tif", page)
    # the folder reader orders channels by file name
    return tmp / "fov", ["--config", "multiplex-fluorescence", "--mpp", "0.39"], sorted(MIBI_NAMES), 50


def _png(tmp):
    Image.fromarray(he_region()).save(tmp / "he.png")
    return tmp / "he.png", ["--mpp", "0.5"], ["Red", "Green", "Blue"], 100


def _jpeg(tmp):
    Image.fromarray(he_region()).save(tmp / "he.jpg", quality=92)
    return tmp / "he.jpg", ["--mpp", "0.5"], ["Red", "Green", "Blue"], 100


CASES = {"svs": _svs, "ndpi": _ndpi, "generic-tiff": _generic_tiff, "ome-tiff-pyramid": _ome_pyramid,
         "ome-tiff-flat": _ome_flat, "qptiff": _qptiff, "mibitiff": _mibitiff, "imc-txt": _imc_txt,
         "channel-folder": _channel_folder, "png": _png, "jpeg": _jpeg}


@pytest.mark.parametrize("case", list(CASES))
def test_every_listed_format_runs_end_to_end(case, tmp_path):
    path, args, channels, min_cells = CASES[case](tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--quiet", *args])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out / "cells.parquet")
    assert table.num_rows >= min_cells, (case, table.num_rows)
    means = [c.split(":", 1)[1] for c in table.column_names if c.startswith("mean:")]
    assert means == channels
