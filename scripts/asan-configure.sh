#!/usr/bin/env bash
# Configures the one sanitizer build directory that scripts/sanitize.sh and scripts/fuzz.sh share
# (sourced by both; not run alone): a parent-only build (no libtorch in `harness`, its libraries
# or its tests) with AddressSanitizer + UndefinedBehaviorSanitizer, by clang 14 at -O0 (a third of
# GCC's compile time with the sanitizers), with libFuzzer's coverage instrumentation so that the
# fuzz targets build in the same directory. Its harness runs the normal build's worker.
#
#   ASAN_BUILD_DIR  the directory (default: build-asan)
#   ASAN_CXX        the compiler (default: clang++-14, else clang++; GCC works for sanitize.sh
#                   alone: ASAN_CXX=c++, without the fuzz targets)
#   ASAN_OPT        optimisation and debug flags (default: -O0 -g1: line numbers in reports)
#   HARNESS_WORKER  the worker the sanitized harness runs (default: build/harness-worker)
#   HARNESS_PYTHON  the Python whose torch fuzz_torch_pth links (default: the venv's); without a
#                   torch there, that one target is left out
# Sets: asan_build, asan_fuzz (1 when the fuzz targets can be built).
asan_build="${ASAN_BUILD_DIR:-build-asan}"
asan_cxx="${ASAN_CXX:-$(command -v clang++-14 || command -v clang++ || command -v c++)}"
case "$(basename "$asan_cxx")" in
  clang++*) asan_cc="${asan_cxx/clang++/clang}"; asan_fuzz=1 ;;
  *) asan_cc="${asan_cxx/%c++/cc}"; asan_cc="${asan_cc/%g++/gcc}"; asan_fuzz=0 ;;
esac
asan_worker=$(realpath -m "${HARNESS_WORKER:-build/harness-worker}")
asan_python="${HARNESS_PYTHON:-$PWD/.venv/bin/python}"

asan_args=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=${ASAN_OPT:--O0 -g1}"
           -DHARNESS_PARENT_ONLY=ON -DHARNESS_WORKER_BIN="$asan_worker" -DHARNESS_BUILD_BENCH=OFF
           -DHARNESS_FUZZ="$([ "$asan_fuzz" = 1 ] && echo ON || echo OFF)")
if [ "$asan_fuzz" = 1 ]; then
  asan_args+=(-DHARNESS_SANITIZE=address,undefined)
  if [ -x "$asan_python" ] && "$asan_python" -c "import torch" > /dev/null 2>&1; then
    asan_args+=(-DHARNESS_FUZZ_TORCH=ON -DHARNESS_PYTHON="$asan_python" -DHARNESS_WITH_CUDA=OFF)
  else
    asan_args+=(-DHARNESS_FUZZ_TORCH=OFF)
  fi
else
  # GCC's `undefined` leaves out float-to-integer overflow; clang's includes it.
  asan_args+=(-DHARNESS_SANITIZE=address,undefined,float-cast-overflow)
fi
command -v ninja > /dev/null 2>&1 && asan_args+=(-G Ninja)
mkdir -p "$asan_build"
CC="$asan_cc" CXX="$asan_cxx" cmake -S . -B "$asan_build" "${asan_args[@]}" \
  > "$asan_build/configure.log" 2>&1 || {
  cat "$asan_build/configure.log" >&2
  exit 1
}
