#!/usr/bin/env bash
# Record steinbock's per-cell tables for the imc-cytomapper crops (benchmarks/peers/steinbock/).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash benchmarks/peers/setup_steinbock.sh
.venv-steinbock/bin/python benchmarks/peers/steinbock_measure.py "${1:-../shared/data/multiplex/imc-cytomapper}"
