#!/usr/bin/env bash
# Packs what bench/gpu_proof.sh (and bench/gpu_run.sh) need on a lent GPU machine into ONE archive,
# .gpu-proof/bundle.tar.xz (`make gpu-bundle` builds the programs first and runs this). That machine has
# Python with PyTorch 2.11 (cu130, the libtorch this build links) and PEFT, but no diffusers, no Debian
# build or runtime packages beyond a base system and no network, and the device tool carries at most
# 64 MiB of ignored files: the archive must stay under 60 MiB (this script fails above that).
#   bin/     fluxtrain + libfluxtrain_engine.so, fluxtrain_unit_tests, fluxtrain_bench (stripped)
#   lib/     every shared library they load (ldd) that is not glibc, libstdc++/libgcc, libtorch or CUDA:
#            libpng, libjpeg, libwebp, libcurl and its TLS/compression stack, libarchive, toml++, ICU,
#            Arrow/Parquet (from the pyarrow wheel in the venv), ...
#   share/fluxtrain/assets/tokenizers   the tokenizer vocabularies (found beside bin/ by fluxtrain)
#   wheels/  diffusers and importlib_metadata (pure Python)
#   COMMIT   the commit the programs were built from
# Then, with the device tool, from the repository root:
#   run(carry=[".gpu-proof"], timeout_s=600, command="bash bench/gpu_proof.sh")
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD:-$here/build}"
# shellcheck source=/dev/null
[ -z "${VENV:-}" ] && [ -f "$build/setup.env" ] && source "$build/setup.env"
python="${PYTHON:-${VENV:+$VENV/bin/python}}"
python="${python:-python3}"
limit_mib="${GPU_BUNDLE_LIMIT_MIB:-60}"
out="$here/.gpu-proof"
stage="$out/stage"

programs=("$build/fluxtrain" "$build/libfluxtrain_engine.so" "$build/tests/fluxtrain_unit_tests"
          "$build/bench/fluxtrain_bench")
for f in "${programs[@]}"; do
  [ -f "$f" ] || { echo "gpu_bundle: no $f; build it first (make gpu-bundle builds fluxtrain, fluxtrain_engine, fluxtrain_unit_tests and fluxtrain_bench)" >&2; exit 1; }
done
rm -rf "$stage" "$out/bundle.tar.xz"
mkdir -p "$stage/bin" "$stage/lib" "$stage/wheels" "$stage/share/fluxtrain/assets"
for f in "${programs[@]}"; do strip -o "$stage/bin/$(basename "$f")" "$f"; done

# Libraries the machine has (or must not get from here): glibc, the C++ runtime, and libtorch with the
# NVIDIA libraries beside it (gpu_proof.sh puts the machine's own on LD_LIBRARY_PATH).
system_re='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libutil|libresolv|libstdc\+\+|libgcc_s)\.so'
missing=""
while read -r name path; do
  if [[ "$name" =~ $system_re ]]; then continue; fi
  case "$path" in
    */site-packages/torch/*|*/site-packages/nvidia/*) continue ;;
    "not found") missing+=" $name" ; continue ;;
  esac
  cp -L "$path" "$stage/lib/$name"
done < <(for f in "${programs[@]}"; do ldd "$f"; done | awk '$2 == "=>" {print $1, ($3 == "not" ? "not found" : $3)}' | sort -u)
[ -z "$missing" ] || { echo "gpu_bundle: ldd finds no$missing here" >&2; exit 1; }
strip --strip-unneeded "$stage"/lib/*.so* 2>/dev/null || true

cp -r "$here/assets/tokenizers" "$stage/share/fluxtrain/assets/"
diffusers_version="$("$python" -c 'import diffusers; print(diffusers.__version__)')"
"$python" -m pip download -q --no-deps --only-binary=:all: -d "$stage/wheels" "diffusers==$diffusers_version" importlib_metadata
commit="$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$here" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit+=" +changes"
echo "$commit" > "$stage/COMMIT"

XZ_OPT="-6 -T0" tar -C "$stage" -cJf "$out/bundle.tar.xz" .
rm -rf "$stage"
bytes=$(stat -c %s "$out/bundle.tar.xz")
echo "gpu_bundle: $out/bundle.tar.xz: $((bytes / 1048576)) MiB ($bytes bytes; limit $limit_mib MiB), commit $commit"
if [ "$bytes" -gt $((limit_mib * 1048576)) ]; then
  echo "gpu_bundle: the archive is over $limit_mib MiB: the device tool carries at most 64 MiB" >&2
  exit 1
fi
