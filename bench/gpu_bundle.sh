#!/usr/bin/env bash
# Prepares .bench-gpu/ for running bench/train_step.py on a lent GPU machine, which has PyTorch 2.11
# (cu130, the same libtorch this build links) and PEFT but no diffusers, no build tools for this project's
# Debian dependencies and no network. It holds:
#   fluxtrain_bench (stripped; it needs only libtorch and the C/C++ runtime), and the wheels of diffusers
#   and importlib_metadata (pure Python).
# Then, with the device tool, from the repository root:
#   run(carry=[".bench-gpu"], timeout_s=600, command="bash bench/gpu_run.sh")
# which prints the table and leaves table.md / raw.json in $OUT.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-$here/build}"
python="${PYTHON:-python3}"
out="$here/.bench-gpu"
[ -x "$build/bench/fluxtrain_bench" ] || { echo "gpu_bundle: no $build/bench/fluxtrain_bench; build it first (cmake --build build --target fluxtrain_bench)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
strip -o "$out/fluxtrain_bench" "$build/bench/fluxtrain_bench"
diffusers_version="$("$python" -c 'import diffusers; print(diffusers.__version__)')"
"$python" -m pip download -q --no-deps --only-binary=:all: -d "$out" "diffusers==$diffusers_version" importlib_metadata
du -sh "$out"
