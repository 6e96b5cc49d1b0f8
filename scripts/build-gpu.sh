#!/usr/bin/env bash
# On a GPU machine (PyTorch 2.x with CUDA, CMake, ninja, nvcc; no internet, no root): unpacks the
# Debian packages that scripts/gpu/fetch-debs.sh downloaded (.device/debs, carried along) into
# .device/root with `dpkg -x`, finds the libtorch inside the installed PyTorch, and builds
# everything into build-gpu/ (the shared libraries of the unpacked packages are found through the
# binaries' RPATH). Then: ctest --test-dir build-gpu -L gpu, build-gpu/harness run ...
#
# Overrides: HARNESS_TORCH_PREFIX (default: python3's torch.utils.cmake_prefix_path),
# HARNESS_DEBS (.device/debs), HARNESS_DEPS_ROOT (.device/root), BUILD_DIR (build-gpu),
# HARNESS_CUDA_ARCH (default: let libtorch decide; 90 for an H100).
set -euo pipefail
cd "$(dirname "$0")/.."
debs="${HARNESS_DEBS:-.device/debs}"
root="$(mkdir -p "${HARNESS_DEPS_ROOT:-.device/root}" && cd "${HARNESS_DEPS_ROOT:-.device/root}" && pwd)"
build="${BUILD_DIR:-build-gpu}"

if compgen -G "$debs/*.deb" >/dev/null; then
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done
  echo "build-gpu: unpacked $(ls "$debs"/*.deb | wc -l) packages into $root"
elif [ ! -d "$root/usr" ]; then
  echo "build-gpu: no packages in $debs and nothing unpacked in $root" >&2
  echo "  (run scripts/gpu/fetch-debs.sh on a Debian 12 machine and bring .device along)" >&2
  exit 1
fi
lib="$root/usr/lib/x86_64-linux-gnu"

torch_prefix="${HARNESS_TORCH_PREFIX:-$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')}"
[ -d "$torch_prefix" ] || { echo "build-gpu: no libtorch CMake prefix at '$torch_prefix'" >&2; exit 1; }

# pkg-config for SentencePiece and PCRE2: the unpacked pkgconf, reading only the unpacked .pc
# files, with their /usr paths moved under $root.
pkgconf_bin="$(command -v pkg-config || true)"
if [ -x "$root/usr/bin/pkgconf" ]; then
  pkgconf_bin="$build/pkgconf"
  mkdir -p "$build"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
    "$lib" "$root/usr/bin/pkgconf" >"$pkgconf_bin"
  chmod +x "$pkgconf_bin"
fi
export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$root/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$root"

extra=()
[ -z "${HARNESS_CUDA_ARCH:-}" ] || extra+=("-DTORCH_CUDA_ARCH_LIST=${HARNESS_CUDA_ARCH}" "-DCMAKE_CUDA_ARCHITECTURES=${HARNESS_CUDA_ARCH}")
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$root/usr;$torch_prefix" \
  -DCMAKE_LIBRARY_PATH="$lib" -DCMAKE_INCLUDE_PATH="$root/usr/include" \
  -DCMAKE_BUILD_RPATH="$lib" -DPKG_CONFIG_EXECUTABLE="$pkgconf_bin" "${extra[@]}"
cmake --build "$build" -j"$(nproc)"
echo "build-gpu: built into $build ($(grep -o 'HX_WITH_CUDA [01]' "$build/generated/torch_features.h"))"
