#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install slidecell into it.
# A second run only checks a stamp and returns in a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLIDECELL_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "slidecell needs Python >= 3.11"'
  echo "slidecell: creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.slidecell-install-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing dependencies into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # torch pinned to the CPU wheel: an unpinned torch pulls a CUDA build of several GB. setuptools'
  # "Editable installation ... folders with the same name as your package" notice (every flat
  # layout gets it) is filtered: slidecell/ is the package
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" "torch==2.13.0"
  echo "$want" > "$stamp"
fi
