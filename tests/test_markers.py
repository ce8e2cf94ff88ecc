"""Channel names from a markers file (slidecell.io.markers): MCMICRO markers.csv over OME names; a
changed markers file between a stop and a resume is refused."""

from __future__ import annotations


import numpy as np
import pytest
import tifffile

import slidecell
from slidecell.errors import SlideOpenError
from slidecell.io import open_slide

from conftest import MIBI_PANEL, write_mibitiff


def test_markers_csv_overrides_ome_names(tmp_path):
    from conftest import write_ome_pyramid

    data = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64)
    write_ome_pyramid(tmp_path / "img.ome.tif", data, ["c0", "c1", "c2"], 0.5, levels=1, tile=32)
    with open_slide(tmp_path / "img.ome.tif") as r:
        assert r.channel_names == ("c0", "c1", "c2") and r.markers_file is None
    (tmp_path / "markers.csv").write_text("cycle,marker_name\n1,DNA_1\n1,CD3\n1,CD20\n")
    with open_slide(tmp_path / "img.ome.tif") as r:  # found beside the image
        assert r.channel_names == ("DNA_1", "CD3", "CD20")
        assert r.markers_file.endswith("markers.csv") and r.channel_meta[0]["label"] == "c0"
    with open_slide(tmp_path / "img.ome.tif", markers=False) as r:
        assert r.channel_names == ("c0", "c1", "c2")
    (tmp_path / "markers.csv").write_text("marker_name\nDNA_1\nCD3\n")
    with pytest.raises(SlideOpenError, match="lists 2 markers but .* has 3 channels"):
        open_slide(tmp_path / "img.ome.tif")
    (tmp_path / "markers.csv").write_text("name_of_marker\nDNA_1\n")
    with pytest.raises(SlideOpenError, match="needs a 'marker_name' column"):
        open_slide(tmp_path / "img.ome.tif")


def test_resume_refuses_a_changed_markers_file(tmp_path):
    """The markers file names the channels: changing it between a stop and a resume is refused
    in one line (the manifest holds the channel names and the file's content hash)."""
    from slidecell.errors import OutputError

    write_mibitiff(tmp_path / "src.tiff")
    with tifffile.TiffFile(tmp_path / "src.tiff") as tf:
        stack = tf.asarray()
    from conftest import write_ome_pyramid

    write_ome_pyramid(tmp_path / "img.ome.tif", stack, [f"c{i}" for i in range(len(stack))], 0.39, levels=1, tile=32)
    names = [t for t, _ in MIBI_PANEL]
    (tmp_path / "markers.csv").write_text("marker_name\n" + "\n".join(names) + "\n")
    with pytest.raises(SlideOpenError, match=r"line\(s\) \[12\] have more fields than the header"):
        open_slide(tmp_path / "img.ome.tif")  # the HLA name holds commas
    csv_text = lambda ns: "marker_name\n" + "\n".join(f'"{n}"' for n in ns) + "\n"  # noqa: E731
    (tmp_path / "markers.csv").write_text(csv_text(names))
    with open_slide(tmp_path / "img.ome.tif") as r:
        assert list(r.channel_names) == names
    cfg = slidecell.load_config("multiplex-fluorescence", {"output": {"zarr": False, "geojson": False, "h5ad": False,
                                                                       "keep_chunks": True},
                                                            "tissue": {"enabled": False}})
    out = tmp_path / "o"
    slidecell.run(tmp_path / "img.ome.tif", cfg, out, progress=False)
    (out / "run.json").unlink()  # as if stopped after its last chunk
    swapped = list(names)  # dsDNA and HH3 swapped: the same names on other channels
    swapped[1], swapped[2] = names[2], names[1]
    (tmp_path / "markers.csv").write_text(csv_text(swapped))
    with pytest.raises(OutputError, match="channels|input_files"):
        slidecell.run(tmp_path / "img.ome.tif", cfg, out, progress=False)
