#!/usr/bin/env bash
# Run the test suite (sets up .venv first). Extra arguments go to pytest.
# Without arguments, the Cellpose backend's tests then run in their own environments
# (.venv-cellpose for cellpose 3, .venv-cellpose4 for Cellpose-SAM; see benchmarks/peers/
# setup_cellpose*.sh); SLIDECELL_SKIP_PEERS=1 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# the cohort workflow's tests call Snakemake from its own environment
bash workflows/setup.sh
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ] && [ -z "${SLIDECELL_SKIP_PEERS:-}" ]; then
  bash benchmarks/peers/setup_cellpose.sh
  .venv-cellpose/bin/python -m pytest -q -p no:cacheprovider -m cellpose
  bash benchmarks/peers/setup_cellpose4.sh
  .venv-cellpose4/bin/python -m pytest -q -p no:cacheprovider -m cellpose4
fi
