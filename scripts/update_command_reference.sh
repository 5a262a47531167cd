#!/usr/bin/env bash
# Regenerates docs/commands.md: the option reference of the program and of every command, each between
# its BEGIN/END markers, from the option tables themselves (`fluxtrain [CMD] --help-env --format markdown`).
# tests/e2e/test_docs.py fails when the committed doc differs from what the program prints.
#
# Usage: scripts/update_command_reference.sh [FLUXTRAIN]   (default: build/fluxtrain of this checkout)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fluxtrain="${1:-$here/build/fluxtrain}"
doc="$here/docs/commands.md"
commands="$("$fluxtrain" --help | awk 'toupper($0) ~ /^SUBCOMMANDS:/ { on = 1; next } on && /^  [a-z]/ { print $1 }')"
{
  cat <<'HEAD'
# Every command's options

Generated from the option tables by `scripts/update_command_reference.sh` (do not edit between the
markers). Each option is a flag, an environment variable and (where the command reads a `--config` file) a
TOML key; precedence is command line > environment > file > default. `fluxtrain CMD --help-env` prints the
same table, `fluxtrain CMD --print-config` the resolved values with their sources. The train options are
explained in [configuration.md](configuration.md).

## fluxtrain (the program, before any command)

<!-- BEGIN generated fluxtrain reference: scripts/update_command_reference.sh -->
HEAD
  "$fluxtrain" --help-env --format markdown
  echo "<!-- END generated fluxtrain reference -->"
  for command in $commands; do
    printf '\n## fluxtrain %s\n\n' "$command"
    echo "<!-- BEGIN generated $command reference: scripts/update_command_reference.sh -->"
    "$fluxtrain" "$command" --help-env --format markdown
    echo "<!-- END generated $command reference -->"
  done
} > "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "updated $doc"
