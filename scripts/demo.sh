#!/usr/bin/env bash
# `make demo`. Interim form until the embedded training demo exists: write a tiny random Flux.1-dev
# model set in the real single-file layouts and show what `fluxtrain inspect` says of each file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-build}"
out="${DEMO_OUT:-$here/demo-output}"
mkdir -p "$out"
echo "[demo] writing a tiny Flux.1-dev model set (random weights, real key layouts) to $out"
PYTHONPATH="$here/tests" "${PYTHON:-python3}" -m reference.tiny_models --out "$out" --seed 0
for f in "$out"/*.safetensors; do
  echo
  echo "[demo] fluxtrain inspect $f"
  "$here/$build/fluxtrain" inspect "$f"
done
echo
echo "[demo] done: inspected $(ls "$out"/*.safetensors | wc -l) files in $out"
