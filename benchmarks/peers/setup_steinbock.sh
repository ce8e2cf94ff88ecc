#!/usr/bin/env bash
# steinbock 0.16.5 peer in its own virtual environment (.venv-steinbock). Only its Python
# measurement functions are used (steinbock.measurement.intensities / regionprops); they run
# without Docker. Its command line also wants napari, which is not installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/make_venv.sh .venv-steinbock "steinbock 0.16.5" "$0" -- "steinbock==0.16.5"
