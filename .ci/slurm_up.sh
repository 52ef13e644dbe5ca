#!/usr/bin/env bash
# A real single-node Slurm for the tests of the Slurm executor (tests/test_executor_slurm.py).
#
# Installs Debian's slurm-wlm and munge when they are missing, writes a minimal slurm.conf
# for this host (its real CPUs and memory; one partition; no cgroups, no accounting: CI runs
# in a container) into a state folder, starts munged, slurmctld and slurmd, and waits until
# `srun hostname` answers. On success it prints, and only prints, the shell lines that point
# the tests at it:
#
#     eval "$(.ci/slurm_up.sh)"     # exports SLURM_CONF and ADAPTBENCH_SLURM=1
#
# Everything else goes to stderr; any failure exits non-zero with nothing on stdout, so the
# tests that need Slurm are skipped (and say why) instead. .ci/slurm_down.sh stops it all.
# Needs root (or passwordless sudo) for apt and for SlurmUser=root.
set -euo pipefail

STATE="${ADAPTBENCH_SLURM_STATE:-/tmp/adaptbench-slurm}"
WAIT_S="${ADAPTBENCH_SLURM_WAIT_S:-60}"
log() { echo "slurm_up: $*" >&2; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || { log "no apt-get: cannot install slurm-wlm and munge"; return 1; }
  log "installing slurm-wlm and munge"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge; } \
    >"$STATE/apt.log" 2>&1 || { log "apt-get failed (see $STATE/apt.log)"; return 1; }
}

start_munge() {
  # Debian's package makes the key; make one if it did not (a minimal image without postinst).
  [ -s /etc/munge/munge.key ] || $sudo mungekey --create --force >&2
  $sudo mkdir -p /run/munge
  $sudo chown munge:munge /run/munge /etc/munge/munge.key 2>/dev/null || true
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    $sudo runuser -u munge -- /usr/sbin/munged >&2 || $sudo /usr/sbin/munged --force >&2
  fi
  munge -n </dev/null | unmunge >/dev/null
}

write_conf() {
  local host cpus memory
  host="$(hostname -s)"
  cpus="$(nproc --all)"
  # slurmd -C measures the node; keep 5% of its memory back so slurmd never finds less than declared.
  memory="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
  memory=$(( memory * 95 / 100 ))
  mkdir -p "$STATE/ctld" "$STATE/spool"
  cat >"$STATE/slurm.conf" <<EOF
ClusterName=adaptbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=${ADAPTBENCH_SLURMCTLD_PORT:-6817}
SlurmdPort=${ADAPTBENCH_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( memory / cpus ))
ReturnToService=2
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES DefaultTime=60 MaxTime=INFINITE State=UP
EOF
}

start_daemons() {
  export SLURM_CONF="$STATE/slurm.conf"
  $sudo env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmctld -i >&2
  $sudo env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmd >&2
}

wait_until_up() {
  local deadline=$(( SECONDS + WAIT_S ))
  until sinfo -h -o "%T" 2>/dev/null | grep -qx "idle"; do
    if [ $SECONDS -ge $deadline ]; then
      log "the node never came up idle in ${WAIT_S} s: sinfo says '$(sinfo -h -o '%T %E' 2>&1)'"
      return 1
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  timeout "$WAIT_S" srun -N1 -n1 hostname >&2
}

if [ -f "$STATE/slurm.conf" ] && SLURM_CONF="$STATE/slurm.conf" sinfo >/dev/null 2>&1; then
  log "already up (state: $STATE)"
  echo "export SLURM_CONF=$STATE/slurm.conf ADAPTBENCH_SLURM=1"
  exit 0
fi
mkdir -p "$STATE"
# A failed start leaves no daemon behind (nothing on stdout either: the tests then skip).
trap '[ $? -eq 0 ] || "$(dirname "$0")/slurm_down.sh"' EXIT
started=$SECONDS
install_packages
log "packages ready after $(( SECONDS - started )) s"
start_munge
write_conf
start_daemons
wait_until_up
log "slurm up after $(( SECONDS - started )) s (state: $STATE)"
echo "export SLURM_CONF=$STATE/slurm.conf ADAPTBENCH_SLURM=1"
