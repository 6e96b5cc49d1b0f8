#!/usr/bin/env bash
# On the Debian 12 development machine: downloads the Debian packages that the GPU build needs
# besides PyTorch (the GPU machines have PyTorch with CUDA, CMake, ninja and nvcc, but no internet
# and no root) into .device/debs/ (git-ignored, about 15 MB), for the device tool to carry:
#   bash scripts/gpu/fetch-debs.sh      then, on the GPU machine (carry [".device"]):
#   bash scripts/build-gpu.sh
# Headers, static libraries and the few shared libraries of yaml-cpp, SQLite, CLI11, Boost
# (headers), nlohmann-json, GoogleTest, Google Benchmark, SentencePiece (+ protobuf-lite), PCRE2,
# and pkgconf to read their .pc files.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.device/debs
packages=(
  libyaml-cpp-dev libyaml-cpp0.7
  libsqlite3-dev libsqlite3-0
  libcli11-dev
  libboost-dev libboost1.74-dev
  nlohmann-json3-dev
  libgtest-dev googletest
  libbenchmark-dev libbenchmark1debian
  libsentencepiece-dev libsentencepiece0 libprotobuf-lite32
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  pkgconf pkgconf-bin libpkgconf3
)
mkdir -p "$dest"
cd "$dest"
rm -f ./*.deb
apt-get download "${packages[@]}"
echo "fetch-debs: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $dest"
