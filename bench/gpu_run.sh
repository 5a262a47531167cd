#!/usr/bin/env bash
# Runs the training-step benchmark on a lent GPU machine with what bench/gpu_bundle.sh put in .bench-gpu/
# (see there). Extra arguments go to bench/train_step.py (default: --device cuda, bf16, batches 1,2,4,8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bench-site .bench-gpu/*.whl
export PYTHONPATH=/tmp/bench-site PYTHONUNBUFFERED=1
# fluxtrain_bench was linked against the venv of the build machine: point it at this machine's libtorch
# and the NVIDIA libraries next to it.
site="$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
LD_LIBRARY_PATH="$site/torch/lib:$(ls -d "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib 2>/dev/null | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-.}"
python3 bench/train_step.py --device cuda --bench-bin .bench-gpu/fluxtrain_bench --workdir /tmp/bench-work \
  --markdown "$out/table.md" --json "$out/raw.json" "$@"
