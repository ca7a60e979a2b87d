#!/usr/bin/env bash
# The one device check of the bfv engine (issue 23): the torch kernels on CUDA against the numba ones on the
# CPU, bit for bit, and their timing on one Llama-3.2-1B layer. Run it on a machine with a GPU, from the
# repository root, after `bash scripts/setup.sh test` (or with a venv that has the lora extra):
#     bash scripts/gpu_check.sh            # exit 0: every product equal; prints the timings
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
exec "$PY" benchmarks/bfv_device_check.py --device cuda --rows 32 --layers 1 "$@"
