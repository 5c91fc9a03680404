#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster (slurmctld + slurmd on this machine), for tests.
#
#   slurm/testing/start_cluster.sh DIR      # then: export SLURM_CONF=DIR/slurm.conf
#   slurm/testing/stop_cluster.sh DIR
#
# Installs Debian's slurm-wlm and munge when missing (apt-get, needs root), creates a munge key
# if there is none, starts munged, writes DIR/slurm.conf (node "localhost" with this machine's
# CPUs and memory, partition "debug", no cgroups, no accounting, state and spool in DIR), starts
# both daemons with `-f DIR/slurm.conf` and waits until `sinfo` shows the node idle.
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818).
# Exit status: 0 when the node is idle; 3 when SLURM cannot be installed here (not root, no
# apt-get, apt-get failed for a reason other than a held lock, or the apt/dpkg lock held past
# every retry), so that a test can skip; 1 on any other failure.
set -euo pipefail

dir=${1:?usage: start_cluster.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
ctld_port=${SLURMCTLD_PORT:-6817}
slurmd_port=${SLURMD_PORT:-6818}

cannot_install() { echo "start_cluster.sh: cannot install SLURM: $*" >&2; exit 3; }
fail() { echo "start_cluster.sh: $*" >&2; exit 1; }

# 1. Packages (only when something is missing).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || cannot_install "not root and slurmctld/slurmd/sbatch/munged missing"
  command -v apt-get >/dev/null || cannot_install "no apt-get on this machine"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt/dpkg (unattended upgrades, a parallel install) may hold the locks for a while:
  # apt waits up to APT_LOCK_TIMEOUT seconds for the dpkg lock itself, and a run that still
  # failed on a lock is retried (APT_ATTEMPTS times in all) before giving up. Only a failure
  # that is not a lock, or locks held past every attempt, means SLURM cannot be installed.
  lock_timeout=${APT_LOCK_TIMEOUT:-300}
  attempts=${APT_ATTEMPTS:-6}
  for attempt in $(seq "$attempts"); do
    if { apt-get -o DPkg::Lock::Timeout="$lock_timeout" update -q \
         && apt-get -o DPkg::Lock::Timeout="$lock_timeout" install -y -q \
              --no-install-recommends slurm-wlm munge; } > "$dir/apt.log" 2>&1; then
      break
    fi
    if ! grep -qiE "could not get lock|unable to lock|dpkg was interrupted" "$dir/apt.log"; then
      cannot_install "apt-get failed (see $dir/apt.log): $(tail -n 3 "$dir/apt.log" | tr '\n' ' ')"
    fi
    if grep -qi "dpkg was interrupted" "$dir/apt.log"; then
      dpkg --configure -a >> "$dir/apt.log" 2>&1 || true
    fi
    [ "$attempt" -lt "$attempts" ] || cannot_install "apt/dpkg lock still held after $attempts attempts (see $dir/apt.log)"
    echo "start_cluster.sh: apt/dpkg lock held, retrying ($attempt/$attempts)" >&2
    sleep $((10 * attempt))
  done
fi
[ "$(id -u)" = 0 ] || cannot_install "daemons need root (SlurmUser=root)"

# 2. munge: key, then the daemon (kept running if one already answers).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0700 /etc/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if command -v runuser >/dev/null && id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  touch "$dir/munged.started"
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n | unmunge >/dev/null || fail "munged does not answer"
fi

# 3. slurm.conf for one node named localhost with this machine's CPUs and memory.
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$cpus" ] && [ -n "$mem" ] || fail "cannot read CPUs/RealMemory from 'slurmd -C': $hw"
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat > "$dir/slurm.conf" <<CONF
ClusterName=astrobatch-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

# 4. Daemons (fresh state: -c clears jobs of an earlier cluster in DIR).
slurmctld -c -f "$SLURM_CONF" || fail "slurmctld did not start (see $dir/log/slurmctld.log)"
slurmd -N localhost -f "$SLURM_CONF" || fail "slurmd did not start (see $dir/log/slurmd.log)"

for _ in $(seq 120); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
fail "node not idle after 60 s (sinfo: ${state:-no answer})"
