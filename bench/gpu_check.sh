#!/usr/bin/env bash
# The first minutes on a GPU (a lent H200: about 8 minutes). One command:
#   bash bench/gpu_check.sh                  # on the GPU machine (carry .whl and .oracle, see below)
#   DEVICE=emulated GB=0.02 bash bench/gpu_check.sh   # the same steps on the host, to know it works
# Steps: environment, compile every family (NVRTC + ptxas report; the host builds), the GPU conformance
# suite (pytest -m gpu), kernel timings per type on GB of float32, end-to-end --profile runs on synthetic
# dense and MoE models compared byte for byte with the emulated device; everything lands in $OUT.
# The GPU machine has no network and no gguf package: carry gguf's wheel in .whl/ (`python3 -m pip
# download --no-deps -d .whl gguf==0.19.0`) and, for the oracle tests, llama.cpp's libggml-base.so in
# .oracle/ (from llama-cpp-python 0.3.36's llama_cpp/lib); both folders are git-ignored.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-0}
GB=${GB:-1.0}
OUT=${OUT:-bench/results/gpu-check-$(date +%F)}
mkdir -p "$OUT"
if ! python3 -c "import gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gq-site .whl/gguf-*.whl || exit 1
  export PYTHONPATH=/tmp/gq-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -f .oracle/libggml-base.so ] && export GPUQUANT_ORACLE_LIB_DIR=$PWD/.oracle
python3 bench/gpu_check.py env compile --out "$OUT" --device "$DEVICE" 2>&1 | tee "$OUT/steps.log"
if [ "$DEVICE" != emulated ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -rs -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu-tests.log"
fi
python3 bench/gpu_check.py kernels e2e --out "$OUT" --device "$DEVICE" --gb "$GB" 2>&1 | tee -a "$OUT/steps.log"
echo "results: $OUT/gpu_check.json"
