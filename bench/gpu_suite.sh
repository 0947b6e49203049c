#!/usr/bin/env bash
# Every GPU check of the step-speed work in one run of at most 6 minutes; JSON in $OUT.
#
#   OUT=/tmp/suite bench/gpu_suite.sh            # on a GPU machine (bf16, svfap_base)
#   OUT=/tmp/suite SUITE_TINY=1 bench/gpu_suite.sh   # CPU smoke mode: svfap_micro, tiny batches
#
# Runs bench/gpu_suite.py (phases: attention equality on the device, JAX train step vs PyTorch
# twin for fine-tuning and pretraining, largest fitting fine-tuning batch, top-15 op profile) with
# a budget of SUITE_BUDGET_S seconds (default 330) inside a hard `timeout` of SUITE_TIMEOUT_S
# (default 360). Results: $OUT/gpu_suite.json (rewritten after every phase) and
# $OUT/profile_top15.md. Extra arguments go to gpu_suite.py (e.g. --peak-tflops 989).
# JAX allocates GPU memory on demand here (XLA_PYTHON_CLIENT_PREALLOCATE=false) because the
# PyTorch twin runs on the same GPU in the same process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${OUT:?set OUT to the output directory}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
args=(--out "$OUT" --budget-s "${SUITE_BUDGET_S:-330}")
if [[ "${SUITE_TINY:-0}" == 1 ]]; then
  args+=(--tiny)
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
mkdir -p "$OUT"
exec timeout --signal=TERM --kill-after=10 "${SUITE_TIMEOUT_S:-360}" \
  "$PY" bench/gpu_suite.py "${args[@]}" "$@"
