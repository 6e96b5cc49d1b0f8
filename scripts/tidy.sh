#!/usr/bin/env bash
# clang-tidy over the parent's sources (harness/*/*.cpp but harness/worker/) with the checks of
# .clang-tidy, using the compile_commands.json of a build; fails on any warning. .ci/run calls it
# after the tests.
#
#   scripts/tidy.sh [BUILD_DIR]   (default: build; configured with CMAKE_EXPORT_COMPILE_COMMANDS)
#   TIDY_JOBS                     parallel clang-tidy processes (default: 2)
#   CLANG_TIDY                    the clang-tidy binary (default: clang-tidy-14, else clang-tidy)
#
# The worker (harness/worker/) and model/ are not checked: they need libtorch's headers, which
# make each file take minutes to parse, and they follow the reference implementations' shape.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
[ -f "$build/compile_commands.json" ] || {
  echo "tidy: $build/compile_commands.json missing (configure with CMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2
  exit 2
}
tidy="${CLANG_TIDY:-$(command -v clang-tidy-14 || command -v clang-tidy || true)}"
[ -n "$tidy" ] || { echo "tidy: clang-tidy not found" >&2; exit 2; }

start=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The parent is every stage folder of harness/ (cli, plan, exec, store, report, estimate, and any
# added later) but the worker.
files=$(find harness -name '*.cpp' -not -path 'harness/worker/*' | sort)
# One file per process, TIDY_JOBS at a time; --quiet drops the "N warnings generated" lines.
echo "$files" | xargs -P "${TIDY_JOBS:-2}" -n 1 "$tidy" -p "$build" --quiet > "$log" 2>&1 || true
warnings=$(grep -c -E ': (warning|error):' "$log" || true)
if [ "$warnings" -gt 0 ]; then
  grep -E -A3 ': (warning|error):' "$log"
  echo "tidy: $warnings finding(s) in the parent's sources" >&2
  exit 1
fi
echo "tidy: the parent's sources clean ($(echo "$files" | wc -l) files, $(( $(date +%s) - start )) s)"
