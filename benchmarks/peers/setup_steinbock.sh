#!/usr/bin/env bash
# steinbock 0.16.5 peer in its own virtual environment (.venv-steinbock). Only its Python
# measurement functions are used (steinbock.measurement.intensities / regionprops); they run
# without Docker. Its command line also wants napari, which is not installed. torch is held to
# the CPU wheel by a constraint (installed only if something asks for it).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-steinbock
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.steinbock-install-stamp"
want="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing steinbock 0.16.5 into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c <(echo "torch==2.13.0") "steinbock==0.16.5"
  echo "$want" > "$stamp"
fi
