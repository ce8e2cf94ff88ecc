"""steinbock 0.16.5's own measurement functions on the IMC crops of
``../shared/data/multiplex/imc-cytomapper`` (images + the study's cell masks), recorded as one
CSV per image in ``benchmarks/peers/steinbock/`` for tests/test_multiplex.py to compare
slidecell against. Runs in .venv-steinbock (see run_steinbock.sh), not in slidecell's
environment: steinbock pins its own scientific stack.

    .venv-steinbock/bin/python benchmarks/peers/steinbock_measure.py [DATA_DIR]
"""

import sys
from datetime import date
from importlib.metadata import version
from pathlib import Path

import tifffile
from steinbock.measurement.intensities import IntensityAggregation, measure_intensites
from steinbock.measurement.regionprops import measure_regionprops

#: channel order of these crops (cytomapper's vignette: channelNames(...) <- c(...))
CHANNELS = ["H3", "CD99", "PIN", "CD8a", "CDH"]
#: steinbock's default region properties (steinbock measure regionprops)
REGIONPROPS = ["area", "centroid", "major_axis_length", "minor_axis_length", "eccentricity"]

data = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared/data/multiplex/imc-cytomapper")
out = Path(__file__).resolve().parent / "steinbock"
out.mkdir(exist_ok=True)
for img_path in sorted(data.glob("*_imc.tiff")):
    name = img_path.name.removesuffix("_imc.tiff")
    img = tifffile.imread(img_path)  # (c, y, x) float32
    mask = tifffile.imread(data / f"{name}_mask.tiff")
    table = measure_regionprops(img, mask, REGIONPROPS)
    for agg in (IntensityAggregation.MEAN, IntensityAggregation.MEDIAN):
        part = measure_intensites(img, mask, CHANNELS, agg)
        table = table.join(part.add_prefix(f"{agg.name.lower()}:"))
    table.to_csv(out / f"{name}.csv", float_format="%.9g")
    print(f"{name}: {len(table)} cells, {img.shape[0]} channels -> {out / (name + '.csv')}")
(out / "README.md").write_text(
    "# steinbock's per-cell measurements of the imc-cytomapper crops\n\n"
    f"Recorded {date.today()} by `benchmarks/peers/run_steinbock.sh` with steinbock {version('steinbock')} "
    f"(scikit-image {version('scikit-image')}, numpy {version('numpy')}) in .venv-steinbock.\n"
    "Columns: steinbock's regionprops (`area`, `centroid-0` = row, `centroid-1` = column, pixel centres at "
    "integer coordinates, axes, eccentricity) and `measure_intensites` with MEAN and MEDIAN per channel.\n"
    "Derived from Damond et al. 2019 IMC data shipped with cytomapper (GPL >= 2); see "
    "../shared/data/multiplex/imc-cytomapper/PROVENANCE.txt.\n")
