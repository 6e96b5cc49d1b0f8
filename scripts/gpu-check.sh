#!/usr/bin/env bash
# The prepared GPU check, one command for a GPU node with PyTorch preinstalled and no internet
# (docs/gpu.md): builds the harness, its worker and the GPU tests against that PyTorch's libtorch,
# runs the `gpu` test label, a short phase 4 (QLoRA, on the 1B shape), tests/bench/peers.py
# against transformers + PEFT, two ranks over NCCL (with 2 GPUs or more), a short phase 3 (6 steps
# per cell), phase 2, and phase 3 again with the P100 profile (its 16 GB as the cap), all on the
# GPU, in that order of importance, and writes the databases, reports
# and logs to OUTDIR. On a machine without a GPU it runs the CPU parts (build, the gpu label's
# skips, the CPU quickstart) and says what it skipped.
#
# usage: scripts/gpu-check.sh OUTDIR
#   HARNESS_PYTHON     the Python with torch (default: .venv/bin/python if present, else python3)
#   HARNESS_DEPS_ROOT  unpacked/to-unpack Debian packages (default: .device/debs if it exists)
#   BUILD_DIR          default build-gpu
#   GPU_CHECK_BUDGET_S wall-clock budget in seconds (default: none): each step is stopped at it,
#                      and a step that cannot get its minimum in what is left is skipped, so that
#                      a leased machine's command ends in time with its results written
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
out=$(realpath -m "$1")
mkdir -p "$out/reports"
export BUILD_DIR="${BUILD_DIR:-build-gpu}"
[ -n "${HARNESS_DEPS_ROOT:-}" ] || [ ! -d .device/debs ] || export HARNESS_DEPS_ROOT=.device/debs
budget=${GPU_CHECK_BUDGET_S:-0}
start=$(date +%s)
failed=0
log() { echo "gpu-check [$(( $(date +%s) - start ))s]: $*" | tee -a "$out/summary.txt"; }
step() {  # NAME MIN_SECONDS COMMAND...: runs within the budget, logs to OUTDIR/NAME.log
  local name=$1 min=$2 left=0
  shift 2
  local limit=()
  if [ "$budget" -gt 0 ]; then
    left=$(( budget - ($(date +%s) - start) - 10 ))
    if [ "$left" -lt "$min" ]; then
      log "$name: skipped (${left}s of the budget left, needs ${min}s)"
      failed=1
      return
    fi
    limit=(timeout --kill-after=5 "$left")
  fi
  local t0 rc
  t0=$(date +%s)
  "${limit[@]}" "$@" > "$out/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    log "$name: ok in $(( $(date +%s) - t0 ))s"
  else
    log "$name: FAILED (exit $rc after $(( $(date +%s) - t0 ))s, see $name.log)"
    tail -20 "$out/$name.log"
    failed=1
  fi
}

BUILD_TARGETS="harness harness-worker test_gpu" step build 60 bash scripts/build.sh
[ -x "$BUILD_DIR/harness" ] || { log "no build: stopping"; exit 1; }
"$BUILD_DIR/harness-worker" caps > "$out/caps.json" 2>&1
log "worker caps: $(cat "$out/caps.json")"
command -v nvidia-smi > /dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1

step ctest-gpu 30 ctest --test-dir "$BUILD_DIR" -L gpu --output-on-failure
grep -E "tests passed|Skipped|Failed" "$out/ctest-gpu.log" | tail -3 | tee -a "$out/summary.txt"

if ! grep -q '"cuda":true' "$out/caps.json"; then
  log "no CUDA device: skipped the GPU experiments (phase 3 short, phase 2, phase 3 with the P100 profile)"
  step quickstart 60 "$BUILD_DIR/harness" run experiments/quickstart.yaml --db "$out/cpu.db" \
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

# Phase 4 (standard / LoRA / QLoRA x FP32 / FP16 / BF16), short: the committed 7B study's cells on
# the 1B shape, 6 steps each (the 7B runs take longer than a device session's budget).
sed -e 's/^name: phase4$/name: phase4-short/' experiments/phase4.yaml > "$spec_dir/phase4-short.yaml"
step phase4-short 60 "$BUILD_DIR/harness" run "$spec_dir/phase4-short.yaml" --db "$out/gpu.db" \
  --set model.preset=llama3.2-1b --set max_steps=6 --set warmup_steps=2 --report-dir "$out/reports"

# Side by side with transformers + PEFT on the same GPU and torch (issue 14): bf16 autocast,
# AdamW, every technique, generation at batch 1 and 8 with and without the KV cache. Needs
# transformers and peft in that Python; skipped with a note where they are missing.
python=${HARNESS_PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${HARNESS_PYTHON:-}" ] && python=.venv/bin/python
if "$python" -c 'import transformers, peft' 2> /dev/null; then
  step peers 90 "$python" tests/bench/peers.py --device cuda --preset small --mp bf16 \
    --optimizers adamw --steps 6 --warmup 2 --gen-repeats 3 \
    --harness "$(realpath "$BUILD_DIR/harness")" --worker "$(realpath "$BUILD_DIR/harness-worker")" \
    --out "$out/reports/peers-gpu.md"
else
  log "peers: skipped ($python has no transformers/peft)"
fi
# Data parallelism over NCCL (issue 17): the e2e spec's two-rank runs on two GPUs, where there are
# two; their losses must equal the one-rank run's (tests/e2e/test_data_parallel.cpp's check).
gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)
if [ "${gpus:-0}" -ge 2 ]; then
  step dp-nccl 60 "$BUILD_DIR/harness" run tests/specs/data_parallel.yaml --db "$out/gpu.db" \
    --set device=cuda --report-dir "$out/reports"
  sqlite3 "$out/gpu.db" "SELECT json_extract(r.config, '$.world_size'), json_extract(r.config, \
    '$.zero'), group_concat(printf('%.6f', s.loss), ' ') FROM runs r JOIN steps s USING (run_id) \
    WHERE r.experiment = 'data_parallel' GROUP BY r.run_id" 2>&1 | tee -a "$out/summary.txt"
else
  log "dp-nccl: skipped (${gpus:-0} GPU; the two-rank NCCL case needs 2)"
fi
for spec in phase3-short phase2; do
  step "$spec" 60 "$BUILD_DIR/harness" run "$spec_dir/$spec.yaml" --db "$out/gpu.db" \
    --report-dir "$out/reports"
done
step phase3-short-p100 60 "$BUILD_DIR/harness" run "$spec_dir/phase3-short-p100.yaml" \
  --db "$out/gpu.db" --report-dir "$out/reports"
"$BUILD_DIR/harness" compare "$spec_dir/phase3-short.yaml" --db "$out/gpu.db" \
  > "$out/reports/phase3-short-compare.md" 2>&1 || true
log "done in $(( $(date +%s) - start )) s, failed=$failed; results in $out"
exit $failed
