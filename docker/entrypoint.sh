#!/usr/bin/env bash
# The pod's entrypoint (docs/runpod.md): everything comes from environment variables.
#
#   1. logs: stdout and OUTPUT_PATH/logs/pod.log (appended, so a restarted pod keeps its history);
#   2. SSH: with PUBLIC_KEY set and sshd installed, the key is authorised and sshd started;
#   3. checks every setting but the model files (`fluxtrain config --without-model-files`), so a
#      misspelt variable fails in a second, before any download;
#   4. downloads the missing model files into MODEL_DIR (`fluxtrain fetch-models`; DOWNLOAD_MODELS=false
#      turns this off);
#   5. runs `fluxtrain train`, which fetches DATASET_NAME, and resumes from the newest complete state
#      in OUTPUT_PATH when the pod was restarted (a finished run stays finished);
#   6. KEEP_ALIVE=true keeps the container up afterwards (SSH, downloading the results).
#
# SIGTERM/SIGINT (a stopped pod) are passed to fluxtrain, which saves a state before it exits.
# Exit status: fluxtrain's.
set -euo pipefail

FLUXTRAIN="${FLUXTRAIN:-fluxtrain}"
export OUTPUT_PATH="${OUTPUT_PATH:-/workspace/output}"
# Models baked into the image at build time (scripts/build-image.sh --models) unless MODEL_DIR is set.
if [ -z "${MODEL_DIR:-}" ]; then
  if [ -n "${FLUXTRAIN_IMAGE_MODELS:-}" ] && [ -n "$(ls -A "$FLUXTRAIN_IMAGE_MODELS" 2>/dev/null)" ]; then
    MODEL_DIR="$FLUXTRAIN_IMAGE_MODELS"
  else
    MODEL_DIR=/workspace/models
  fi
fi
export MODEL_DIR

mkdir -p "$OUTPUT_PATH/logs"
exec > >(tee -a "$OUTPUT_PATH/logs/pod.log") 2>&1
tee_pid=$!
# On exit, let tee write out the last lines before the container ends.
# shellcheck disable=SC2329  # called by the EXIT trap
finish() {
  local status=$?
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null || true
  exit "$status"
}
trap finish EXIT

say() { printf '[entrypoint %s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

is_true() {
  case "${1,,}" in
    1 | true | yes | on) return 0 ;;
    0 | false | no | off | "") return 1 ;;
    *)
      say "error: $2=\"$1\" is not a boolean; use true or false"
      exit 2
      ;;
  esac
}

say "fluxtrain $("$FLUXTRAIN" --version) starting; OUTPUT_PATH=$OUTPUT_PATH MODEL_DIR=$MODEL_DIR"

if [ -n "${PUBLIC_KEY:-}" ]; then
  if command -v sshd >/dev/null 2>&1; then
    mkdir -p "$HOME/.ssh" /run/sshd
    chmod 700 "$HOME/.ssh"
    grep -qxF "$PUBLIC_KEY" "$HOME/.ssh/authorized_keys" 2>/dev/null ||
      printf '%s\n' "$PUBLIC_KEY" >>"$HOME/.ssh/authorized_keys"
    chmod 600 "$HOME/.ssh/authorized_keys"
    [ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A >/dev/null
    "$(command -v sshd)" && say "sshd started (port 22)"
  else
    say "warning: PUBLIC_KEY is set but this image has no sshd; SSH is not available"
  fi
fi

download_models=true
is_true "${DOWNLOAD_MODELS:-true}" DOWNLOAD_MODELS || download_models=false
keep_alive=false
is_true "${KEEP_ALIVE:-false}" KEEP_ALIVE && keep_alive=true

# The folder the models are downloaded into (MODEL_DIR must name an existing folder for the check).
if [ "$download_models" = true ]; then mkdir -p "$MODEL_DIR"; fi
say "checking the settings"
"$FLUXTRAIN" config --without-model-files >"$OUTPUT_PATH/logs/settings.txt"

if [ "$download_models" = true ]; then
  say "model files: fetching what is missing in $MODEL_DIR"
  "$FLUXTRAIN" fetch-models >/dev/null
fi

say "training"
child=""
# shellcheck disable=SC2329  # called by the TERM/INT traps
forward() {
  say "received SIG$1: asking fluxtrain to save a state and stop"
  if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
"$FLUXTRAIN" train "$@" &
child=$!
status=0
# `wait` returns early when a trapped signal arrives; wait again until fluxtrain itself has exited.
while true; do
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
trap - TERM INT
say "fluxtrain train exited with status $status"

if [ "$keep_alive" = true ]; then
  say "KEEP_ALIVE: the container stays up (SSH, downloads); stop the pod when done"
  trap 'exit "$status"' TERM INT
  sleep infinity &
  wait $!
fi
exit "$status"
