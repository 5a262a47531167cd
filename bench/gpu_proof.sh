#!/usr/bin/env bash
# The GPU proof (docs/performance.md, "On a lent GPU"): in at most ~8 minutes on one H100/H200,
#   (a) the unit tests with CUDA paths (fluxtrain_unit_tests, gtest filter $GPU_PROOF_TESTS: Cuda.* —
#       attention stash self-check, fp8 scaled matmul against its reference, offload_checkpoints, prefetch
#       into pinned memory — and any test named *BlockSwap* / *block_swap*), plus tests/e2e/*block_swap*.py
#       when there is one and pytest is importable;
#   (b) a tiny end-to-end cache -> train -> kill -> resume -> sample with the real fluxtrain (bench/gpu_e2e.py;
#       the resumed LoRA must equal the uninterrupted run's byte for byte);
#   (c) the full-size Flux.1-dev architecture (12B, random weights) at 1280x768, batches 1, 2, 4, 8 and the
#       planner's largest: fluxtrain (fp8 base, as the seed) against diffusers + PEFT eager (bf16), step time,
#       images/s, MFU, peak memory, planner error (bench/train_step.py --one-process);
#   (d) on a machine with several GPUs, data-parallel scaling: 1 rank against one per GPU (bench/scaling.py).
# Each part has its own time limit; $OUT/gpu_proof.md is always written (a part that fails is marked FAILED
# with the tail of its output), with table.md / table.json, unit.json and e2e.json beside it.
#
#   make gpu-bundle                       # here: builds and packs .gpu-proof/bundle.tar.xz
#   run(carry=[".gpu-proof"], timeout_s=600, command="bash bench/gpu_proof.sh")   # the device tool
#   bash bench/gpu_proof.sh --cpu-smoke   # here, on the CPU, tiny sizes, the build dir's programs (CTest)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
mode=gpu
case "${1:-}" in
  --cpu-smoke) mode=cpu ;;
  "") ;;
  *) echo "usage: bash bench/gpu_proof.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
tests_filter="${GPU_PROOF_TESTS:-Cuda.*:*BlockSwap*:*Blockswap*:*block_swap*:*BlockSwapping*}"
started=$(date +%s)

if [ "$mode" = gpu ]; then
  out="${OUT:-$root/.gpu-proof/out}"
  work=/tmp/gpu-proof
  budget_a=60 budget_b=100 budget_c=300 budget_d=120
else
  out="${OUT:-$(mktemp -d /tmp/gpu-proof-smoke.XXXXXX)}"
  work="$(mktemp -d /tmp/gpu-proof-work.XXXXXX)"
  budget_a=60 budget_b=150 budget_c=150 budget_d=120
fi
mkdir -p "$out" "$work"
report="$out/gpu_proof.md"
failed=0
sections=""

# One part's result into the report (rewritten after every part, so a run cut short still leaves one).
write_report() {
  {
    echo "# GPU proof ($mode)"
    echo
    echo "GPU: $gpu_name  "
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, $(( $(date +%s) - started )) s so far  "
    echo "Programs: $programs_from"
    printf '%b' "$sections"
  } > "$report.tmp" && mv "$report.tmp" "$report"
}

# section TITLE STATUS BODY-FILE: STATUS is PASSED, FAILED (the tail of BODY-FILE is shown) or a note.
section() {
  local title="$1" status="$2" body="$3" tail_lines="${4:-40}"
  sections+="\n## $title: $status\n\n"
  if [ -s "$body" ]; then
    sections+='```\n'"$(tail -n "$tail_lines" "$body" | sed 's/\\/\\\\/g')"'\n```\n'
  fi
  [ "$status" = FAILED ] || [[ "$status" == FAILED* ]] && failed=1
  write_report
}

