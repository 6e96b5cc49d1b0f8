#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian's slurm-wlm and munge), for the tests
# of the Slurm backend and for trying `harness run --backend slurm`. Works as root in a container
# without systemd: munged, slurmctld and slurmd run as plain background daemons with all their
# state under $HARNESS_SLURM_DIR (default /tmp/harness-slurm).
#
#   scripts/slurm-local.sh start    install nothing, configure, start the daemons, wait until the
#                                   node is idle (idempotent: a running cluster is left as it is)
#   scripts/slurm-local.sh stop     stop the daemons, remove /etc/slurm/slurm.conf if it is ours
#   scripts/slurm-local.sh status   say whether the cluster runs; sinfo
#
# ctest's `slurm` fixture calls `start --for-tests` and `stop --if-started-for-tests`, so that a
# cluster someone started by hand keeps running after the tests.
#
# The configuration comes from scripts/slurm/slurm.conf.in; /etc/slurm/slurm.conf becomes a link
# to the filled-in copy so that sbatch, squeue and sinfo work without SLURM_CONF. An existing
# /etc/slurm/slurm.conf that is not ours is never touched (the script stops with an error).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
conf_link=/etc/slurm/slurm.conf
marker="ClusterName=harness-local"

die() {
  echo "slurm-local: $*" >&2
  exit 1
}

# pid_alive NAME: the daemon's pid file names a live process that is that daemon (after a
# container restart a stale pid may belong to something else).
pid_alive() {
  local file="$state/$1.pid" pid
  [ -f "$file" ] || return 1
  pid="$(cat "$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

running() { pid_alive munged && pid_alive slurmctld && pid_alive slurmd; }

check_tools() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root here)"
  local missing=()
  for tool in munged slurmctld slurmd sbatch squeue sinfo scontrol; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]}: run scripts/install-deps.sh (Debian packages slurm-wlm, munge)"
}

our_conf() { [ -f "$conf_link" ] && grep -qx "$marker" "$conf_link"; }

configure() {
  mkdir -p "$state/ctld" "$state/d" "$state/munge" /etc/slurm
  if [ -e "$conf_link" ] && ! our_conf; then
    die "$conf_link exists and is not ours (no '$marker'): not touching a real cluster's configuration"
  fi
  local host cpus mem_mb
  host="$(hostname -s)"
  cpus="$(nproc)"
  # Leave the OS 10% of the memory; Slurm refuses a node that reports less than RealMemory.
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
  sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
    -e "s|@STATE@|$state|g" -e "s|@CTLD_PORT@|${HARNESS_SLURMCTLD_PORT:-6817}|g" \
    -e "s|@D_PORT@|${HARNESS_SLURMD_PORT:-6818}|g" \
    "$here/slurm/slurm.conf.in" >"$state/slurm.conf"
  ln -sfn "$state/slurm.conf" "$conf_link"
  # The Debian package creates a key at install; make one if it is missing.
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown root:root /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds="$1" what="$2"
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up in ${seconds} s; see $state/*.log"
}

node_ready() {
  local s
  s="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
  [ "$s" = idle ] || [ "$s" = mixed ] || [ "$s" = allocated ]
}

start() {
  check_tools
  if running && our_conf && node_ready; then
    echo "slurm-local: already running (state in $state)"
    return 0
  fi
  stop_daemons
  configure
  rm -f "$state/started-for-tests"
  [ "${1:-}" != --for-tests ] || touch "$state/started-for-tests"
  # munged refuses to run as root unless forced; its socket lives in our state directory.
  /usr/sbin/munged --force --socket="$state/munge/munge.socket" \
    --pid-file="$state/munged.pid" --log-file="$state/munged.log" \
    --seed-file="$state/munge/munge.seed" 2>>"$state/munged.log" 9>&- ||
    die "munged failed to start; see $state/munged.log"
  wait_for 10 munged test -S "$state/munge/munge.socket"
  # 9>&-: the daemons must not inherit (and so hold forever) the lock below.
  /usr/sbin/slurmctld -c -f "$state/slurm.conf" 9>&- || die "slurmctld failed; see $state/slurmctld.log"
  wait_for 30 slurmctld scontrol ping
  /usr/sbin/slurmd -f "$state/slurm.conf" -N "$(hostname -s)" 9>&- ||
    die "slurmd failed; see $state/slurmd.log"
  wait_for 60 "the node" node_ready
  echo "slurm-local: running: partition local, node $(hostname -s), $(nproc) CPUs (state in $state)"
}

stop_daemons() {
  local name
  for name in slurmd slurmctld munged; do
    if pid_alive "$name"; then
      local pid
      pid="$(cat "$state/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/$name.pid"
  done
}

stop() {
  if [ "${1:-}" = --if-started-for-tests ] && [ ! -f "$state/started-for-tests" ]; then
    echo "slurm-local: left running (not started by the tests)"
    return 0
  fi
  rm -f "$state/started-for-tests"
  stop_daemons
  if our_conf; then rm -f "$conf_link"; fi
  echo "slurm-local: stopped"
}

status() {
  if running; then
    echo "slurm-local: running (state in $state)"
    sinfo
  else
    echo "slurm-local: not running"
    return 3
  fi
}

# One start or stop at a time (two test runs starting the cluster at once).
mkdir -p "$state"
exec 9>"$state/lock"
flock 9

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
