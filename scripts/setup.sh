#!/usr/bin/env bash
# Create .venv (if missing) and install itm with its test tools. torch is pinned to 2.13.0 and
# installed first: an unpinned torch would pull gigabytes of CUDA packages on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
echo "itm installed in $(pwd)/.venv (activate: . .venv/bin/activate)"
