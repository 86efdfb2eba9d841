#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py: `cluster.sh start DIR` / `cluster.sh stop DIR`.
# Needs root and Debian's packages (`.ci/run` installs slurmctld slurmd slurm-client munge). No systemd, no
# cgroups, no accounting database: the profile's status polling uses squeue. Every daemon started here writes a
# pid file under DIR, and `stop` kills exactly those.
set -euo pipefail
action=$1
dir=$(realpath -m "$2")

start() {
  if pgrep -x slurmctld > /dev/null || pgrep -x slurmd > /dev/null; then
    echo "a slurmctld or slurmd is already running: stop it first (this script starts its own)" >&2
    exit 1
  fi
  mkdir -p "$dir"/{state,spool,log} /run/munge /var/log/munge /var/lib/munge /etc/slurm
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                   chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  if ! munge -n > /dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$dir/munged.pid"
  fi
  munge -n | unmunge > /dev/null
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=spiel-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
MinJobAge=300
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  /usr/sbin/slurmctld
  /usr/sbin/slurmd
  for _ in $(seq 60); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = idle ] && { srun -t 1 hostname > /dev/null; echo "cluster up: $host, $cpus CPUs, $memory MB"; return; }
    sleep 1
  done
  echo "cluster did not come up (sinfo: ${state:-none}); logs in $dir/log" >&2
  exit 1
}

stop() {
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/$name.pid" ]; then kill "$(cat "$dir/$name.pid")" 2>/dev/null || true; fi
  done
  sleep 1
}

"$action"
