#!/usr/bin/env bash
# The CUDA path on a GPU: one line per check, non-zero exit if any fails (see scripts/gpu_check.py, docs/gpu.md).
# Runs from the source tree with this project's virtual environment when there is one, else the machine's python3
# (which then needs torch, timm and the packages of pyproject.toml).
#   bash scripts/gpu_check.sh [--fashion-mnist DIR] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py "$@"