# --- the programs: the bundle's on a GPU machine, the build dir's for the smoke -----------------------
if [ "$mode" = gpu ]; then
  gpu_name="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  gpu_name="${gpu_name:-unknown (nvidia-smi failed)}"
  bundle="$root/.gpu-proof/bundle.tar.xz"
  commit="unknown"
  programs_from="$bundle"
  if [ ! -f "$bundle" ]; then
    echo "no $bundle: run \`make gpu-bundle\` on the build machine and carry .gpu-proof" > "$work/setup.log"
    section "setup" FAILED "$work/setup.log"
    exit 1
  fi
  rm -rf "$work/bundle" && mkdir -p "$work/bundle"
  if ! { tar -xJf "$bundle" -C "$work/bundle" &&
         python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$work"/bundle/wheels/*.whl; } \
       > "$work/setup.log" 2>&1; then
    section "setup (unpack the bundle, install the wheels)" FAILED "$work/setup.log"
    exit 1
  fi
  commit="$(cat "$work/bundle/COMMIT")"
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  python=python3
  site="$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
  # shellcheck disable=SC2012
  LD_LIBRARY_PATH="$site/torch/lib:$(ls -d "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib 2>/dev/null | paste -sd:):$work/bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  bin="$work/bundle/bin"
  fluxtrain="$bin/fluxtrain" unit_tests="$bin/fluxtrain_unit_tests" bench_bin="$bin/fluxtrain_bench"
  device=cuda
else
  gpu_name="none: CPU smoke (tiny sizes; the CUDA tests skip)"
  build="${BUILD:-$root/build}"
  # shellcheck source=/dev/null
  [ -z "${VENV:-}" ] && [ -f "$build/setup.env" ] && source "$build/setup.env"
  python="${PYTHON:-${VENV:+$VENV/bin/python}}"
  python="${python:-python3}"
  commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  programs_from="$build"
  fluxtrain="$build/fluxtrain" unit_tests="$build/tests/fluxtrain_unit_tests" bench_bin="$build/bench/fluxtrain_bench"
  device=cpu
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
write_report
echo "gpu_proof: $mode, $gpu_name, commit $commit; report $report"

# --- (a) the tests with CUDA paths ----------------------------------------------------------------------
log="$work/unit.log"
timeout "$budget_a" "$unit_tests" --gtest_filter="$tests_filter" --gtest_output="json:$out/unit.json" > "$log" 2>&1
rc=$?
passed=$(sed -nE 's/^\[  PASSED  \] ([0-9]+) tests?\..*/\1/p' "$log" | tail -1)
skipped=$(sed -nE 's/^\[  SKIPPED \] ([0-9]+) tests?,.*/\1/p' "$log" | tail -1)
summary="${passed:-0} passed, ${skipped:-0} skipped"
if [ $rc -ne 0 ]; then
  status="FAILED (exit status $rc$([ $rc -eq 124 ] && echo ", over $budget_a s"))"
elif [ $(( ${passed:-0} + ${skipped:-0} )) -eq 0 ]; then
  status="FAILED (no test matched the filter)"
elif [ "${skipped:-0}" -gt 0 ] && [ "$device" = cpu ]; then
  status="PASSED ($summary; skipped: no CUDA)"
elif [ "${skipped:-0}" -gt 0 ]; then
  status="FAILED ($summary: a CUDA test skipped on the GPU machine)"
else
  status="PASSED ($summary)"
