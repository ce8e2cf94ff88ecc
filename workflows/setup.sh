#!/usr/bin/env bash
# Snakemake (and its SLURM executor plugin) in their own virtual environment (.venv-workflow):
# the workflow calls the slidecell command of the main environment (.venv), so Snakemake's
# dependencies never touch slidecell's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/make_venv.sh .venv-workflow "snakemake" "$0" -- "snakemake>=9,<10" "snakemake-executor-plugin-slurm>=1"
