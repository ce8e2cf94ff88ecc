#!/usr/bin/env bash
# Cellpose 3.1.x peer in its own virtual environment (.venv-cellpose), with slidecell installed
# beside it so `slidecell evaluate` runs every backend in one process. cellpose 3.1 pins
# numpy<2.1, which is why it does not go into the main environment. torch stays the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-cellpose
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "cellpose==3.1.1.3" "torch==2.13.0" -e .
"$VENV/bin/python" -c "import cellpose, slidecell; print('cellpose', cellpose.version, 'slidecell', slidecell.__version__)"
