#!/usr/bin/env bash
# Remakes assets/demo/ from nothing with fluxtrain itself (docs/demo.md): a randomly initialised model
# set of the demo's sizes, an autoencoder trained on random shapes, then the transformer trained from
# scratch (`fluxtrain train --network-type none`) on a captioned shapes dataset. Deterministic given the
# seed on one machine and thread count; about 17 minutes with OMP_NUM_THREADS=1 on 2 shared CPU cores
# (with two threads on cores other jobs use, the threads wait on each other: many times slower).
# Run it after `make build`.
#
#   scripts/make_demo_assets.sh [extra `fluxtrain demo --build-assets` flags, e.g. --device cuda]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-build}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fluxtrain-demo-assets.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A copy of the program: a rebuild during the hour must not swap it under the running job.
cp "$here/$build/fluxtrain" "$here/$build/libfluxtrain_engine.so" "$work/"
"$work/fluxtrain" demo --build-assets "$work/assets" --work "$work/runs" "$@"
mkdir -p "$here/assets/demo"
for f in flux1-dev.safetensors ae.safetensors clip_l.safetensors t5xxl_fp16.safetensors; do
  cp "$work/assets/$f" "$here/assets/demo/$f"
done
(cd "$here/assets/demo" && sha256sum flux1-dev.safetensors ae.safetensors clip_l.safetensors t5xxl_fp16.safetensors > SHA256SUMS)
echo "[assets] assets/demo updated:"
du -ch "$here"/assets/demo/*.safetensors | tail -1
