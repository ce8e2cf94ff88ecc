"""Readers: real slides from ../shared/data and synthetic pyramids written with tifffile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import CMU1, GENERIC_TIFF, NDPI, QPTIFF, SMALLTIF, need, write_ome_pyramid, write_rgb_pyramid
from slidecell.errors import MissingPixelSizeError, SlideOpenError, SlideReadError
from slidecell.io import open_slide, resize


# -- real slides -------------------------------------------------------------------------------
def test_svs_cmu1():
    r = open_slide(need(CMU1))
    assert r.name == "tiffslide"
    assert r.dimensions == (2220, 2967)
    assert r.level_count == 1
    assert r.mpp == pytest.approx(0.499)
    assert r.channel_names == ("Red", "Green", "Blue")
    region = r.read_region(1000, 1000, 64, 32)
    assert region.shape == (32, 64, 3) and region.dtype == np.uint8
    # the same pixels through OpenSlide
    o = open_slide(CMU1, reader="openslide")
    assert np.array_equal(o.read_region(1000, 1000, 64, 32), region)


def test_svs_outside_the_slide_is_white():
    r = open_slide(need(CMU1))
    region = r.read_region(2200, 2950, 40, 40)
    assert region.shape == (40, 40, 3)
    assert (region[25:, :] == 255).all() and (region[:, 25:] == 255).all()


def test_ndpi_seven_levels():
    r = open_slide(need(NDPI))
    assert r.name == "openslide"
    assert r.level_count == 7
    assert r.dimensions == (3968, 4864)
    assert r.level_downsamples == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    assert r.mpp == pytest.approx(0.228175, rel=1e-4)
    # level choice: 1 µm/px → level 2 (0.91 µm/px), 0.5 → level 1 (0.456)
    assert r.best_level(1.0) == 2 and r.best_level(0.5) == 1 and r.best_level(0.2) == 0
    assert r.best_level(100.0) == 6
    lv3 = r.read_region(0, 0, 62, 76, level=6)
    assert lv3.shape == (76, 62, 1)
    # level 1 agrees with level 0 averaged 2x2 (same scan, different JPEG pyramid level)
    a0 = r.read_region(1600, 2000, 256, 256, 0).astype(np.float32)
    a1 = r.read_region(1600, 2000, 128, 128, 1).astype(np.float32)
    down = a0.reshape(128, 2, 128, 2, 1).mean(axis=(1, 3))
    assert np.abs(down - a1).mean() < 4.0


@pytest.mark.parametrize("name, stain, rgb", [("test3-DAPI-2-(387).ndpi", "DAPI", 2),
                                               ("test3-TRITC 2 (560).ndpi", "TRITC", 0)])
def test_ndpi_fluorescence_is_read_as_its_stain(name, stain, rgb):
    """A Hamamatsu RGB fluorescence scan: the filter record names the stain and the RGB channel
    it fills; the reader gives that one channel under the stain's name, says fluorescence, and
    `info` says what `run` will use."""
    import json

    from typer.testing import CliRunner

    from slidecell.cli import app
    from slidecell.tiling import slide_modality

    import openslide

    path = need(NDPI.parent / name)
    r = open_slide(path)
    assert r.channel_names == (stain,) and r.modality == "fluorescence" and slide_modality(r) == "fluorescence"
    assert r.channel_meta == ({"fluorophore": stain, "label": ("Red", "Green", "Blue")[rgb]},)
    region = r.read_region(1600, 2000, 64, 64)
    raw = np.asarray(openslide.OpenSlide(str(path)).read_region((1600, 2000), 0, (64, 64)))[:, :, :3]
    np.testing.assert_array_equal(region[:, :, 0], raw[:, :, rgb])
    assert raw[:, :, rgb].mean() > 5 * raw[:, :, [c for c in range(3) if c != rgb]].mean()
    out = CliRunner().invoke(app, ["info", str(path)])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["channels"] == [stain] and info["modality"] == "fluorescence"


def test_info_and_run_decide_the_modality_the_same_way(tmp_path):
    """An RGB TIFF of a dark fluorescence image that does not say what it is: `info` reports the
    modality `run` decides from the thumbnail, not the RGB reader's default."""
    import json

    from typer.testing import CliRunner

    from slidecell.cli import app

    img = np.zeros((600, 600, 3), np.uint8)
    yy, xx = np.mgrid[:600, :600]
    for cy, cx in [(100, 100), (300, 420), (480, 200)]:
        img[np.hypot(yy - cy, xx - cx) < 12, 2] = 220
    path = tmp_path / "dapi_rgb.tif"
    tifffile.imwrite(path, img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert open_slide(path).modality == "brightfield"  # the reader's default for RGB
    out = CliRunner().invoke(app, ["info", str(path)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["modality"] == "fluorescence"


def test_qptiff_channels():
    r = open_slide(need(QPTIFF))
    assert r.name == "tifffile"
    assert r.channel_names == ("DAPI", "FITC", "Cy3")
    assert r.dimensions == (1920, 1440)
    assert r.modality == "fluorescence"
    assert r.mpp == pytest.approx(0.4965, rel=1e-3)
    with tifffile.TiffFile(QPTIFF) as tif:
        raw = tif.series[0].asarray()  # (3, 1440, 1920)
    region = r.read_region(500, 600, 50, 40)
    assert np.array_equal(region, raw[:, 600:640, 500:550].transpose(1, 2, 0))


def test_generic_pyramid_tiff():
    r = open_slide(need(GENERIC_TIFF))
    assert r.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
    # the file's resolution tags say 72 dpi (352.858 µm/px): a screen placeholder, refused
    assert not r.mpp_known and r.describe()["mpp"] == pytest.approx(352.858, rel=1e-4)
    with pytest.raises(MissingPixelSizeError, match="352.9 µm per pixel.*--mpp"):
        _ = r.mpp
    assert open_slide(GENERIC_TIFF, mpp=0.25).mpp == 0.25
    o = open_slide(GENERIC_TIFF, reader="openslide")
    assert np.array_equal(o.read_region(0, 0, 75, 62, 2), r.read_region(0, 0, 75, 62, 2))


def test_tiff_without_pixel_size_needs_mpp():
    r = open_slide(need(SMALLTIF))
    assert not r.mpp_known
    with pytest.raises(MissingPixelSizeError, match="--mpp"):
        _ = r.mpp
    assert open_slide(SMALLTIF, mpp=0.5).mpp == 0.5


# -- synthetic pyramids ----------------------------------------------------------------------------
def test_ome_pyramid_named_channels(tmp_path, rng):
    data = rng.integers(0, 60000, (5, 700, 900), dtype=np.uint16)
    names = ["DAPI", "CD3", "CD8", "PanCK", "CD8"]
    pyramid = write_ome_pyramid(tmp_path / "s.ome.tif", data, names, mpp=0.325)
    r = open_slide(tmp_path / "s.ome.tif")
    assert r.name == "tifffile"
    assert r.channel_names == ("DAPI", "CD3", "CD8", "PanCK", "CD8_1")  # duplicates made unique
    assert r.mpp == pytest.approx(0.325)
    assert r.level_dimensions == ((900, 700), (450, 350), (225, 175))
    assert r.dtype == np.uint16
    assert r._pages is not None  # tiled channel pages: decoded directly, not through zarr
    for level in range(3):
        ds = 2**level
        got = r.read_region(64 * ds, 32 * ds, 40, 30, level)
        assert np.array_equal(got, pyramid[level][:, 32:62, 64:104].transpose(1, 2, 0))
    # reading at a coarser µm/px comes from the matching level without resampling
    assert np.array_equal(r.read(64 * 4, 32 * 4, 40, 30, mpp=1.3), pyramid[2][:, 32:62, 64:104].transpose(1, 2, 0))


def test_flat_ome_tiff_nm_units(tmp_path, rng):
    data = rng.integers(0, 255, (3, 100, 120), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "f.ome.tiff", data, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["Hoechst", "CD45", "Ki67"]},
        "PhysicalSizeX": 650.0, "PhysicalSizeXUnit": "nm"})
    r = open_slide(tmp_path / "f.ome.tiff")
    assert r.channel_names == ("Hoechst", "CD45", "Ki67")
    assert r.mpp == pytest.approx(0.65)
    assert r.level_count == 1
    assert np.array_equal(r.read_region(0, 0, 120, 100), data.transpose(1, 2, 0))


def test_jpeg_tiled_rgb_pyramid(tmp_path, rng):
    base = np.kron(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), np.ones((25, 25, 1), np.uint8))
    write_rgb_pyramid(tmp_path / "p.tif", base, mpp=0.25, levels=3)
    r = open_slide(tmp_path / "p.tif")
    assert r.name == "tiffslide"
    assert r.level_dimensions == ((1200, 1000), (600, 500), (300, 250))
    assert r.mpp == pytest.approx(0.25)
    region = r.read_region(300, 200, 200, 100).astype(int)
    err = np.abs(region - base[200:300, 300:500]).mean()  # JPEG (chroma-subsampled) noise
    shifted = np.abs(region - base[200:300, 325:525]).mean()  # one colour block off
    assert err < 8 and shifted > 5 * err
    o = open_slide(tmp_path / "p.tif", reader="openslide")
    assert np.array_equal(o.read_region(300, 200, 200, 100, 1), r.read_region(300, 200, 200, 100, 1))


