#!/usr/bin/env bash
# The pod's entrypoint (docs/runpod.md): everything comes from environment variables.
#
#   1. logs: stdout and OUTPUT_PATH/logs/pod.log (appended, so a restarted pod keeps its history);
#   2. SSH: with PUBLIC_KEY set and sshd installed, the key is authorised and sshd started;
#   3. checks every setting but the model files (`fluxtrain config --without-model-files`), so a
#      misspelt variable fails in a second, before any download;
#   4. downloads the missing model files into MODEL_DIR (`fluxtrain fetch-models`; DOWNLOAD_MODELS=false
#      turns this off);
#   5. runs `fluxtrain train`, which fetches DATASET_NAME, and resumes from the newest complete state; on a pod
#      with several GPUs it starts one rank per GPU itself (PARAMS_NUM_PROCESSES=auto, docs/distributed.md)
#      in OUTPUT_PATH when the pod was restarted (a finished run stays finished);
#   6. KEEP_ALIVE=true keeps the container up afterwards (SSH, downloading the results).
#
# SIGTERM/SIGINT (a stopped pod) are handled from the first line on: passed to the fluxtrain command that
# runs (config, fetch-models, train), which stops at its next poll point and exits 0 (train after writing
# a state: docs/training.md "Stopping"); a signal between two commands ends the entrypoint before the
# next one. A restart carries on from what is there.
# Exit status: fluxtrain's.
set -euo pipefail

# First of all the signal traps, so that a stop at any moment is passed on or ends the start cleanly.
say() { printf '[entrypoint %s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
child=""
stop_signal=""
# shellcheck disable=SC2329  # called by the TERM/INT traps
forward() {
  stop_signal=$1
  # On stderr: a step's stdout may be redirected (settings.txt) while this runs.
  say "received SIG$1: passing it to fluxtrain, which stops cleanly (a training run saves a state first)" >&2
  if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

# Runs one fluxtrain command in the background and waits for it: bash runs a trap only between
# commands, and a trapped signal interrupts `wait`, so the traps above reach the command at once.
# Returns the command's exit status.
run_step() {
  "$@" &
  child=$!
  while kill -0 "$child" 2>/dev/null; do
    wait "$child" || true
  done
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}

# After a step before the training (or between steps): a requested stop ends the start here, with status
# 0 when the command stopped cleanly (0) or was ended by the signal itself, else the command's status.
stop_if_asked() {
  [ -n "$stop_signal" ] || return 0
  local status=${1:-0}
  case "$status" in 130 | 143) status=0 ;; esac
  say "stopped on SIG$stop_signal before the training; a restart carries on"
  exit "$status"
}

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
# tee ignores the stop signals (a terminal's Ctrl-C reaches the whole group): the last lines still arrive.
exec > >(
  trap '' INT TERM
  exec tee -a "$OUTPUT_PATH/logs/pod.log"
) 2>&1
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
stop_if_asked
say "checking the settings"
status=0
run_step "$FLUXTRAIN" config --without-model-files >"$OUTPUT_PATH/logs/settings.txt" || status=$?
stop_if_asked "$status"
[ "$status" = 0 ] || exit "$status"

if [ "$download_models" = true ]; then
  say "model files: fetching what is missing in $MODEL_DIR"
  run_step "$FLUXTRAIN" fetch-models >/dev/null || status=$?
  stop_if_asked "$status"
  [ "$status" = 0 ] || exit "$status"
fi

say "training"
run_step "$FLUXTRAIN" train "$@" || status=$?
trap - TERM INT
say "fluxtrain train exited with status $status"

if [ "$keep_alive" = true ]; then
  say "KEEP_ALIVE: the container stays up (SSH, downloads); stop the pod when done"
  trap 'exit "$status"' TERM INT
  sleep infinity &
  wait $!
fi
exit "$status"
