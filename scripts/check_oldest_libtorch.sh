#!/usr/bin/env bash
# Compile check: the engine against the headers of the oldest libtorch that any container image builds
# with (docker/Dockerfile.*), so that an API newer than that libtorch cannot break an image unseen.
# `make test` runs it (docs/testing.md, "The oldest libtorch").
#
# The oldest version is read from the images' base tags (pytorch/pytorch:X.Y.Z-..., and
# rocm/pytorch:..._pytorch_release_X.Y.Z). Its PyPI wheel (torch==X.Y.Z, ~900 MB, the CUDA build) is
# downloaded once with `pip download --no-deps`; only include/ and share/cmake/ are kept, in
# $FLUXTRAIN_VENV_CACHE/libtorch-X.Y.Z-headers (default ~/.cache/fluxtrain). Nothing is linked, so the
# shared libraries are not kept: TorchConfig.cmake only checks that they exist, and empty files of
# their names stand in for them.
#
# Then the project is configured against it in its own build folder (FLUXTRAIN_TESTS=OFF, no
# optimisation, ccache as in every build) and every object of the engine (fluxtrain_lib, the engine
# entry point) and of bench/ is compiled; a compiler error fails the check and names the file.
#
# Environment:
#   FLUXTRAIN_PYTHON_FOR_PIP  the Python whose pip downloads the wheel (default: python3)
#   FLUXTRAIN_OLDEST_BUILD    the build folder (default: build-oldest-libtorch in the checkout)
#   FLUXTRAIN_OLDEST_TORCH    check against this torch version instead of the images' oldest
#   JOBS                      parallel compiles (default: nproc)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[oldest-libtorch] %s\n' "$*" >&2; }
start=$SECONDS

# --- the oldest libtorch of the images ---
image_torch_version() {  # Dockerfile -> the torch version of its base image's default tag
  local file="$1" tag
  tag="$(sed -n -E 's/^ARG (ROCM_)?PYTORCH_IMAGE=(.*)$/\2/p' "$file" | head -1)"
  case "$tag" in
    pytorch/pytorch:*) sed -n -E 's/^pytorch\/pytorch:([0-9]+\.[0-9]+\.[0-9]+)-.*$/\1/p' <<<"$tag" ;;
    rocm/pytorch:*) sed -n -E 's/^rocm\/pytorch:.*_pytorch_release_([0-9]+\.[0-9]+\.[0-9]+)$/\1/p' <<<"$tag" ;;
  esac
}
versions=()
for file in "$here"/docker/Dockerfile.*; do
  v="$(image_torch_version "$file")"
  if [ -z "$v" ]; then
    log "$file: no libtorch version found: expected 'ARG PYTORCH_IMAGE=pytorch/pytorch:X.Y.Z-...' or"
    log "  'ARG ROCM_PYTORCH_IMAGE=rocm/pytorch:..._pytorch_release_X.Y.Z'; teach image_torch_version() in $0 the new form"
    exit 1
  fi
  log "$(basename "$file"): libtorch $v"
  versions+=("$v")
done
oldest="${FLUXTRAIN_OLDEST_TORCH:-$(printf '%s\n' "${versions[@]}" | sort -V | head -1)}"
[[ "$oldest" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  { log "FLUXTRAIN_OLDEST_TORCH=$oldest: expected a version X.Y.Z"; exit 1; }

# --- its headers and CMake files, cached ---
cache="${FLUXTRAIN_VENV_CACHE:-$HOME/.cache/fluxtrain}"
prefix="$cache/libtorch-$oldest-headers"
mkdir -p "$cache"
exec 9>"$cache/.lock-libtorch-headers"
flock 9
if [ ! -f "$prefix/.complete" ]; then
  python="${FLUXTRAIN_PYTHON_FOR_PIP:-python3}"
  scratch="$(mktemp -d "$cache/torch-wheel.XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  log "downloading torch==$oldest from PyPI (once; ~900 MB, only its headers and CMake files are kept)"
  "$python" -m pip download -q --no-deps --only-binary=:all: "torch==$oldest" -d "$scratch" >&2 ||
    { log "pip download torch==$oldest failed (no network? set FLUXTRAIN_PYTHON_FOR_PIP to a Python with pip)"; exit 1; }
  rm -rf "$prefix"
  "$python" - "$scratch"/torch-"$oldest"-*.whl "$prefix.partial" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if name.endswith("/"):
            continue
        if name.startswith(("torch/include/", "torch/share/cmake/")) or name == "torch/version.py":
            z.extract(info, out)
        elif name.startswith("torch/lib/") and ".so" in os.path.basename(name):
            # Nothing is linked: an empty file of the library's name satisfies TorchConfig.cmake.
            path = os.path.join(out, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
EOF
  mv "$prefix.partial" "$prefix"
  touch "$prefix/.complete"
  rm -rf "$scratch"
  trap - EXIT
  log "headers of libtorch $oldest in $prefix ($(du -sh "$prefix" | cut -f1), $((SECONDS - start)) s)"
fi
flock -u 9

# --- configure and compile the engine's objects ---
build="${FLUXTRAIN_OLDEST_BUILD:-$here/build-oldest-libtorch}"
if [ ! -f "$build/build.ninja" ] || ! grep -q "^CMAKE_PREFIX_PATH:.*=$prefix/torch/share/cmake$" "$build/CMakeCache.txt"; then
  rm -rf "$build"
  # CMAKE_BUILD_TYPE=None: no -O, no -g; only what the compiler accepts is checked.
  # ARROW_DIR: the pyarrow folder of the setup (scripts/setup.sh prints it; the engine links Arrow/Parquet).
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None -DFLUXTRAIN_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$prefix/torch/share/cmake" ${ARROW_DIR:+-DFLUXTRAIN_ARROW_DIR="$ARROW_DIR"} \
    >"$build.configure.log" 2>&1 ||
    { cat "$build.configure.log" >&2; log "configuring against libtorch $oldest failed (log above)"; exit 1; }
  mv "$build.configure.log" "$build/configure.log"
fi
# A source added since the last run joins the list only once the build files are regenerated
# (CONFIGURE_DEPENDS globs): regenerate before listing.
ninja -C "$build" build.ninja >"$build/regenerate.log" 2>&1 ||
  { cat "$build/regenerate.log" >&2; log "regenerating $build failed (log above)"; exit 1; }
mapfile -t objects < <(ninja -C "$build" -t targets all |
  sed -n -E 's/^((bench\/)?CMakeFiles\/fluxtrain_(lib|engine|bench|state_cost)\.dir\/[^:]+\.o): .*/\1/p')
[ "${#objects[@]}" -gt 0 ] || { log "$build: no engine objects among the ninja targets"; exit 1; }
log "compiling ${#objects[@]} engine and bench objects against libtorch $oldest ($build)"
compile_start=$SECONDS
if ! ninja -C "$build" -k 0 -j "${JOBS:-$(nproc)}" "${objects[@]}" >&2; then
  log "FAILED: the engine does not compile against libtorch $oldest, the oldest libtorch of docker/Dockerfile.*"
  log "  (errors above). Guard the newer API with TORCH_VERSION_MAJOR/MINOR (<torch/version.h>) and a fallback,"
  log "  as src/train/device_memory.cpp does, or move the image to a newer tag."
  exit 1
fi
log "ok: the engine compiles against libtorch $oldest (compile $((SECONDS - compile_start)) s, all $((SECONDS - start)) s)"
