#!/usr/bin/env bash
# Regenerates the environment-variable references in docs/runpod.md (between the BEGIN/END markers)
# from the option tables themselves: `fluxtrain train --help-env --format markdown` and
# `fluxtrain fetch-models --help-env --format markdown`. tests/e2e/test_docs.py fails when the committed
# doc differs from what the program prints.
#
# Usage: scripts/update_runpod_doc.sh [FLUXTRAIN]   (default: build/fluxtrain of this checkout)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fluxtrain="${1:-$here/build/fluxtrain}"
doc="$here/docs/runpod.md"
train_ref="$(mktemp)" models_ref="$(mktemp)"
trap 'rm -f "$train_ref" "$models_ref" "$doc.tmp"' EXIT
"$fluxtrain" train --help-env --format markdown >"$train_ref"
"$fluxtrain" fetch-models --help-env --format markdown >"$models_ref"
awk -v train="$train_ref" -v models="$models_ref" '
  function splice(file,   line) { while ((getline line < file) > 0) print line; close(file); skip = 1 }
  /^<!-- BEGIN generated train reference/ { print; splice(train); next }
  /^<!-- BEGIN generated fetch-models reference/ { print; splice(models); next }
  /^<!-- END generated/ { skip = 0 }
  !skip { print }
' "$doc" >"$doc.tmp"
for marker in "BEGIN generated train reference" "BEGIN generated fetch-models reference"; do
  grep -q "^<!-- $marker" "$doc.tmp" || { echo "$doc has no '<!-- $marker' line" >&2; exit 1; }
done
mv "$doc.tmp" "$doc"
echo "updated $doc"
