#!/usr/bin/env bash
# The prepared GPU check, one command for a GPU node with PyTorch preinstalled and no internet
# (docs/gpu.md): builds against that PyTorch's libtorch, runs the `gpu` test label, a short
# phase 3 (6 steps per cell) and phase 2 on the GPU, phase 3 again with the P100 profile (its
# 16 GB as the cap) and tests/bench/peers.py against transformers + PEFT on the GPU, then writes
# the databases, reports and logs to OUTDIR. About 8 minutes on an H200 with 16 cores. On a
# machine without a GPU it runs the CPU parts (build, the gpu label's skips, the CPU quickstart)
# and says what it skipped.
#
# usage: scripts/gpu-check.sh OUTDIR
#   HARNESS_PYTHON     the Python with torch (default: .venv/bin/python if present, else python3)
#   HARNESS_DEPS_ROOT  unpacked/to-unpack Debian packages (default: .device/debs if it exists)
#   BUILD_DIR          default build-gpu
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
out=$(realpath -m "$1")
mkdir -p "$out/reports"
export BUILD_DIR="${BUILD_DIR:-build-gpu}"
[ -n "${HARNESS_DEPS_ROOT:-}" ] || [ ! -d .device/debs ] || export HARNESS_DEPS_ROOT=.device/debs
start=$(date +%s)
failed=0
log() { echo "gpu-check [$(( $(date +%s) - start ))s]: $*" | tee -a "$out/summary.txt"; }
step() {  # NAME COMMAND...: runs, logs to OUTDIR/NAME.log, records the outcome
  local name=$1
  shift
  if "$@" > "$out/$name.log" 2>&1; then
    log "$name: ok"
  else
    log "$name: FAILED (exit $?, see $name.log)"
    tail -20 "$out/$name.log"
    failed=1
  fi
}

step build bash scripts/build.sh || true
[ -x "$BUILD_DIR/harness" ] || { log "no build: stopping"; exit 1; }
"$BUILD_DIR/harness-worker" caps > "$out/caps.json" 2>&1
log "worker caps: $(cat "$out/caps.json")"
command -v nvidia-smi > /dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1

step ctest-gpu ctest --test-dir "$BUILD_DIR" -L gpu --output-on-failure
grep -E "tests passed|Skipped|Failed" "$out/ctest-gpu.log" | tail -3 | tee -a "$out/summary.txt"

if ! grep -q '"cuda":true' "$out/caps.json"; then
  log "no CUDA device: skipped the GPU experiments (phase 3 short, phase 2, phase 3 with the P100 profile)"
  step quickstart "$BUILD_DIR/harness" run experiments/quickstart.yaml --db "$out/cpu.db" \
    --jobs 2 --report-dir "$out/reports"
  log "done (CPU parts only), failed=$failed"
  exit $failed
fi

# Short variants of the committed specs: the same cells, a few steps each (the spec keeps its
# own name, so `harness report` on the committed spec finds these runs only with this spec).
spec_dir="$out/specs"
mkdir -p "$spec_dir"
sed -e 's/^name: phase3$/name: phase3-short/' -e 's/max_steps: 200/max_steps: 6/' \
  -e 's/warmup_steps: 3/warmup_steps: 2/' experiments/phase3.yaml > "$spec_dir/phase3-short.yaml"
sed -e 's/^name: phase3-short$/name: phase3-short-p100/' -e 's/^device: cuda$/device: cuda\ndevice_profile: p100/' \
  "$spec_dir/phase3-short.yaml" > "$spec_dir/phase3-short-p100.yaml"
cp experiments/phase2.yaml "$spec_dir/phase2.yaml"

for spec in phase3-short phase2 phase3-short-p100; do
  step "$spec" "$BUILD_DIR/harness" run "$spec_dir/$spec.yaml" --db "$out/gpu.db" \
    --report-dir "$out/reports"
done
"$BUILD_DIR/harness" compare "$spec_dir/phase3-short.yaml" --db "$out/gpu.db" \
  > "$out/reports/phase3-short-compare.md" 2>&1 || true

# Side by side with transformers + PEFT on the same GPU and torch (issue 14): bf16 autocast,
# AdamW, every technique, generation at batch 1 and 8 with and without the KV cache. Needs
# transformers and peft in that Python; skipped with a note where they are missing.
python=${HARNESS_PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${HARNESS_PYTHON:-}" ] && python=.venv/bin/python
if "$python" -c 'import transformers, peft' 2> /dev/null; then
  step peers "$python" tests/bench/peers.py --device cuda --preset small --mp bf16 \
    --optimizers adamw --steps 6 --warmup 2 --gen-repeats 3 \
    --harness "$BUILD_DIR/harness" --worker "$BUILD_DIR/harness-worker" \
    --out "$out/reports/peers-gpu.md"
else
  log "peers: skipped ($python has no transformers/peft)"
fi
log "done in $(( $(date +%s) - start )) s, failed=$failed; results in $out"
exit $failed
