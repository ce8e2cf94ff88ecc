#!/usr/bin/env bash
# scimap 2.3.6 peer in its own virtual environment (.venv-scimap): it pins zarr 2.10.3, which
# cannot co-install with squidpy >= 1.8.2, and needs numcodecs<0.16 and setuptools<81 to import.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/make_venv.sh .venv-scimap "scimap 2.3.6" "$0" -- "scimap==2.3.6" "numcodecs<0.16" "setuptools<81"
