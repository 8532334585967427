#!/usr/bin/env bash
# slurm/testcluster/start.sh - start a throw-away single-node Slurm cluster (Debian 12,
# Slurm 22.05) for tests/slurm.  Run as root.  Idempotent: while the cluster is up, a
# second run only checks it and prints the env line again.
# Copied from shared/slurm-test/start-slurm.sh (read-only on CI); changes: apt waits for
# the dpkg lock (SLURM_TEST_APT_LOCK_TIMEOUT, default 300 s) instead of failing at once.
# Usage:  eval "$(bash slurm/testcluster/start.sh)"   ... bash slurm/testcluster/stop.sh
#
# Optional env:
#   SLURM_TEST_DIR          state dir for everything (default /tmp/sciqa-slurm)
#   SLURM_TEST_CTLD_PORT    slurmctld port (default 16817)
#   SLURM_TEST_SLURMD_PORT  slurmd port (default 16818)
#   SLURM_TEST_GPUS         fake GPUs per type, h100 and a100 (default 4)
#   SLURM_TEST_CPUS         CPUs the node advertises, may exceed real cores (default 8)
#   SLURM_TEST_MEM_MB       RealMemory the node advertises, not enforced (default 65536)
#   SLURM_TEST_KILLWAIT     seconds between SIGTERM and SIGKILL on cancel/timeout (default 10)
#   SLURM_TEST_CRED_EXPIRE  job credential lifetime = delay before a requeued job may restart
#                           (Slurm default 120, here 5 which is Slurm's minimum)
#   SLURM_TEST_JOB_REQUEUE  JobRequeue: 0 = only jobs submitted with --requeue are
#                           requeue-able (default, makes --requeue observable), 1 = all
#   SLURM_TEST_KEEP_STATE=1 recover jobs/state from a previous run (default: start clean)
#   SLURM_TEST_SKIP_APT=1   never run apt-get (fail if the binaries are missing)
#   SLURM_TEST_TIMEOUT      seconds to wait for the node to become idle (default 60)
#   SLURM_TEST_APT_LOCK_TIMEOUT  seconds apt-get waits for another apt/dpkg (default 300)
# Stdout: exactly one line, `export SLURM_CONF=...` (also written to $SLURM_TEST_DIR/env.sh).
# Progress and errors go to stderr.
set -euo pipefail

