#!/usr/bin/env bash
# The training-step benchmark alone on a lent GPU machine, with bench/gpu_proof.sh's bundle
# (.gpu-proof/bundle.tar.xz from `make gpu-bundle`): the device tool's
#   run(carry=[".gpu-proof"], timeout_s=600, command="bash bench/gpu_run.sh --keep-products all")
# Extra arguments go to bench/train_step.py (default: --device cuda, bf16, batches 1,2,4,8, the mid-size
# model); table.md and raw.json land in $OUT. bench/gpu_proof.sh is the whole proof (tests, e2e, 12B table).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=/tmp/gpu-proof
rm -rf "$work/bundle" && mkdir -p "$work/bundle"
tar -xJf .gpu-proof/bundle.tar.xz -C "$work/bundle"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$work"/bundle/wheels/*.whl
export PYTHONPATH="$work/site" PYTHONUNBUFFERED=1
# The bundle's programs were linked against the build machine's venv: point them at this machine's
# libtorch and the NVIDIA libraries next to it, then at the bundled libraries.
site="$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
# shellcheck disable=SC2012
LD_LIBRARY_PATH="$site/torch/lib:$(ls -d "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib 2>/dev/null | paste -sd:):$work/bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-.}"
python3 bench/train_step.py --device cuda --bench-bin "$work/bundle/bin/fluxtrain_bench" \
  --fluxtrain-bin "$work/bundle/bin/fluxtrain" --workdir "$work/bench" \
  --markdown "$out/table.md" --json "$out/raw.json" "$@"
