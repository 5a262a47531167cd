#!/usr/bin/env bash
# Builds the fluxtrain container image (docker/Dockerfile.cuda or docker/Dockerfile.rocm) and pushes it.
#
# Usage: scripts/build-image.sh --cuda|--rocm [--tag IMAGE:TAG] [--push] [--models flux-dev|flux-schnell]
#                               [--base-variant bf16|fp8] [--t5xxl-variant fp16|fp8] [--platform P]
#                               [-- DOCKER_BUILD_ARGS...]
#   --cuda / --rocm   which Dockerfile (one is required)
#   --tag             the image name (default fluxtrain:<version>-cuda or -rocm); repeat for more tags
#   --push            push every tag after the build (docker login first)
#   --models          put the model files into the image (/models) at build time; FLUX.1-dev
#                     is gated, so HF_TOKEN must be set in this shell (handed over as a build secret,
#                     never stored in a layer). Without it, a pod downloads them into MODEL_DIR at start.
#   --base-variant / --t5xxl-variant   the fp8 variants of the transformer / T5-XXL (with --models)
#   after --           passed to `docker build` as they are (--build-arg PYTORCH_IMAGE=..., --no-cache)
#
# Environment: DOCKER (default docker; podman works too).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
docker="${DOCKER:-docker}"

die() { printf 'build-image: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

flavour="" push=false models="" base_variant="" t5_variant="" platform=""
tags=() extra=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --cuda) flavour=cuda ;;
    --rocm) flavour=rocm ;;
    --tag) [ "$#" -ge 2 ] || die "--tag needs a value"; tags+=("$2"); shift ;;
    --push) push=true ;;
    --models) [ "$#" -ge 2 ] || die "--models needs flux-dev or flux-schnell"; models="$2"; shift ;;
    --base-variant) [ "$#" -ge 2 ] || die "--base-variant needs bf16 or fp8"; base_variant="$2"; shift ;;
    --t5xxl-variant) [ "$#" -ge 2 ] || die "--t5xxl-variant needs fp16 or fp8"; t5_variant="$2"; shift ;;
    --platform) [ "$#" -ge 2 ] || die "--platform needs a value"; platform="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$flavour" ] || die "say which image: --cuda (NVIDIA) or --rocm (AMD)"
case "$models" in "" | flux-dev | flux-schnell) ;; *) die "--models '$models': expected flux-dev or flux-schnell" ;; esac
case "$base_variant" in "" | bf16 | fp8) ;; *) die "--base-variant '$base_variant': expected bf16 or fp8" ;; esac
case "$t5_variant" in "" | fp16 | fp8) ;; *) die "--t5xxl-variant '$t5_variant': expected fp16 or fp8" ;; esac
if [ -z "$models" ] && { [ -n "$base_variant" ] || [ -n "$t5_variant" ]; }; then
  die "--base-variant and --t5xxl-variant choose the files of --models; without --models the pod chooses (MODEL_BASE_VARIANT, MODEL_T5XXL_VARIANT)"
fi
if [ "${#tags[@]}" -eq 0 ]; then
  version="$(sed -n 's/^project(fluxtrain VERSION \([0-9.]*\).*/\1/p' "$here/CMakeLists.txt")"
  tags=("fluxtrain:${version:-dev}-$flavour")
fi

args=(build --file "$here/docker/Dockerfile.$flavour")
for tag in "${tags[@]}"; do args+=(--tag "$tag"); done
[ -z "$platform" ] || args+=(--platform "$platform")
if [ -n "$models" ]; then
  args+=(--build-arg "FLUXTRAIN_MODELS=$models")
  [ -z "$base_variant" ] || args+=(--build-arg "MODEL_BASE_VARIANT=$base_variant")
  [ -z "$t5_variant" ] || args+=(--build-arg "MODEL_T5XXL_VARIANT=$t5_variant")
  if [ -n "${HF_TOKEN:-}" ]; then
    args+=(--secret "id=hf_token,env=HF_TOKEN")
  elif [ "$models" = flux-dev ]; then
    die "--models flux-dev: FLUX.1-dev is gated; accept its licence at https://huggingface.co/black-forest-labs/FLUX.1-dev and set HF_TOKEN"
  fi
fi
args+=("${extra[@]}" "$here")

printf 'build-image: %s' "$docker" >&2
printf ' %q' "${args[@]}" >&2
printf '\n' >&2
DOCKER_BUILDKIT=1 "$docker" "${args[@]}"
if [ "$push" = true ]; then
  for tag in "${tags[@]}"; do "$docker" push "$tag"; done
fi
printf 'build-image: built %s\n' "${tags[*]}" >&2