def test_read_at_mpp_resamples(tmp_path):
    # vertical stripes 4 px wide at 0.25 µm/px → 2 px wide at 0.5 µm/px, 1.33 px at 0.75
    x = np.arange(800)
    stripes = np.where((x // 4) % 2 == 0, 200, 40).astype(np.uint8)
    img = np.broadcast_to(stripes[None, :, None], (600, 800, 3)).copy()
    write_rgb_pyramid(tmp_path / "s.tif", img, mpp=0.25, levels=1, compression="zlib")
    r = open_slide(tmp_path / "s.tif")
    half = r.read(0, 0, 400, 300, mpp=0.5)
    assert half.shape == (300, 400, 3)
    assert np.array_equal(half[0, :8, 0], [200, 200, 40, 40, 200, 200, 40, 40])
    odd = r.read(0, 0, 200, 150, mpp=1.0)  # 4:1 box average of 4-px stripes: alternating
    assert odd.shape == (150, 200, 3)
    assert set(np.unique(odd[:, :, 0])) == {40, 200}
    assert resize(np.zeros((10, 10, 5), np.uint16), 20, 30).shape == (30, 20, 5)


def test_png_and_jpeg(tmp_path, rng):
    arr = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    r = open_slide(tmp_path / "a.png", mpp=0.5)
    assert r.name == "image" and r.dimensions == (70, 50) and r.mpp == 0.5
    assert np.array_equal(r.read_region(0, 0, 70, 50), arr)
    gray = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.jpg")
    g = open_slide(tmp_path / "g.jpg")
    assert g.channel_names == ("Channel 0",) and g.modality == "fluorescence"
    with pytest.raises(MissingPixelSizeError):
        _ = g.mpp


# -- bad input -------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match="file not found"):
        open_slide(tmp_path / "nope.svs")


def test_not_a_slide(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("hello, I am text")
    with pytest.raises(SlideOpenError, match="not a TIFF"):
        open_slide(p)
    q = tmp_path / "table.csv"
    q.write_text("a,b\n1,2\n")
    with pytest.raises(SlideOpenError, match="unsupported format '.csv'.*Aperio SVS"):
        open_slide(q)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_slide(empty)
    bad_png = tmp_path / "x.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(SlideOpenError, match="not a readable image"):
        open_slide(bad_png)


@pytest.mark.parametrize("keep", [500_000, 1_500_000])
def test_truncated_svs(tmp_path, keep):
    data = need(CMU1).read_bytes()
    p = tmp_path / "cut.svs"
    p.write_bytes(data[:keep])
    with pytest.raises(SlideOpenError, match="truncated or corrupt"):
        open_slide(p)


def test_truncated_ome(tmp_path, rng):
    write_ome_pyramid(tmp_path / "s.ome.tif", rng.integers(0, 255, (2, 300, 300), dtype=np.uint8),
                      ["DAPI", "CD3"], 0.5, levels=1, compression="zlib")
    data = (tmp_path / "s.ome.tif").read_bytes()
    # an OME-TIFF written by tifffile keeps its header first: cutting the tail loses tile data
    (tmp_path / "cut.ome.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideOpenError, match="truncated or corrupt"):
        open_slide(tmp_path / "cut.ome.tif")


def test_corrupt_tile_data_is_a_read_error(tmp_path, rng):
    base = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    write_rgb_pyramid(tmp_path / "p.tif", base, mpp=0.5, levels=1)
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        off, cnt = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    raw = bytearray((tmp_path / "p.tif").read_bytes())
    raw[off : off + cnt] = b"\x00" * cnt  # wipe the first JPEG tile
    (tmp_path / "bad.tif").write_bytes(bytes(raw))
    r = open_slide(tmp_path / "bad.tif")
    with pytest.raises(SlideReadError, match="bad.tif: cannot read region"):
        r.read_region(0, 0, 100, 100)


def test_bad_mpp(tmp_path):
    with pytest.raises(SlideOpenError, match="not a microscope pixel size"):
        open_slide(need(CMU1), mpp=-1)


def _ome_with_planes(path, planes: int, listed: int, xml_ok: bool = True):
    """``planes`` uint16 pages; the first page's OME-XML lists ``listed`` channels."""
    import tifffile

    chans = "".join(f'<Channel ID="Channel:0:{i}" Name="m{i}" SamplesPerPixel="1"/>' for i in range(listed))
    tds = "".join(f'<TiffData IFD="{i}" FirstC="{i}" PlaneCount="1"/>' for i in range(listed))
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="64" SizeY="48" '
           f'SizeC="{listed}" SizeZ="1" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5">{chans}{tds}</Pixels>'
           '</Image></OME>')
    if not xml_ok:
        xml = xml.replace("</Pixels>", "</Pixel>")
    data = (np.arange(planes)[:, None, None] + 1) * np.ones((planes, 48, 64), np.uint16)
    with tifffile.TiffWriter(path) as tw:
        for i in range(planes):
            tw.write(data[i], description=xml if i == 0 else None, metadata=None)
    return data


def test_ome_channel_count_must_match_the_planes(tmp_path):
    """OME-XML listing more channels than the file's planes would invent zero-filled markers,
    fewer would drop planes: both refused naming the two counts; a matching file reads."""
    _ome_with_planes(tmp_path / "five.ome.tif", 3, 5)
    with pytest.raises(SlideOpenError, match="describes 5 image planes .* holds only 3"):
        open_slide(tmp_path / "five.ome.tif")
    _ome_with_planes(tmp_path / "two.ome.tif", 3, 2)
    with pytest.raises(SlideOpenError, match="describes 2 image planes but the file holds 3"):
        open_slide(tmp_path / "two.ome.tif")
    data = _ome_with_planes(tmp_path / "three.ome.tif", 3, 3)
    with open_slide(tmp_path / "three.ome.tif") as r:
        assert r.channel_names == ("m0", "m1", "m2") and r.mpp == 0.5
        np.testing.assert_array_equal(r.read_region(0, 0, 64, 48), np.moveaxis(data, 0, -1))


def test_malformed_ome_xml_is_named_in_a_warning(tmp_path):
    _ome_with_planes(tmp_path / "bad.ome.tif", 3, 3, xml_ok=False)
    with pytest.warns(UserWarning, match="OME-XML cannot be parsed"):
        with open_slide(tmp_path / "bad.ome.tif", mpp=0.5) as r:
            assert r.n_channels == 3


@pytest.mark.parametrize("kind", ["uint16-full", "uint16-8bit", "float-unit"])
def test_deep_rgb_brightfield_reads_as_8bit(tmp_path, kind):
    """16-bit or float RGB brightfield (full range, or 8-bit values in a wider type) reads as the
    same 8-bit image, so tissue detection and the model see it; the run finds the same cells."""
    import tifffile

    from slidecell import load_config, run

    with open_slide(need(CMU1)) as r:
        rgb = r.read_region(700, 1500, 512, 512)
    data = {"uint16-full": rgb.astype(np.uint16) * 257, "uint16-8bit": rgb.astype(np.uint16),
            "float-unit": rgb.astype(np.float32) / 255}[kind]
    tifffile.imwrite(tmp_path / "u8.tif", rgb, photometric="rgb", tile=(256, 256))
    tifffile.imwrite(tmp_path / "deep.tif", data, photometric="rgb", tile=(256, 256))
    with open_slide(tmp_path / "deep.tif", mpp=0.5) as r:
        assert r.dtype == np.uint8 and r.modality == "brightfield"
        np.testing.assert_array_equal(r.read_region(0, 0, 512, 512), rgb)
        assert (r.read_region(400, 400, 200, 200)[150:] == 255).all()  # padding beyond the edge: white
    cfg = load_config("he-brightfield", {"output": {"geojson": False, "h5ad": False}})
    a = run(tmp_path / "u8.tif", cfg, tmp_path / "a", mpp=0.5, progress=False)
    b = run(tmp_path / "deep.tif", cfg, tmp_path / "b", mpp=0.5, progress=False)
    assert a.n_cells == b.n_cells > 100
