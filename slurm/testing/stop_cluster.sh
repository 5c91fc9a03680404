#!/usr/bin/env bash
# Stop the daemons that start_cluster.sh started for DIR (and munged, if it started it).
#   slurm/testing/stop_cluster.sh DIR
set -uo pipefail
dir=${1:?usage: stop_cluster.sh DIR}
for name in slurmd slurmctld; do
  pidfile=$dir/$name.pid
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
if [ -e "$dir/munged.started" ] && [ -s /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  rm -f "$dir/munged.started"
fi
exit 0
