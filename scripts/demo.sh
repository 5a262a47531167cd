#!/usr/bin/env bash
# `make demo`. Interim form until the embedded training demo exists (issue 6): write a tiny random
# Flux.1-dev model set in the real single-file layouts with `fluxtrain make-tiny`, and show what
# `fluxtrain inspect` says of each file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-build}"
out="${DEMO_OUT:-$here/demo-output}"
fluxtrain="$here/$build/fluxtrain"
echo "[demo] fluxtrain make-tiny --out $out --seed 0"
"$fluxtrain" make-tiny --out "$out" --seed 0
for f in "$out"/*.safetensors; do
  echo
  echo "[demo] fluxtrain inspect $f"
  "$fluxtrain" inspect "$f"
done
echo
echo "[demo] done: wrote and inspected $(ls "$out"/*.safetensors | wc -l) model files in $out"
