#!/usr/bin/env bash
# Configures and builds everything (Release, Ninja, ccache when present) against the libtorch of
# the project venv's PyTorch (scripts/install-deps.sh). The same script builds on a GPU machine
# that has PyTorch but no internet and no root (docs/gpu.md):
#
#   BUILD_DIR          where to build (default: build)
#   BUILD_TYPE         CMake build type (default: Release)
#   HARNESS_PYTHON     the Python whose torch to link (default: the venv's, else python3)
#   HARNESS_VENV       the venv of scripts/install-deps.sh (default: .venv)
#   HARNESS_WITH_CUDA  AUTO (default: CUDA when the toolkit is installed) | ON | OFF
#   HARNESS_DEPS_ROOT  a folder of Debian packages unpacked with `dpkg -x` (made from the .deb files
#                      of `scripts/install-deps.sh --download-debs DIR`), used instead of /usr
#   BUILD_TARGETS      space-separated targets to build (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${BUILD_DIR:-build}"
python="${HARNESS_PYTHON:-}"
if [ -z "$python" ]; then
  venv=$(realpath -m "${HARNESS_VENV:-.venv}")
  if [ -x "$venv/bin/python" ]; then python="$venv/bin/python"; else python="$(command -v python3)"; fi
fi
# CMake resolves a bare name like `python3` against the source folder: give it the path.
python=$(command -v "$python" || echo "$python")

args=(-DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" -DHARNESS_PYTHON="$python"
      -DHARNESS_WITH_CUDA="${HARNESS_WITH_CUDA:-AUTO}")
command -v ninja > /dev/null 2>&1 && args+=(-G Ninja)

if [ -n "${HARNESS_DEPS_ROOT:-}" ]; then
  root=$(cd "$HARNESS_DEPS_ROOT" && pwd)
  debs=$(compgen -G "$root/*.deb" || true)
  if [ -n "$debs" ]; then
    for deb in $debs; do dpkg -x "$deb" "$root"; done
    echo "build: unpacked $(echo "$debs" | wc -l) packages into $root"
  fi
  [ -d "$root/usr/include" ] || { echo "build: nothing unpacked in $root (HARNESS_DEPS_ROOT)" >&2; exit 1; }
  lib="$root/usr/lib/x86_64-linux-gnu"
  # pkg-config for SentencePiece and PCRE2: reads only the unpacked .pc files, their /usr moved
  # under $root; the unpacked pkgconf where the machine has no pkg-config.
  pkgconf_bin="$(command -v pkg-config || true)"
  if [ -z "$pkgconf_bin" ] && [ -x "$root/usr/bin/pkgconf" ]; then
    mkdir -p "$build"
    pkgconf_bin="$PWD/$build/pkgconf"
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
      "$lib" "$root/usr/bin/pkgconf" > "$pkgconf_bin"
    chmod +x "$pkgconf_bin"
  fi
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$root/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$root"
  args+=(-DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_LIBRARY_PATH="$lib"
         -DCMAKE_INCLUDE_PATH="$root/usr/include" -DCMAKE_BUILD_RPATH="$lib")
  [ -z "$pkgconf_bin" ] || args+=(-DPKG_CONFIG_EXECUTABLE="$pkgconf_bin")
fi

mkdir -p "$build"
cmake -S . -B "$build" "${args[@]}" > "$build/configure.log" 2>&1 || {
  cat "$build/configure.log" >&2
  exit 1
}
grep -E "^-- (Found Torch|libtorch|PyTorch: CUDA detected)" "$build/configure.log" || true
targets=()
for t in ${BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build" -j"$(nproc)" "${targets[@]}"
echo "build: $build ($(grep -o 'HX_WITH_CUDA [01]' "$build/generated/torch_features.h"), torch from $python)"
