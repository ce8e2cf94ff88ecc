#!/usr/bin/env bash
# Every backend (built-in models, watershed, Cellpose 3 with the offline weights) on the held-out
# sets of configs/evaluate/nuclei-heldout.yaml; writes benchmarks/evaluation/evaluation.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash benchmarks/peers/setup_cellpose.sh
.venv-cellpose/bin/slidecell evaluate configs/evaluate/nuclei-heldout.yaml --out benchmarks/evaluation "$@"
