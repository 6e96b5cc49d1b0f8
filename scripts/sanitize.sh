#!/usr/bin/env bash
# The parent (`harness`, harness_core, tokenizers) and its core and e2e tests under
# AddressSanitizer + UndefinedBehaviorSanitizer, then `ctest -L "core|e2e"`: a parent-only build
# in build-asan (no libtorch is compiled or linked; scripts/asan-configure.sh) whose harness runs
# the normal build's worker (build/harness-worker: run scripts/build.sh first). Every report is
# fatal to the process that makes it (leaks too), so its test fails. docs/fuzzing.md.
#
#   scripts/sanitize.sh [CTEST_ARGS...]       e.g. scripts/sanitize.sh -R BadSpec
#
# Environment: see scripts/asan-configure.sh (ASAN_BUILD_DIR, ASAN_CXX, ASAN_OPT, HARNESS_WORKER).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source scripts/asan-configure.sh
[ -x "$asan_worker" ] || {
  echo "sanitize: no worker at $asan_worker: run scripts/build.sh first" >&2
  exit 1
}
# What the core and e2e tests run (test_slurm, also parent-only, is left to `cmake --build`).
cmake --build "$asan_build" --target harness test_core test_e2e -j"$(nproc)" \
  > "$asan_build/build.log" 2>&1 || {
  grep -E -A5 "error|FAILED" "$asan_build/build.log" | head -60 >&2
  exit 1
}
echo "sanitize: built in $(( $(date +%s) - start )) s ($asan_build, $(basename "$asan_cxx"), worker $asan_worker)"

# The worker is not instrumented: these options reach only the parent's processes and the tests.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -z "$symbolizer" ] || export ASAN_SYMBOLIZER_PATH="$symbolizer"
start=$(date +%s)
ctest --test-dir "$asan_build" -L "core|e2e" --output-on-failure -j"$(nproc)" "$@"
echo "sanitize: core and e2e tests passed under ASan+UBSan in $(( $(date +%s) - start )) s"
