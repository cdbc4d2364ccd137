#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, on loopback: for the cluster tests and for trying
# `vitstudy run -m ... hydra/launcher=slurm` on a laptop or a CI runner. Runs as root (Debian/Ubuntu).
#
#   scripts/slurm_local.sh [start]   install slurmctld slurmd slurm-client munge if missing, write a one-node
#                                    /etc/slurm/slurm.conf for this machine, start munged, slurmctld and slurmd,
#                                    wait until `sinfo` shows the node idle (idempotent: a running cluster is kept)
#   scripts/slurm_local.sh stop      stop the three daemons (only the ones this script started)
#   scripts/slurm_local.sh status    sinfo and squeue
#   scripts/slurm_local.sh conf      print the slurm.conf it would write
#
# One partition `local` (the default) with every CPU and the machine's memory (`slurmd -C`), so `--mem` requests
# above it are refused as on a real cluster. Up to 4 jobs share each CPU (OverSubscribe=FORCE:4). No accounting (no slurmdbd): `sacct` does not work, which is why
# vitstudy's launcher watches its jobs with squeue (vitstudy/launch.py). State, logs and pid files live in
# $SLURM_LOCAL_STATE (default /var/lib/vitstudy-slurm). An /etc/slurm/slurm.conf not written by this script is
# never overwritten.
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/lib/vitstudy-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by vitstudy scripts/slurm_local.sh"
PARTITION=local
HOST=$(hostname -s)
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

# a pid file's process, if it is alive and runs the named program (never a recycled pid of something else)
alive() {
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm") == "$name"* ]] && echo "$pid"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get: install ${missing[*]} by hand"
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

node_line() {
  # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  local hw
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
  echo "NodeName=$HOST NodeAddr=127.0.0.1 $hw State=UNKNOWN"
}

write_conf() {
  local node cpus mem
  node=$(node_line)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  cat <<EOF
$MARK
# A one-node cluster on loopback ($HOST, $cpus CPUs, $mem MB); no accounting (sacct does not work).
ClusterName=vitstudy
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job (preemption, submitit's timeout requeue) may start again after 10 s instead of the default 120 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# cores and memory are counted (select/cons_tres refuses CR_Memory alone), --mem against RealMemory as on a real
# cluster; the partition's OverSubscribe=FORCE:4 lets up to 4 jobs share a core (a small machine other work also uses)
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus / 4))
SchedulerType=sched/backfill
# look for startable jobs every few seconds (defaults: 60 s, backfill 30 s), so a requeued job starts soon after it may
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
# refuse at submission what the partition can never run (more CPUs or memory than the node), as most sites do
EnforcePartLimits=ALL
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdTimeout=60
KillWait=10
# finished jobs leave scontrol's memory after a minute (default 300 s); vitstudy reads them within ~20 s
MinJobAge=60
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged --pid-file=/run/munge/vitstudy-munged.pid
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1; }

wait_idle() {
  local state="" t0=$SECONDS
  while ((SECONDS - t0 < WAIT_S)); do
    if ((SECONDS - t0 > 5)) && ! alive "$STATE/slurmctld.pid" slurmctld >/dev/null; then
      die "slurmctld is not running: $(grep -E 'fatal|error' "$STATE/slurmctld.log" 2>/dev/null | tail -1)"
    fi
    state=$(node_state || true)
    case $state in
      idle|mix|alloc|comp) say "node $HOST is $state (partition $PARTITION; logs in $STATE)"; return ;;
      drain*|down*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "node $HOST is '${state:-not answering}' after ${WAIT_S}s (see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

start() {
  [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts the SLURM daemons)"
  install_packages
  mkdir -p "$STATE/slurmctld" "$STATE/slurmd" /etc/slurm
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching an existing SLURM installation"
  fi
  local new
  new=$(write_conf)
  if [[ ! -f $CONF ]] || [[ $new != "$(cat "$CONF")" ]]; then
    if alive "$STATE/slurmctld.pid" slurmctld >/dev/null || alive "$STATE/slurmd.pid" slurmd >/dev/null; then
      say "slurm.conf changed: restarting"
      stop_daemons
    fi
    printf '%s\n' "$new" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  fi
  start_munge
  alive "$STATE/slurmctld.pid" slurmctld >/dev/null || slurmctld
  alive "$STATE/slurmd.pid" slurmd >/dev/null || slurmd
  wait_idle
}

stop_pid() {
  local pidfile=$1 name=$2 pid
  pid=$(alive "$pidfile" "$name") || return 0
  kill "$pid"
  for _ in $(seq 100); do [[ -d /proc/$pid ]] || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop_daemons() {
  stop_pid "$STATE/slurmd.pid" slurmd
  stop_pid "$STATE/slurmctld.pid" slurmctld
}

stop() {
  stop_daemons
  stop_pid /run/munge/vitstudy-munged.pid munged
  say "stopped"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue ;;
  conf) write_conf ;;
  *) die "usage: $0 [start|stop|status|conf]" ;;
esac