fi
section "(a) unit tests with CUDA paths (filter $tests_filter)" "$status" "$log" 30
for py in tests/e2e/*block_swap*.py; do
  [ -f "$py" ] || continue
  log="$work/$(basename "$py" .py).log"
  if ! "$python" -c 'import pytest' 2>/dev/null; then
    echo "pytest is not importable here" > "$log"
    section "(a) $py" "not run (no pytest)" "$log"
    continue
  fi
  FLUXTRAIN_BIN="$fluxtrain" PYTHONPATH="$root/tests${PYTHONPATH:+:$PYTHONPATH}" \
    timeout "$budget_a" "$python" -m pytest -q -p no:cacheprovider "$py" > "$log" 2>&1
  rc=$?
  section "(a) $py" "$([ $rc -eq 0 ] && echo PASSED || echo "FAILED (exit status $rc)")" "$log" 30
done

# --- (b) the tiny end-to-end run ------------------------------------------------------------------------
log="$work/e2e.log"
e2e_steps=()
[ "$device" = cpu ] && e2e_steps=(--steps 8 --save-every 4)
timeout "$budget_b" "$python" bench/gpu_e2e.py --bin "$fluxtrain" --device "$device" --workdir "$work/e2e" \
  --json "$out/e2e.json" "${e2e_steps[@]}" > "$log" 2>&1
rc=$?
section "(b) cache -> train -> kill -> resume -> sample ($device)" \
  "$([ $rc -eq 0 ] && echo PASSED || echo "FAILED (exit status $rc$([ $rc -eq 124 ] && echo ", over $budget_b s"))")" "$log" 20

# --- (c) the training-step table ------------------------------------------------------------------------
log="$work/table.log"
if [ "$device" = cuda ]; then
  shape=(--hidden 3072 --heads 24 --double 19 --single 38 --context-dim 4096 --vec-dim 768 --txt-len 512
         --resolution "1280,768" --batches "1,2,4,8,planner" --warmup 1 --steps 3 --fixture-device cuda
         --fp8-base on --precision bf16)
else
  shape=(--smoke --resolution "128,64" --batches "1,2" --fp8-base on)
fi
timeout "$budget_c" "$python" bench/train_step.py --device "$device" --one-process "${shape[@]}" \
  --bench-bin "$bench_bin" --fluxtrain-bin "$fluxtrain" --python "$python" --workdir "$work/bench" \
  --markdown "$out/table.md" --json "$out/table.json" > "$log" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ -f "$out/table.md" ]; then
  # Every column of the throughput table, in every mode (the smoke's check that the table is whole).
  header="$(grep '^| batch | side |' "$out/table.md")"
  missing=""
  for column in "s/step" "images/s" "TFLOP/step" "TFLOP/s" "MFU" "peak GiB" "planner GiB" "planner error"; do
    [[ "$header" == *"| $column |"* ]] || missing+=" '$column'"
  done
  rows=$(grep -cE '^\| [0-9]+ \| (fluxtrain|eager) \|' "$out/table.md")
  if [ -n "$missing" ] || [ "$rows" -lt 2 ]; then
    echo "table.md lacks the columns$missing or has $rows rows" >> "$log"
    section "(c) full-size training step, fluxtrain vs eager" FAILED "$log"
  else
    sections+="\n## (c) full-size training step, fluxtrain vs eager: PASSED\n\n$(sed -n '/^| batch | side |/,$p' "$out/table.md")\n\n"
    sections+="The comparison table, the settings and the first-step checks: table.md; every number: table.json.\n"
    write_report
  fi
else
  section "(c) full-size training step, fluxtrain vs eager" \
    "FAILED (exit status $rc$([ $rc -eq 124 ] && echo ", over $budget_c s"))" "$log" 40
fi

# --- (d) data-parallel scaling, 1 GPU against all of them (bench/scaling.py) ------------------------------
log="$work/d.log"
if [ "$mode" = gpu ]; then
  gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  scaling=(--device cuda --nproc "$gpus" --threads 0 --steps 12 --repeats 1)
else
  gpus=2
  scaling=(--smoke)
fi
if [ "${gpus:-0}" -ge 2 ]; then
  timeout "$budget_d" "$python" bench/scaling.py --bin "$fluxtrain" "${scaling[@]}" --markdown "$out/scaling.md" \
    > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && [ -f "$out/scaling.md" ]; then
    sections+="\n## (d) data-parallel scaling, 1 against $gpus ranks: PASSED\n\n$(cat "$out/scaling.md")\n"
  else
    section "(d) data-parallel scaling" "FAILED (exit status $rc$([ $rc -eq 124 ] && echo ", over $budget_d s"))" "$log" 40
  fi
else
  sections+="\n## (d) data-parallel scaling: not run (this machine has ${gpus:-no} GPU; it needs 2 or more)\n"
fi

sections+="\nTotal: $(( $(date +%s) - started )) s.\n"
write_report
cat "$report"
[ "$mode" = cpu ] && [ -z "${OUT:-}" ] && rm -rf "$work"
exit $failed
