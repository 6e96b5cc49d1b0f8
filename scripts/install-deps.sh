#!/usr/bin/env bash
# Installs every build and test dependency: Debian 12's packages (apt-get) and the project's
# Python environment .venv (PyPI, versions pinned in requirements.txt) whose PyTorch wheel holds
# the libtorch that every build links. Idempotent: a second run checks and does nothing (seconds).
# Run as root (or with sudo available).
#
#   HARNESS_VENV   where the venv goes (default: .venv in the checkout)
#   HARNESS_BASE_PYTHON  the interpreter that makes it (default: python3; 3.10-3.13)
#
# scripts/install-deps.sh --download-debs DIR: only downloads the .deb files that a build needs
# besides PyTorch, for a machine without internet or root that has PyTorch already (a GPU node):
# carry DIR there and build with HARNESS_DEPS_ROOT=DIR scripts/build.sh (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--download-debs" ]; then
  dest=${2:?usage: install-deps.sh --download-debs DIR}
  # Headers, static libraries and the few shared libraries of the build's Debian dependencies,
  # and pkgconf to read their .pc files (GPU machines may lack pkg-config).
  debs=(
    libyaml-cpp-dev libyaml-cpp0.7 libsqlite3-dev libsqlite3-0 libcli11-dev
    libboost-dev libboost1.74-dev nlohmann-json3-dev libgtest-dev googletest
    libbenchmark-dev libbenchmark1debian libsentencepiece-dev libsentencepiece0
    libprotobuf-lite32 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
    pkgconf pkgconf-bin libpkgconf3
  )
  mkdir -p "$dest"
  (cd "$dest" && rm -f ./*.deb && apt-get download "${debs[@]}" > /dev/null)
  echo "install-deps: $(ls "$dest"/*.deb | wc -l) packages, $(du -sh "$dest" | cut -f1) in $dest"
  exit 0
fi

packages=(
  cmake ninja-build g++ ccache git pkg-config
  python3 python3-venv    # the venv below (a pyenv or other python3 on PATH is used as it is)
  libyaml-cpp-dev libsqlite3-dev sqlite3 libcli11-dev libboost-dev nlohmann-json3-dev
  libgtest-dev libbenchmark-dev
  libsentencepiece-dev libpcre2-dev   # tokenizers (LLaMA 2 SentencePiece, LLaMA 3 BPE)
  gnuplot-nox
  clang-tidy-14           # scripts/tidy.sh, run by .ci/run
  slurm-wlm munge         # a real single-node Slurm cluster for the tests of the Slurm backend
  clang-14 libclang-rt-14-dev llvm-14  # scripts/fuzz.sh (libFuzzer), llvm-symbolizer for reports
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages already installed"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The venv is current when it was made from this very requirements.txt (its hash is kept inside).
venv="${HARNESS_VENV:-.venv}"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
stamp="$venv/.requirements.sha256"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-deps: $venv matches requirements.txt"
  exit 0
fi
python="${HARNESS_BASE_PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "install-deps: installing requirements.txt into $venv (PyTorch with its CUDA runtime: a few GB)"
start=$(date +%s)
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
"$venv/bin/python" -c 'import torch; print("install-deps: torch", torch.__version__, "CUDA", torch.version.cuda)'
echo "$want" > "$stamp"
echo "install-deps: $venv ready in $(( $(date +%s) - start )) s"
