#!/usr/bin/env bash
# fluxtrain set-up: Debian packages + a cached Python venv (torch for libtorch, test references).
#
# Prints shell assignments for the Makefile on stdout (`VENV=...`, `TORCH_PREFIX=...`, `ARROW_DIR=...`); logs
# on stderr.
#
# Environment:
#   FLUXTRAIN_VENV_CACHE  folder that holds the venvs (default ~/.cache/fluxtrain); one venv per
#                         sha256 of requirements-test.txt, so a fresh clone reuses it.
#   FLUXTRAIN_VENV        use this venv as it is (skips the cache and the install).
#   Torch_DIR             a libtorch of your own (CUDA/ROCm zip, a container's PyTorch): no venv is
#                         made for libtorch; tests that need the Python references are then skipped
#                         unless FLUXTRAIN_VENV is also set.
#   FLUXTRAIN_TORCH_PYTHON  a Python whose installed torch is the libtorch to build against (a PyTorch
#                         container image's own; `python3` is looked up on PATH): as Torch_DIR, with
#                         the prefix taken from torch.utils.cmake_prefix_path. Torch is never installed.
#   FLUXTRAIN_ARROW_DIR   a pyarrow package folder to build against (its include/, libarrow.so.N and
#                         libparquet.so.N); default: requirements-build.txt installed into the venv, or
#                         without one into $FLUXTRAIN_VENV_CACHE/build-deps-<hash> by the torch Python's pip.
#   FLUXTRAIN_PACKAGES    all (default): everything, tests and the sanitizer build included; build:
#                         only what building the program needs (the container images, docker/).
#   FLUXTRAIN_SKIP_APT=1  do not touch Debian packages.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*" >&2; }

# Why each package (see docs/dependencies.md):
apt_packages=(
  build-essential cmake ninja-build ccache pkg-config
  nlohmann-json3-dev   # safetensors headers, JSON configs
  libcli11-dev         # command-line parsing (declarative options)
  libicu-dev           # tokenizers: NFC, case mapping, Unicode categories, grapheme clusters
  libjpeg-dev libpng-dev libwebp-dev zlib1g-dev  # dataset images (JPEG, PNG, WebP); zlib also for PNG text chunks
  libtomlplusplus-dev  # dataset and run configs in TOML
  libcurl4-openssl-dev # dataset and model downloads (HTTP with retries and resume)
  libarchive-dev libzstd-dev  # dataset archives (zip, tar, tar.gz, tar.zst)
  libgloo-dev          # the headers of c10d's Gloo backend (data parallelism on the CPU; the library is libtorch's)
  libcpp-httplib-dev   # the live training page (MONITOR_PORT): a maintained HTTP server, not a hand-written parser
  libcairo2-dev        # sample grids and loss plots drawn as PNGs per checkpoint
  fonts-dejavu-core    # the labels of those pictures (cairo finds it through fontconfig)
)
case "${FLUXTRAIN_PACKAGES:-all}" in
  all)
    apt_packages+=(
      python3-venv         # the venv of the test references
      libgtest-dev         # unit tests
      chromium chromium-driver  # the live page's test in a real (headless) browser, over WebDriver
      clang libclang-rt-14-dev  # sanitizer + libFuzzer build of the safetensors parser tests
    ) ;;
  build) ;;
  *) log "FLUXTRAIN_PACKAGES=${FLUXTRAIN_PACKAGES}: expected all or build"; exit 1 ;;
