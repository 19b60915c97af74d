#!/usr/bin/env bash
# A single-machine Slurm cluster for the Slurm executor's tests and benchmark (Debian packages,
# no systemd): a private munged, slurmctld and slurmd, 16 CPUs and 2 fake "a100" GPUs (gres
# backed by symlinks to /dev/null). Recipe and pitfalls: ../shared/contracts/slurm.md.
#
#   .ci/slurm-setup.sh [start]   install what is missing, start the cluster unless one answers
#   .ci/slurm-setup.sh stop      stop the daemons this script started
#
# Idempotent and quick (about 1 s when the packages are there; nothing when it already runs).
# Prints `export SLURM_CONF=...` on stdout; as root it also links /etc/slurm/slurm.conf to it
# (when that file does not exist), so the tools and the tests find the cluster without it.
set -euo pipefail

STATE_DIR=${JOBYARD_SLURM_STATE:-/var/tmp/jobyard-slurm-$(id -un)}
CPUS=${SLURM_CPUS:-16}           # declared, may exceed the real cores (config_overrides)
GPUS=${SLURM_GPUS:-2}            # fake GPUs of type GPU_TYPE; 0 disables gres
GPU_TYPE=${SLURM_GPU_TYPE:-a100}
MEM_MB=${SLURM_MEM_MB:-16384}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
NODE=$(hostname -s)              # slurmctld insists on its own short hostname
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "slurm-setup: $*" >&2; }

wait_for() {  # wait_for SECONDS CMD...; gives up at once on a "fatal:" line in the logs
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then say "timeout: $*"; return 1; fi
    if grep -hs 'fatal:' "$STATE_DIR"/slurm*.log >&2; then return 1; fi
    sleep 0.1
  done
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

install_packages() {
  local missing=0 tool
  for tool in slurmctld slurmd sbatch munged mungekey; do
    command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null 2>&1 || missing=1
  done
  ((missing)) || return 0
  say "installing ${PACKAGES[*]} from the Debian archive"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >/dev/null
}

ping_ok() { SLURM_CONF=$1 timeout 5 scontrol ping >/dev/null 2>&1; }

write_config() {
  local gres_node="" gres_conf="AutoDetect=off"
  if ((GPUS > 0)); then
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE_DIR/gpu/nvidia$i"; done
    gres_node="Gres=gpu:$GPU_TYPE:$GPUS"
    gres_conf+=$'\n'"NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$STATE_DIR/gpu/nvidia[0-$((GPUS - 1))]"
  fi
  printf '%s\n' "$gres_conf" >"$STATE_DIR/gres.conf"
  cat >"$STATE_DIR/slurm.conf" <<EOF
# Written by jobyard's .ci/slurm-setup.sh: a throw-away single-machine cluster.
ClusterName=jobyard
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE_DIR/munge/munge.sock
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# jobacct_gather/linux: sstat's figures of running steps (jobyard's usage samples)
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MinJobAge=600
KillWait=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB $gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE MaxNodes=1 State=UP
EOF
}

start_daemons() {
  export SLURM_CONF=$STATE_DIR/slurm.conf
  local key=$STATE_DIR/munge/munge.key
  [ -f "$key" ] || mungekey -c -k "$key"
  chmod 0600 "$key"
  munged --socket="$STATE_DIR/munge/munge.sock" --key-file="$key" \
    --pid-file="$STATE_DIR/munge/munged.pid" --log-file="$STATE_DIR/munge/munged.log" \
    --seed-file="$STATE_DIR/munge/munged.seed"
  wait_for 10 test -S "$STATE_DIR/munge/munge.sock"
  slurmctld
  wait_for 20 scontrol ping
  slurmd
  wait_for 30 bash -c '[[ $(sinfo -h -o %T) == idle ]]'
}

link_etc() {
  [ "$(id -u)" = 0 ] || return 0
  if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -sfn "$STATE_DIR/slurm.conf" /etc/slurm/slurm.conf
  fi
}

start() {
  export PATH=$PATH:/usr/sbin:/sbin
  unset SLURM_JWT   # would switch every Slurm binary, daemons too, to auth/jwt
  if [ -f "$STATE_DIR/slurm.conf" ] && command -v scontrol >/dev/null && ping_ok "$STATE_DIR/slurm.conf"; then
    say "already running ($STATE_DIR)"
    link_etc
    echo "export SLURM_CONF=$STATE_DIR/slurm.conf"
    return 0
  fi
  if [ -z "${JOBYARD_SLURM_STATE:-}" ] && command -v scontrol >/dev/null &&
    [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ] && ping_ok /etc/slurm/slurm.conf; then
    say "a Slurm cluster already answers (/etc/slurm/slurm.conf); using it"
    echo "export SLURM_CONF=/etc/slurm/slurm.conf"
    return 0
  fi
  install_packages
  stop 2>/dev/null || true   # leftovers of an earlier run whose daemons died
  local started=$SECONDS
  cd /   # the daemons inherit the cwd
  mkdir -p "$STATE_DIR"/{munge,ctld,spool,gpu}
  rm -rf "$STATE_DIR"/ctld/* "$STATE_DIR"/spool/* "$STATE_DIR"/slurm*.log
  chmod 0755 "$STATE_DIR" "$STATE_DIR/munge"   # munged: socket dir and its parents a+x
  write_config
  trap 'rc=$?; ((rc == 0)) || { say "start failed; logs in $STATE_DIR"; stop; }' EXIT
  start_daemons
  trap - EXIT
  link_etc
  say "started in $((SECONDS - started)) s: $CPUS CPUs, $GPUS x gpu:$GPU_TYPE ($STATE_DIR)"
  echo "export SLURM_CONF=$STATE_DIR/slurm.conf"
}

stop() {
  local f pid
  export SLURM_CONF=$STATE_DIR/slurm.conf
  if [ -f "$SLURM_CONF" ] && ping_ok "$SLURM_CONF"; then
    scancel --quiet --partition=debug 2>/dev/null || true
  fi
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    [ -f "$STATE_DIR/$f" ] || continue
    pid=$(cat "$STATE_DIR/$f")
    kill "$pid" 2>/dev/null || true
    # gone or a zombie (this sandbox's init reaps late, so kill -0 would lie)
    wait_for 30 bash -c "s=\$(ps -o stat= -p $pid); [ -z \"\$s\" ] || [ \"\${s:0:1}\" = Z ]" ||
      kill -9 "$pid" 2>/dev/null || true
    rm -f "$STATE_DIR/$f"
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
