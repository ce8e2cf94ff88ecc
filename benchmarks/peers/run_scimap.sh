#!/usr/bin/env bash
# Record scimap's spatial_interaction table for the exemplar (benchmarks/peers/scimap/).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash benchmarks/peers/setup_scimap.sh
.venv-scimap/bin/python benchmarks/peers/scimap_interaction.py "${1:-../shared/data/cells/cycif-exemplar001}"
