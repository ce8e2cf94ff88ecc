#!/usr/bin/env bash
# Cellpose 3.1.x peer in its own virtual environment (.venv-cellpose), with slidecell installed
# beside it so `slidecell evaluate` runs every backend in one process and the Cellpose backend's
# tests run (`pytest -m cellpose`). cellpose 3.1 pins numpy<2.1, which is why it does not go into
# the main environment. torch stays the CPU wheel. A second run only checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-cellpose
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.slidecell-install-stamp"
want="$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing cellpose 3.1 into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "cellpose==3.1.1.3" "torch==2.13.0" -e ".[test]"
  echo "$want" > "$stamp"
fi
