#!/usr/bin/env bash
# Creates ./.venv (once) and installs veilml into it with the given extras, e.g. `scripts/setup.sh test`.
# concrete-python depends on torch: install the CPU wheel first, or pip pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip>=24"
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".${extras:+[$extras]}"
