#!/usr/bin/env bash
# Prints the Debian packages whose shared libraries the given programs load (one per line, sorted), so
# that a container image's final stage installs exactly the run-time half of what scripts/setup.sh
# installed for the build: libicu74, libcurl4t64, libtomlplusplus3, ... under whatever names the
# release gives them. Libraries outside the system folders (libtorch, CUDA, ROCm: the PyTorch image's
# own) are left out; the image provides them.
#
# Usage: scripts/runtime_packages.sh PROGRAM_OR_LIBRARY...
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 PROGRAM_OR_LIBRARY..." >&2; exit 2; }
libraries=()
for program in "$@"; do
  [ -e "$program" ] || { echo "$0: $program does not exist" >&2; exit 1; }
  while read -r path; do
    case "$path" in
      /lib/* | /usr/lib/*) libraries+=("$(readlink -f "$path")") ;;
    esac
  done < <(ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
done
[ "${#libraries[@]}" -gt 0 ] || exit 0
# dpkg -S knows the paths under /usr/lib as installed; on merged-/usr systems /lib is a link to it.
for library in "${libraries[@]}"; do
  dpkg -S "$library" 2>/dev/null || dpkg -S "${library#/usr}" 2>/dev/null ||
    { echo "$0: no Debian package owns $library" >&2; exit 1; }
done | cut -d: -f1 | sort -u
