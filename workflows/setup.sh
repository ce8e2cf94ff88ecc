#!/usr/bin/env bash
# Snakemake (and its SLURM executor plugin) in their own virtual environment (.venv-workflow):
# the workflow calls the slidecell command of the main environment (.venv), so Snakemake's
# dependencies never touch slidecell's. A second run only checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-workflow
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.workflow-install-stamp"
want="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "slidecell: installing snakemake into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c <(echo "torch==2.13.0") \
    "snakemake>=9,<10" "snakemake-executor-plugin-slurm>=1"
  echo "$want" > "$stamp"
fi