esac

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${FLUXTRAIN_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    unknown=()
    for p in "${missing[@]}"; do
      apt-cache show --no-all-versions "$p" >/dev/null 2>&1 || unknown+=("$p")
    done
    if [ "${#unknown[@]}" -gt 0 ]; then
      log "this release has no package ${unknown[*]} ($(sed -n 's/^PRETTY_NAME=//p' /etc/os-release)):"
      log "  fluxtrain builds on Debian 12 / Ubuntu 24.04 or newer (CMake >= 3.25, toml++, a C++20 GCC)"
      exit 1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/fluxtrain-apt.log 2>&1 ||
      { cat /tmp/fluxtrain-apt.log >&2; exit 1; }
  else
    log "missing Debian packages; run:"
    log "  sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# CMakeLists.txt asks for 3.25 (Ubuntu 22.04 has 3.22).
cmake_version="$(cmake --version 2>/dev/null | sed -n '1s/^cmake version //p')"
if [ -n "$cmake_version" ] && [ "$(printf '%s\n' 3.25 "$cmake_version" | sort -V | head -1)" != 3.25 ]; then
  log "cmake $cmake_version is older than 3.25, which fluxtrain needs: use Debian 12 / Ubuntu 24.04 or newer, or put a newer cmake on PATH"
  exit 1
fi

# Real photos for tests/parity/test_photos.py: the sample images that Debian's python3-skimage ships
# (astronaut, coffee, chelsea, rocket, ...; public domain / CC0). Installing that package would pull in
# about 50 others (scipy, matplotlib, sympy, boost headers) for a few pictures, so only its data folder
# is unpacked, from the package file `apt-get download` fetches, into the cache. If the package is
# installed anyway, or this step cannot run (no network, FLUXTRAIN_SKIP_APT=1), the test uses the
# installed copy or skips with the reason.
photo_cache="${FLUXTRAIN_VENV_CACHE:-$HOME/.cache/fluxtrain}/skimage-data"
if [ "${FLUXTRAIN_PACKAGES:-all}" != build ] && [ ! -d /usr/lib/python3/dist-packages/skimage/data ] && [ ! -f "$photo_cache/.complete" ] &&
   [ "${FLUXTRAIN_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  scratch="$(mktemp -d)"
  # A fresh container has no package lists yet: refresh them once if the download fails (root only).
  if (cd "$scratch" && apt-get download -qq python3-skimage >/dev/null 2>&1) ||
     { [ "$(id -u)" = 0 ] && apt-get update -qq >&2 && (cd "$scratch" && apt-get download -qq python3-skimage >/dev/null 2>&1); }; then
    dpkg-deb -x "$scratch"/python3-skimage_*.deb "$scratch/x"
    rm -rf "$photo_cache" && mkdir -p "$photo_cache"
    cp "$scratch"/x/usr/lib/python3/dist-packages/skimage/data/*.{png,jpg} "$photo_cache"/
    touch "$photo_cache/.complete"
    log "test photos (python3-skimage's data folder) in $photo_cache"
  else
    log "could not download python3-skimage for the test photos; tests/parity/test_photos.py will skip"
  fi
  rm -rf "$scratch"
fi

req="$here/requirements-test.txt"
if [ -n "${FLUXTRAIN_VENV:-}" ]; then
  venv="$FLUXTRAIN_VENV"
elif [ -n "${Torch_DIR:-}" ] || [ -n "${FLUXTRAIN_TORCH_PYTHON:-}" ]; then
  venv=""
else
  key="$(sha256sum "$req" | cut -c1-16)"
  cache="${FLUXTRAIN_VENV_CACHE:-$HOME/.cache/fluxtrain}"
  venv="$cache/venv-$key"
  mkdir -p "$cache"
  # One installer at a time per cache (two clones set up at once share the venv).
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    log "creating Python venv $venv (torch + test references; first time only, several GB)"
    # A venv hard-codes its own path, so it is built in place; the .complete marker, written last,
    # says it is whole. An interrupted install is removed and redone.
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q -r "$req" >&2
    touch "$venv/.complete"
  fi
  # Requirements beside the venv's key, each under its own marker (a change to one reinstalls only it).
  install_extra() {  # name, file, what
    local req="$here/$2" marker
    marker="$venv/.$1-$(sha256sum "$here/$2" | cut -c1-16)"
    if [ ! -f "$marker" ]; then
      log "installing $3 into $venv ($2)"
      "$venv/bin/pip" install -q -r "$req" >&2
      touch "$marker"
    fi
  }
  install_extra build requirements-build.txt "the build requirements"
  install_extra lint requirements-lint.txt "the container linters"
  flock -u 9
fi

torch_prefix=""
if [ -n "${Torch_DIR:-}" ]; then
  torch_prefix="$Torch_DIR"
elif [ -n "${FLUXTRAIN_TORCH_PYTHON:-}" ]; then
  python="$(command -v "$FLUXTRAIN_TORCH_PYTHON")" ||
    { log "FLUXTRAIN_TORCH_PYTHON=$FLUXTRAIN_TORCH_PYTHON: no such program"; exit 1; }
  torch_prefix="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" ||
    { log "FLUXTRAIN_TORCH_PYTHON=$python: its torch cannot be imported (an image with PyTorch installed?)"; exit 1; }
  log "libtorch of $python: $torch_prefix"
else
  torch_prefix="$("$venv/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
fi
# Arrow/Parquet C++ (requirements-build.txt: the pyarrow wheel) for the Hub's dataset formats.
arrow_dir="${FLUXTRAIN_ARROW_DIR:-}"
if [ -z "$arrow_dir" ] && [ -n "$venv" ]; then
  arrow_dir="$("$venv/bin/python" -c 'import os, pyarrow; print(os.path.dirname(pyarrow.__file__))' 2>/dev/null)" ||
    arrow_dir=""
fi
if [ -z "$arrow_dir" ]; then
  cache="${FLUXTRAIN_VENV_CACHE:-$HOME/.cache/fluxtrain}"
  build_req="$here/requirements-build.txt"
  deps="$cache/build-deps-$(sha256sum "$build_req" | cut -c1-16)"
  if [ ! -f "$deps/.complete" ]; then
    python="${FLUXTRAIN_TORCH_PYTHON:-${venv:+$venv/bin/python}}"
    python="$(command -v "${python:-python3}")" || { log "no python3 to install requirements-build.txt"; exit 1; }
    log "installing requirements-build.txt into $deps with $python"
    rm -rf "$deps"
    mkdir -p "$cache"
    # --target writes only into that folder, so a system Python's "externally managed" mark does not apply.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$python" -m pip install -q --no-deps --target "$deps" -r "$build_req" >&2 ||
      { log "could not install requirements-build.txt with $python -m pip: install pip, or set FLUXTRAIN_ARROW_DIR to a pyarrow folder"; exit 1; }
    touch "$deps/.complete"
  fi
  arrow_dir="$deps/pyarrow"
fi
printf 'VENV=%q\nTORCH_PREFIX=%q\nARROW_DIR=%q\n' "$venv" "$torch_prefix" "$arrow_dir"
