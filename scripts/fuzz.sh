#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of every reader of a file a user can hand us (tests/fuzz):
# builds the fuzz targets (clang, AddressSanitizer + UndefinedBehaviorSanitizer) in the build
# directory that scripts/sanitize.sh uses (scripts/asan-configure.sh: only the targets not built
# yet are compiled), runs each for SECONDS (default 8) on its seed corpus
# (tests/fuzz/corpus/<target>, read only; what the fuzzer adds goes to <build>/corpus/<target>),
# prints the executions per target, and fails on any crash, sanitizer report, leak, uncaught
# exception, hang (> 10 s on one input), memory blow-up (> 2 GB) or error message that does not
# name the file. A failing input is kept in <build>/findings/ with the command that replays it.
# docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: every target, 8 s each)
#
# FUZZ_SEED (default 1): the fuzzer's random seed, fixed so that a commit's run is reproducible;
# 0 lets libFuzzer pick one (long runs by hand).
# Environment: see scripts/asan-configure.sh (ASAN_BUILD_DIR, ASAN_OPT: e.g. a long run in
# ASAN_BUILD_DIR=build-fuzz ASAN_OPT="-O1 -g1", about twice the executions per second).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-8}"
seed="${FUZZ_SEED:-1}"
shift || true
start=$(date +%s)
source scripts/asan-configure.sh
[ "$asan_fuzz" = 1 ] || { echo "fuzz: needs clang++ (scripts/install-deps.sh installs clang-14)" >&2; exit 1; }
build="$asan_build"
cmake --build "$build" --target fuzz -j"$(nproc)" > "$build/fuzz-build.log" 2>&1 || {
  grep -E -A5 "error|FAILED" "$build/fuzz-build.log" | head -60 >&2
  exit 1
}
echo "fuzz: targets built in $(( $(date +%s) - start )) s ($build)"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for bin in "$build"/tests/fuzz/fuzz_*; do [ -x "$bin" ] && targets+=("$(basename "$bin")"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no targets in $build/tests/fuzz" >&2; exit 1; }

# Sanitizer findings stop the input (the fuzzer saves it); symbolized stacks when llvm-symbolizer
# is there.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -z "$symbolizer" ] || export ASAN_SYMBOLIZER_PATH="$symbolizer"
export OMP_NUM_THREADS=1

mkdir -p "$build/findings"
failed=()
total=0
printf '%-30s %10s %10s %8s %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/$t"
  seeds="tests/fuzz/corpus/$t"
  [ -x "$bin" ] || { echo "fuzz: no target $t" >&2; failed+=("$t"); continue; }
  [ -d "$seeds" ] || { echo "fuzz: no seed corpus $seeds" >&2; failed+=("$t"); continue; }
  work="$build/corpus/$t"
  mkdir -p "$work"
  log="$build/findings/$t.log"
  rm -f "$build/findings/$t"-*
  # Per-target settings: tests/fuzz/<target>.options, one a line (# comments), with the reason:
  # libFuzzer flags (-name=value), or asan_options=... added to ASAN_OPTIONS.
  extra=()
  asan="$ASAN_OPTIONS"
  if [ -f "tests/fuzz/$t.options" ]; then
    while read -r line; do
      case "$line" in
        asan_options=*) asan="$asan:${line#asan_options=}" ;;
        *) extra+=("$line") ;;
      esac
    done < <(grep -v '^\s*\(#\|$\)' "tests/fuzz/$t.options")
  fi
  rc=0
  ASAN_OPTIONS="$asan" "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -seed="$seed" \
    -print_final_stats=1 -artifact_prefix="$build/findings/$t-" "${extra[@]}" "$work" "$seeds" \
    > "$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  size=$(find "$work" -type f | wc -l)
  total=$((total + ${execs:-0}))
  if [ "$rc" -eq 0 ]; then
    printf '%-30s %10s %10s %8s %s\n' "$t" "${execs:-0}" "${rate:-0}" "$size" ok
  else
    printf '%-30s %10s %10s %8s %s\n' "$t" "${execs:-0}" "${rate:-0}" "$size" "FAILED (exit $rc)"
    failed+=("$t")
  fi
done
echo "fuzz: $total executions in all, ${seconds} s per target, seed $seed"

if [ ${#failed[@]} -gt 0 ]; then
  for t in "${failed[@]}"; do
    log="$build/findings/$t.log"
    [ -f "$log" ] || continue
    echo "---- $t ($log)" >&2
    grep -E -B2 -A30 "^==[0-9]+== ?ERROR|runtime error:|^fuzz: |^terminate called" "$log" \
      | grep -v "^    #[0-9]* 0x.* in fuzzer::" | head -50 >&2 || tail -40 "$log" >&2
    for a in "$build/findings/$t"-*; do
      [ -f "$a" ] && [ "${a%.log}" = "$a" ] &&
        echo "replay: $build/tests/fuzz/$t $a   (then add it as a regression test)" >&2
    done
  done
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
