#!/usr/bin/env bash
# Orchestration overhead of `harness run`, per run, for a trivially short run.
#
# Spec tests/specs/bench_orchestration.yaml: 20 runs (repeats) of generate on `tiny` with
# prompt_len 1, new_tokens 1, 1 thread, so that a run is almost all fixed cost. Measured, each
# as wall time and as CPU time (user + sys, children included):
#   A  `harness run` on a fresh db (--no-report)
#   F  `harness run` again, everything stored: the parent's fixed cost (spec, db), no child
#   W  the workers' own timers from the db: total_time_s (the timed generation) and load_s
#      (building the model), summed over the runs
#   B  N x a bare `harness-worker run run.json` of one of the same runs (no parent)
#   L  N x `harness-worker --help`: process start + loading libtorch, nothing else
#   S  `harness run` on a fresh db with a stub worker (HARNESS_WORKER: a shell script that copies
#      a real result.json into place), and N x that stub bare: the parent's own per-run cost
#      (spawn, run.json, wait, result.json parse, SQLite ingest, progress line) without libtorch
#      in the way
# Derived, per run:
#   parent spawn + ingest  = (S - F) / runs - stub bare / N
#   worker outside its own timers = B / N - total_time_s - load_s
#   libtorch start-up = L / N
#
# Usage: tests/bench/bench_orchestration.sh [BIN_DIR]   (the directory holding harness and
# harness-worker; default: build). Env: N (bare loop length, default 20), KEEP=1 keeps the temp
# dir. Wall times on a busy machine are noisy; the CPU times are the steadier figures.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$(cd "${1:-$root/build}" && pwd)
harness=$bin/harness
worker=$bin/harness-worker
spec=tests/specs/bench_orchestration.yaml
n=${N:-20}
for tool in "$harness" "$worker"; do
  [[ -x $tool ]] || { echo "not built: $tool" >&2; exit 2; }
done
for tool in sqlite3 jq awk; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hx_bench_orch.XXXXXX")
cleanup() { if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi; }
trap cleanup EXIT
cd "$root"
unset HARNESS_FAULT HARNESS_FAULT_MATCH HARNESS_WORKER

calc() { awk "BEGIN { printf \"%.4f\", $* }"; }

# measure KEY CMD...: runs CMD (stdout dropped, stderr to $tmp/cmd.err) and sets wall[KEY] and
# cpu[KEY] (seconds; cpu = user + sys of CMD and every child it waited for). Exits on failure.
declare -A wall cpu
measure() {
  local key=$1 t w u s
  shift
  t=$({ TIMEFORMAT='%3R %3U %3S'; time "$@" >/dev/null 2>"$tmp/cmd.err"; } 2>&1) || {
    echo "failed: $*" >&2
    cat "$tmp/cmd.err" >&2
    exit 1
  }
  read -r w u s <<<"$t"
  wall[$key]=$w
  cpu[$key]=$(calc "$u + $s")
}
loop() {  # loop COUNT CMD...
  local count=$1 i
  shift
  for ((i = 0; i < count; ++i)); do "$@"; done
}

planned=$("$harness" expand "$spec" --json | jq length)

# A, F: the real thing.
db=$tmp/real.db
runs=$tmp/real_runs
measure A "$harness" run "$spec" --db "$db" --runs-dir "$runs" --no-report
stored=$(sqlite3 "$db" "SELECT count(*) FROM runs WHERE status = 'ok'")
[[ $stored == "$planned" ]] || { echo "expected $planned ok runs, got $stored" >&2; exit 1; }
measure F "$harness" run "$spec" --db "$db" --runs-dir "$runs" --no-report

