#!/usr/bin/env bash
# Cellpose 4 (Cellpose-SAM) in its own virtual environment (.venv-cellpose4): cellpose 4 and 3
# cannot be installed side by side. torch stays the CPU wheel; PyPI's torchvision needs CUDA
# torch, so it is replaced by a stand-in (torchvision_standin/) that only satisfies the imports
# Cellpose 4 makes for training augmentations. Used by the `cellpose4` tests (random weights:
# slidecell never downloads the cpsam weights) and benchmarks/peers/cpsam_speed.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/make_venv.sh .venv-cellpose4 "cellpose 4" pyproject.toml "$0" -- "cellpose>=4,<5" "torch==2.13.0" -e ".[test]"
site="$(.venv-cellpose4/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# a reinstall (the stamp changed) brings PyPI's torchvision back over the stand-in: its metadata
# says so even when the stand-in's own files are still there
if [ ! -f "$site/torchvision/_unavailable.py" ] || compgen -G "$site/torchvision-*.dist-info" > /dev/null; then
  .venv-cellpose4/bin/python -m pip uninstall -q -y torchvision || true
  rm -rf "$site/torchvision"
  cp -r benchmarks/peers/torchvision_standin/torchvision "$site/"
fi
