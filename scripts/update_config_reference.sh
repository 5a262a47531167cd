#!/usr/bin/env bash
# Regenerates the option reference in docs/configuration.md (between the BEGIN/END markers) from the
# option table itself: `fluxtrain config --help-env --format markdown`. tests/e2e/test_config_cli.py
# fails when the committed reference differs from what the program prints.
#
# Usage: scripts/update_config_reference.sh [FLUXTRAIN]   (default: build/fluxtrain of this checkout)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fluxtrain="${1:-$here/build/fluxtrain}"
doc="$here/docs/configuration.md"
reference="$(mktemp)"
trap 'rm -f "$reference" "$doc.tmp"' EXIT
"$fluxtrain" config --help-env --format markdown > "$reference"
awk -v ref="$reference" '
  /^<!-- BEGIN generated reference/ { print; while ((getline line < ref) > 0) print line; skip = 1; next }
  /^<!-- END generated reference/ { skip = 0 }
  !skip { print }
' "$doc" > "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "updated $doc"
