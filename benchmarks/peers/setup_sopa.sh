#!/usr/bin/env bash
# SOPA 2.2.11 with Cellpose 3.1 in its own virtual environment (.venv-sopa), to run it beside
# slidecell (benchmarks/peers/sopa_point14.py). torch stays the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/make_venv.sh .venv-sopa "sopa 2.2.11" "$0" -- "sopa==2.2.11" "cellpose==3.1.1.3" "torch==2.13.0" psutil
