#!/usr/bin/env bash
# Stop the single-node Slurm that .ci/slurm_up.sh started: cancel its jobs, stop slurmd and
# slurmctld by the pids they wrote, and remove the state folder. munged is left running
# (other software on the machine may use it). Safe to run when nothing is up.
set -uo pipefail

STATE="${ADAPTBENCH_SLURM_STATE:-/tmp/adaptbench-slurm}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"

[ -f "$STATE/slurm.conf" ] || exit 0
export SLURM_CONF="$STATE/slurm.conf"
scancel --full --user="$(id -un)" >/dev/null 2>&1 || true
for daemon in slurmd slurmctld; do
  pidfile="$STATE/$daemon.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  $sudo kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do
    $sudo kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
done
$sudo rm -rf "$STATE"
