#!/usr/bin/env bash
# Cellpose 3.1.x peer in its own virtual environment (.venv-cellpose), with slidecell installed
# beside it so `slidecell evaluate` runs every backend in one process and the Cellpose backend's
# tests run (`pytest -m cellpose`). cellpose 3.1 pins numpy<2.1, which is why it does not go into
# the main environment. torch stays the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/make_venv.sh .venv-cellpose "cellpose 3.1" pyproject.toml "$0" -- "cellpose==3.1.1.3" "torch==2.13.0" -e ".[test]"
