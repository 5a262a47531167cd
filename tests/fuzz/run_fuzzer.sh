#!/bin/sh
# Runs one libFuzzer target for FLUXTRAIN_FUZZ_SECONDS seconds, else for the default given by the CTest
# entry (tests/CMakeLists.txt): `ctest -R '^fuzz\.'` stays bounded, `make fuzz FUZZ_SECONDS=600` sets the
# variable for a long run. Usage: run_fuzzer.sh DEFAULT_SECONDS FUZZER [libFuzzer flags and corpus folders]
default_seconds=$1
shift
exec "$@" -max_total_time="${FLUXTRAIN_FUZZ_SECONDS:-$default_seconds}"