D="${SLURM_TEST_DIR:-/tmp/sciqa-slurm}"
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-16817}"
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-16818}"
NGPU="${SLURM_TEST_GPUS:-4}"
NCPU="${SLURM_TEST_CPUS:-8}"
MEM="${SLURM_TEST_MEM_MB:-65536}"
KILLWAIT="${SLURM_TEST_KILLWAIT:-10}"
CRED_EXPIRE="${SLURM_TEST_CRED_EXPIRE:-5}"
JOB_REQUEUE="${SLURM_TEST_JOB_REQUEUE:-0}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-60}"
NODE="$(hostname -s)"
CONF="$D/etc/slurm.conf"
MUNGE_SOCK="$D/munge/run/munge.socket.2"
PIDS=("$D/munge/run/munged.pid:munged" "$D/run/slurmctld.pid:slurmctld" "$D/run/slurmd.pid:slurmd")
# unix socket paths (munge, slurmstepd) are limited to 107 bytes
[ ${#MUNGE_SOCK} -le 90 ] || { echo "[start-slurm] ERROR: SLURM_TEST_DIR too long: $D" >&2; exit 1; }

log() { echo "[start-slurm $(date +%T.%3N)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# pid_alive PIDFILE NAME: the pid in PIDFILE runs (not a zombie) and is called NAME
pid_alive() {
  local p
  [ -s "$1" ] || return 1
  p="$(cat "$1" 2>/dev/null)"
  [ -n "$p" ] && [ -r "/proc/$p/stat" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] \
    && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}
running=0
for s in "${PIDS[@]}"; do pid_alive "${s%%:*}" "${s##*:}" && running=$((running + 1)); done

# ---- 1. packages (skipped when already installed) ------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [ "${SLURM_TEST_SKIP_APT:-0}" = 1 ] && die "slurm/munge binaries missing and SLURM_TEST_SKIP_APT=1"
  log "apt-get install slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  # stop the packages' postinst from trying to start system-wide daemons
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && tmp_policy=1
  fi
  # remove our policy-rc.d even when apt fails (set -e)
  [ "$tmp_policy" = 1 ] && trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  lock=(-o "DPkg::Lock::Timeout=${SLURM_TEST_APT_LOCK_TIMEOUT:-300}")
  apt-get "${lock[@]}" update -q >&2
  apt-get "${lock[@]}" install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >&2
  if [ "$tmp_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  log "packages installed"
fi

# ---- 2. state dir, munge key, fake GPU devices, config -------------------
if [ "$running" = 0 ]; then
  # refuse to start if someone else listens on our ports
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port already in use; set SLURM_TEST_CTLD_PORT / SLURM_TEST_SLURMD_PORT"
    fi
  done
  mkdir -p "$D"/{etc,state,spool,log,run,dev} "$D/munge/run" "$D/munge/key"
  chmod 755 "$D" "$D/munge" "$D/munge/run"   # munged insists the socket dir is a+x
  chmod 700 "$D/munge/key"
  [ -s "$D/munge/key/munge.key" ] || mungekey -c -k "$D/munge/key/munge.key" >&2
  chmod 600 "$D/munge/key/munge.key"
  if [ "${SLURM_TEST_KEEP_STATE:-0}" != 1 ]; then
    rm -rf "$D/state"/* "$D/spool"/*          # fresh cluster: no old jobs, job ids from 1
    for f in "$D"/log/*.log; do [ -e "$f" ] && mv -f "$f" "$f.prev"; done
  fi
  # Typed gpu GRES needs File= naming a char/block device: symlinks to /dev/null do.
  # Nothing opens them (task/none, no cgroup fencing); CUDA_VISIBLE_DEVICES still gets set.
  rm -f "$D/dev"/*
  for t in h100 a100; do
    for i in $(seq 0 $((NGPU - 1))); do ln -s /dev/null "$D/dev/${t}_$i"; done
  done

  cat > "$CONF" <<EOF
# generated by start-slurm.sh
ClusterName=sciqa-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# node may advertise more CPUs/memory than the machine has
SlurmdParameters=config_overrides
ReturnToService=2
# 0: a job is requeue-able (scontrol requeue, preemption, node failure) only with --requeue
JobRequeue=$JOB_REQUEUE
MinJobAge=300
KillWait=$KILLWAIT
SchedulerType=sched/backfill
# fast scheduling passes (defaults 60 s / 30 s) so requeued and held-back jobs start promptly
SchedulerParameters=sched_interval=2,bf_interval=1
# a job in partition 'urgent' preempts (requeues) jobs of the gpu_* partitions
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$NCPU RealMemory=$MEM Gres=gpu:h100:$NGPU,gpu:a100:$NGPU State=UNKNOWN
PartitionName=gpu_4_h100 Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu_4_a100 Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF

  cat > "$D/etc/gres.conf" <<EOF
# generated by start-slurm.sh: fake GPUs, no real devices
AutoDetect=off
NodeName=$NODE Name=gpu Type=h100 File=$D/dev/h100_[0-$((NGPU - 1))]
NodeName=$NODE Name=gpu Type=a100 File=$D/dev/a100_[0-$((NGPU - 1))]
EOF
fi
[ -f "$CONF" ] || die "$CONF missing although daemons run; run stop-slurm.sh first"
export SLURM_CONF="$CONF"

# ---- 3. daemons (each forks into the background and writes its pid file) --
if ! pid_alive "$D/munge/run/munged.pid" munged; then
  log "starting munged"
  munged --socket="$MUNGE_SOCK" --key-file="$D/munge/key/munge.key" \
    --pid-file="$D/munge/run/munged.pid" --log-file="$D/log/munged.log" \
    --seed-file="$D/munge/run/munged.seed"
fi
if ! pid_alive "$D/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  if [ "${SLURM_TEST_KEEP_STATE:-0}" = 1 ]; then slurmctld -f "$CONF"; else slurmctld -c -f "$CONF"; fi
fi
if ! pid_alive "$D/run/slurmd.pid" slurmd; then
  log "starting slurmd"
  slurmd -f "$CONF" -N "$NODE"
fi

# ---- 4. wait until the node is usable -----------------------------------
deadline=$((SECONDS + TIMEOUT))
while :; do
  st="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true)"
  case "$st" in idle|mixed|allocated|completing) break ;; esac   # a trailing '*' = not responding
  if [ $SECONDS -ge $deadline ]; then
    tail -n 20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
    die "node $NODE is '${st:-unreachable}' after ${TIMEOUT}s"
  fi
  sleep 0.3
done
log "cluster sciqa-test up: node $NODE $st (logs in $D/log)"

echo "export SLURM_CONF=$CONF" > "$D/env.sh"
echo "export SLURM_CONF=$CONF"