# W: what the workers measured themselves.
read -r w_total w_load < <(sqlite3 -separator ' ' "$db" \
  "SELECT sum(CASE WHEN name = 'total_time_s' THEN value END),
          sum(CASE WHEN name = 'load_s' THEN value END) FROM metrics")

# B: a bare worker, N times, on one run file (it writes the run's result file; nothing is stored).
run_json=$(find "$runs" -name run.json | head -1)
result=$(jq -r .result_path "$run_json")
measure B loop "$n" "$worker" run "$run_json"
bare_total=$(jq '.metrics[] | select(.name == "total_time_s") | .value' "$result")
bare_load=$(jq '.metrics[] | select(.name == "load_s") | .value' "$result")

# L: the worker's start-up alone (libtorch is loaded before main runs).
measure L loop "$n" "$worker" --help

# S: the parent with a stub worker that only puts a real result.json in place.
canned=$tmp/canned_result.json
cp "$result" "$canned"
stub=$tmp/stub_worker
cat >"$stub" <<EOF
#!/bin/sh
# harness-worker stub: run RUN_JSON -> copy a canned result to the run's result_path.
exec cp "$canned" "\$(sed -n 's/^ *"result_path": "\\(.*\\)",\\{0,1\\}\$/\\1/p' "\$2")"
EOF
chmod +x "$stub"
measure S env HARNESS_WORKER="$stub" "$harness" run "$spec" --db "$tmp/stub.db" \
  --runs-dir "$tmp/stub_runs" --no-report
stored=$(sqlite3 "$tmp/stub.db" "SELECT count(*) FROM runs WHERE status = 'ok'")
[[ $stored == "$planned" ]] || { echo "stub: expected $planned ok runs, got $stored" >&2; exit 1; }
stub_json=$(find "$tmp/stub_runs" -name run.json | head -1)
measure SB loop "$n" "$stub" run "$stub_json"

echo "bench_orchestration: $planned runs of generate (tiny, prompt_len 1, new_tokens 1, 1 thread)"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); binaries: $bin"
echo
row() { printf '%-54s %9s %9s %10s %10s\n' "$@"; }
row "" "wall s" "cpu s" "wall/run" "cpu/run"
row "A  harness run, fresh db ($planned runs)" "${wall[A]}" "${cpu[A]}" \
  "$(calc "${wall[A]} / $planned")" "$(calc "${cpu[A]} / $planned")"
row "F  harness run again, all stored (no child)" "${wall[F]}" "${cpu[F]}" "-" "-"
row "W  workers' own total_time_s, summed" "$(calc "$w_total")" "-" \
  "$(calc "$w_total / $planned")" "-"
row "W' workers' own load_s (model build), summed" "$(calc "$w_load")" "-" \
  "$(calc "$w_load / $planned")" "-"
row "B  $n x bare harness-worker run run.json" "${wall[B]}" "${cpu[B]}" \
  "$(calc "${wall[B]} / $n")" "$(calc "${cpu[B]} / $n")"
row "L  $n x harness-worker --help (start-up)" "${wall[L]}" "${cpu[L]}" \
  "$(calc "${wall[L]} / $n")" "$(calc "${cpu[L]} / $n")"
row "S  harness run with a stub worker ($planned runs)" "${wall[S]}" "${cpu[S]}" \
  "$(calc "${wall[S]} / $planned")" "$(calc "${cpu[S]} / $planned")"
row "SB $n x the stub worker bare" "${wall[SB]}" "${cpu[SB]}" \
  "$(calc "${wall[SB]} / $n")" "$(calc "${cpu[SB]} / $n")"
echo
ms() { printf '  %-70s %9.1f ms\n' "$1" "$(calc "1000 * ($2)")"; }
echo "per run (wall):"
ms "harness run, all in (A / runs)" "${wall[A]} / $planned"
ms "the worker's timed work (total_time_s)" "$w_total / $planned"
ms "outside the worker's timers (A / runs - total_time_s - load_s)" \
  "(${wall[A]} - $w_total - $w_load) / $planned"
ms "bare worker process (B / N)" "${wall[B]} / $n"
ms "  libtorch start-up (L / N)" "${wall[L]} / $n"
ms "  outside its own timers (B / N - total_time_s - load_s)" "${wall[B]} / $n - $bare_total - $bare_load"
ms "parent's spawn + run.json + wait + ingest ((S - F) / runs - SB / N)" \
  "(${wall[S]} - ${wall[F]}) / $planned - ${wall[SB]} / $n"
ms "parent's fixed cost, once per command (F)" "${wall[F]}"
ms "harness run vs bare workers ((A - F) / runs - B / N; noisy)" \
  "(${wall[A]} - ${wall[F]}) / $planned - ${wall[B]} / $n"
echo "per run (cpu):"
ms "harness run, all in, workers included (A / runs)" "${cpu[A]} / $planned"
ms "bare worker process (B / N)" "${cpu[B]} / $n"
ms "  libtorch start-up (L / N)" "${cpu[L]} / $n"
ms "parent's spawn + run.json + wait + ingest ((S - F) / runs - SB / N)" \
  "(${cpu[S]} - ${cpu[F]}) / $planned - ${cpu[SB]} / $n"
ms "harness run vs bare workers ((A - F) / runs - B / N)" \
  "(${cpu[A]} - ${cpu[F]}) / $planned - ${cpu[B]} / $n"
