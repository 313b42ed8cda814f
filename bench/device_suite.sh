#!/usr/bin/env bash
# vHeat on the device at hand, one command: bench/device_suite.sh [OUT_DIR] [--mode cpu|full]
# Writes OUT_DIR/device_suite.json (OUT_DIR: the first argument, else $OUT, else ./bench_out).
# Runs from the working tree (PYTHONPATH=.) with jax, flax and optax only (interpreter: $PYTHON or python3); full mode on a GPU/TPU
# (the paper's protocol, about 6-8 minutes on one H200 by design), a reduced mode on CPU (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-bench_out}}"
shift || true
mkdir -p "$out_dir"
PYTHONPATH=. exec "${PYTHON:-python3}" bench/device_suite.py --out "$out_dir/device_suite.json" "$@"
