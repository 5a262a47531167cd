#!/usr/bin/env bash
# `make demo`: the embedded default job, `fluxtrain demo` (docs/demo.md). A tiny Flux model set shipped
# in assets/demo/ learns a new concept through a LoRA; samples before and after are written to
# $DEMO_OUT (default demo-output/) and the measured effect is printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-build}"
out="${DEMO_OUT:-$here/demo-output}"
exec "$here/$build/fluxtrain" demo --out "$out"
