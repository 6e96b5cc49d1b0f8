#!/usr/bin/env bash
# Installs every build and test dependency from Debian 12's packages. Idempotent: packages that
# are already installed are left as they are. Run as root (or with sudo available).
set -euo pipefail

packages=(
  cmake ninja-build g++ ccache git pkg-config
  libtorch-dev            # libtorch 1.13 (CPU)
  libopenblas0-openmp     # without it Debian's libtorch does fp32 math 20-40x slower
  libyaml-cpp-dev libsqlite3-dev sqlite3 libcli11-dev libboost-dev nlohmann-json3-dev
  libgtest-dev libbenchmark-dev
  libsentencepiece-dev libpcre2-dev   # tokenizers (LLaMA 2 SentencePiece, LLaMA 3 BPE)
  python3-torch           # golden references and side-by-side benchmarks (same libtorch)
  gnuplot-nox
  slurm-wlm munge         # a real single-node Slurm cluster for the tests of the Slurm backend
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Tokenizer tests compare against reference encoders from npm. A machine may already have Node
# from elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's npm package).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
