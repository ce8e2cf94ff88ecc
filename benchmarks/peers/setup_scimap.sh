#!/usr/bin/env bash
# scimap 2.3.6 peer in its own virtual environment (.venv-scimap): it pins zarr 2.10.3, which
# cannot co-install with squidpy >= 1.8.2, and needs numcodecs<0.16 and setuptools<81 to import.
# torch is held to the CPU wheel by a constraint (installed only if something asks for it).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-scimap
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.scimap-install-stamp"
want="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing scimap 2.3.6 into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c <(echo "torch==2.13.0") \
    "scimap==2.3.6" "numcodecs<0.16" "setuptools<81"
  echo "$want" > "$stamp"
fi
