#!/usr/bin/env bash
# Create benchmarks/.venv-concrete-ml with Concrete-ML 1.9.0, for the
# Concrete-ML side of the comparison benchmark (benchmarks/concrete_ml_side.py).
#
# Idempotent: re-running only checks the venv (fast path: `import concrete.ml`
# succeeds -> exit 0). Quiet: pip output goes to benchmarks/.venv-concrete-ml.log.
# Exits non-zero on any failure.
#
# Why not a plain `pip install concrete-ml==1.9.0`?
#   concrete-ml 1.9.0 hard-pins torch==2.3.1 (Linux). Resolving that pulls a
#   multi-GB CUDA torch build from PyPI. This machine ships a CPU torch 2.13.0
#   wheel on local disk (pip's find-links), and the global pip constraint caps
#   torch<=2.14.1 anyway. So we:
#     1. install torch==2.13.0 (local CPU wheel, no download of CUDA libs);
#     2. install concrete-ml==1.9.0 with --no-deps (skips the torch pin);
#     3. install concrete-ml's other declared requirements at the versions it
#        pins (minus torch), letting pip resolve their own sub-deps normally.
#        None of them pins torch (brevitas: torch>=1.9.1, hummingbird-ml:
#        torch>1.7, concrete-python: torch>=1.13), so the on-disk torch stays.
#   Pins kept as concrete-ml 1.9.0 declares them (Python 3.11.x > 3.11.0):
#     concrete-python==2.10.0, concrete-ml-extensions==0.1.9, brevitas==0.10.2,
#     hummingbird-ml[onnx]==0.4.11, onnx==1.17.0, onnxoptimizer==0.3.13,
#     onnxruntime==1.18.0, numpy==1.26.4, pandas==2.0.3,
#     protobuf>=5.28.3,<6, scikit-learn==1.5.0, scipy>=1.10.1,
#     skops==0.5.0, skorch==0.11.0, xgboost==1.6.2,
#     typing-extensions>=4.5,<5.
#   One pin is NOT kept: setuptools==75.3.0. torch 2.13.0 requires
#   setuptools>=77.0.3 (and concrete-python wants <80), so we install
#   setuptools>=77.0.3,<80 instead (pkg_resources is still present there).
#   torch is restated as the local build "2.13.0+cpu" (PyPI has no "+cpu"
#   release), so the resolver never considers, nor downloads, PyPI's
#   526 MB CUDA-dependent torch 2.13.0 wheel.
#   The decision-tree path (sklearn -> hummingbird -> torch.onnx.export ->
#   concrete-python) is checked at the end of this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-concrete-ml"
LOG="$HERE/.venv-concrete-ml.log"
PY_BOOT="${PYTHON:-python3}"

# Smoke check: the versions import, and the decision-tree path (sklearn ->
# hummingbird -> torch.onnx.export -> concrete-python compile -> simulate)
# works, on a depth-2 tree (a few seconds; no keygen, no FHE execution).
# Note: under torch>=2.9 concrete_ml_side.py forces torch.onnx.export to the
# legacy TorchScript exporter (dynamo=False); without that, hummingbird's
# export fails with "No module named 'onnxscript'".
check() {
    "$VENV/bin/python" -c 'import concrete.ml, torch, sklearn; print("concrete-ml", concrete.ml.__version__, "torch", torch.__version__, "sklearn", sklearn.__version__)' >>"$LOG" 2>&1 &&
    "$VENV/bin/python" "$HERE/concrete_ml_side.py" --model decision_tree \
        --max-depth 2 --rows 0 --skip-keygen >/dev/null 2>>"$LOG"
}

if [ -x "$VENV/bin/python" ] && check; then
    exit 0
fi

echo "[concrete_ml_env] installing Concrete-ML 1.9.0 into $VENV (log: $LOG)" >&2
: >"$LOG"
trap 'echo "[concrete_ml_env] FAILED, see $LOG" >&2; tail -n 30 "$LOG" >&2' ERR

[ -x "$VENV/bin/python" ] || "$PY_BOOT" -m venv "$VENV" >>"$LOG" 2>&1
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 1. CPU torch from the local wheel (must be 2.13.0: any other version is a
#    multi-GB CUDA download from PyPI).
"${PIP[@]}" install "torch==2.13.0+cpu" >>"$LOG" 2>&1

# 2. Concrete-ML itself without its (torch==2.3.1) requirement list.
"${PIP[@]}" install --no-deps "concrete-ml==1.9.0" >>"$LOG" 2>&1

# 3. The rest of concrete-ml 1.9.0's requirements, at its pins. torch==2.13.0
#    is restated (as the local +cpu build) so the resolver can never replace it.
"${PIP[@]}" install \
    "torch==2.13.0+cpu" \
    "concrete-python==2.10.0" \
    "concrete-ml-extensions==0.1.9" \
    "brevitas==0.10.2" \
    "hummingbird-ml[onnx]==0.4.11" \
    "onnx==1.17.0" \
    "onnxoptimizer==0.3.13" \
    "onnxruntime==1.18.0" \
    "numpy==1.26.4" \
    "pandas==2.0.3" \
    "protobuf>=5.28.3,<6.0.0" \
    "scikit-learn==1.5.0" \
    "scipy>=1.10.1" \
    "setuptools>=77.0.3,<80" \
    "skops==0.5.0" \
    "skorch==0.11.0" \
    "xgboost==1.6.2" \
    "typing-extensions>=4.5.0,<5.0.0" \
    >>"$LOG" 2>&1

check
echo "[concrete_ml_env] ok: $(grep '^concrete-ml ' "$LOG" | tail -n 1)" >&2
