#!/usr/bin/env bash
# make_venv.sh VENV "WHAT" STAMP_INPUT... -- PIP_ARGUMENTS...
# Create (or reuse) the virtual environment VENV and pip-install PIP_ARGUMENTS into it; a second
# run only compares a stamp (a hash of the STAMP_INPUT files) and returns. torch is held to the
# CPU wheel by a constraint: an unpinned torch would pull a CUDA build of several GB.
set -euo pipefail
venv="$1"; what="$2"; shift 2
inputs=()
while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
shift
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.slidecell-install-stamp"
want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing $what into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  PYTHONWARNINGS="ignore:Editable installation" "$venv/bin/python" -m pip install -q --disable-pip-version-check -c <(echo "torch==2.13.0") "$@"
  echo "$want" > "$stamp"
fi
