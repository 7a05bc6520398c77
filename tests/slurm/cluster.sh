#!/usr/bin/env bash
# A real, single-host SLURM cluster for the test-suite: munge + MariaDB + slurmdbd + slurmctld + two slurmd (n1, n2).
#
#   bash tests/slurm/cluster.sh up      # install (if needed), configure, start, wait for 2 idle nodes, write env.sh
#   bash tests/slurm/cluster.sh status  # daemons, sinfo, squeue
#   bash tests/slurm/cluster.sh down    # stop only the daemons recorded in our pid files
#
# Everything (configs, munge key/socket, MariaDB datadir, spools, logs, pid files) lives in the state dir
# ${RETHINK_SLURM_DIR:-/tmp/rethink-slurm}; afterwards `source <state dir>/env.sh` (sets SLURM_CONF).
# Daemons run as root, started by hand (no systemd), listening on loopback / non-default ports:
#   slurmctld PORT_BASE, slurmdbd PORT_BASE+1, slurmd n1 PORT_BASE+2, slurmd n2 PORT_BASE+3, MariaDB PORT_BASE+4
# with PORT_BASE=${RETHINK_SLURM_PORT_BASE:-16817}.
# Other knobs: RETHINK_SLURM_CPUS (CPUs per node, default nproc), RETHINK_SLURM_MEM_MB (RealMemory per node,
# default 80% of MemTotal), RETHINK_SLURM_TIMEOUT (seconds to wait for idle nodes, default 90).
# Exit codes: 0 ok, 1 error, 77 = SLURM packages missing and cannot be installed (callers may skip).
set -euo pipefail

STATE=${RETHINK_SLURM_DIR:-/tmp/rethink-slurm}
PORT_BASE=${RETHINK_SLURM_PORT_BASE:-16817}
CTLD_PORT=$PORT_BASE
DBD_PORT=$((PORT_BASE + 1))
N1_PORT=$((PORT_BASE + 2))
N2_PORT=$((PORT_BASE + 3))
DB_PORT=$((PORT_BASE + 4))
CLUSTER=rethink
PARTITION=debug
WAIT_TIMEOUT=${RETHINK_SLURM_TIMEOUT:-90}
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
MUNGE_SOCK=$STATE/munge/munge.socket
DB_SOCK=$STATE/mysql/mysqld.sock
SLURM_CONF_FILE=$ETC/slurm.conf

T0=$(date +%s.%N)
say() { echo "[slurm-cluster] $*"; }
die() { echo "[slurm-cluster] ERROR: $1" >&2; exit "${2:-1}"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# ----------------------------------------------------------------------------------------------------------------
# process bookkeeping: one pid file per daemon, identity checked against /proc/<pid>/cmdline
# ----------------------------------------------------------------------------------------------------------------
# name -> "comm|substring of its cmdline/environ that proves it is ours"
declare -A IDENT=(
  [munged]="munged|$MUNGE_SOCK"
  [mariadbd]="mariadbd|$STATE/mysql"
  [slurmdbd]="slurmdbd|SLURM_CONF=$SLURM_CONF_FILE"
  [slurmctld]="slurmctld|$ETC"
  [slurmd-n1]="slurmd|$SLURM_CONF_FILE -N n1"
  [slurmd-n2]="slurmd|$SLURM_CONF_FILE -N n2"
)
START_ORDER=(munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2)

pid_of() {  # prints the pid if the recorded process is alive and ours
  local name=$1 f=$RUN/$1.pid pid comm want_comm want_arg cmd
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1
  want_comm=${IDENT[$name]%%|*}
  want_arg=${IDENT[$name]#*|}
  comm=$(cat 2>/dev/null <"/proc/$pid/comm") || return 1
  [[ $comm == "$want_comm" ]] || return 1
  # command line plus environment (slurmdbd has no config option: it is identified by its SLURM_CONF)
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/environ")" || return 1
  [[ $cmd == *"$want_arg"* ]] || return 1
  # a zombie is not running
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  echo "$pid"
}
running() { pid_of "$1" >/dev/null; }

spawn() {  # spawn NAME CMD...  (foreground-mode daemon, detached into its own session)
  local name=$1; shift
  local out=$LOG/$name.out
  # setsid execs in place (we are not a process-group leader in a non-interactive script), so $! is the daemon
  # (fd 9 is our flock on the state dir: daemons must not inherit it)
  setsid "$@" >>"$out" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/$name.pid"
  sleep 0.2
  running "$name" || { tail_logs "$name"; die "$name exited right after start (see $out)"; }
  say "started $name (pid $(<"$RUN/$name.pid"))"
}

stop_one() {
  local name=$1 pid i
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do [[ -d /proc/$pid ]] && running "$name" || break; sleep 0.1; done
    if running "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tail_logs() {
  local f
  for f in "$LOG"/*.log "$LOG"/*.out; do
    [[ -s $f ]] || continue
    echo "----- tail -n 25 $f" >&2
    tail -n 25 "$f" >&2
  done
}

# ----------------------------------------------------------------------------------------------------------------
# packages
# ----------------------------------------------------------------------------------------------------------------
missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || echo "$p"
  done
}

ensure_packages() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [[ -z ${missing// /} ]] && return 0
  command -v apt-get >/dev/null || die "missing packages ($missing) and no apt-get" 77
  [[ $(id -u) == 0 ]] || die "missing packages ($missing); run as root to install them" 77
  say "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # never let maintainer scripts start system-wide daemons (on default ports) for us
  local created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -q)
  local need_update=0 p
  for p in $missing; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then need_update=1; fi
  done
  local ok=0
  if [[ $need_update == 0 ]] && "${apt[@]}" install -y --no-install-recommends $missing; then
    ok=1
  elif "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends $missing; then
    ok=1
  fi
  [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  [[ $ok == 1 ]] || die "apt-get could not install: $missing" 77
  missing=$(missing_packages | tr '\n' ' ')
  [[ -z ${missing// /} ]] || die "still missing after apt-get: $missing" 77
  say "packages installed ($(elapsed) s)"
}

# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
CONFIG_CHANGED=0
install_file() {  # install_file DEST MODE  (content on stdin; only rewritten when different)
  local dest=$1 mode=$2 tmp
  tmp=$(mktemp "$dest.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$dest"
    CONFIG_CHANGED=1
  fi
}

write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/munge" "$STATE/mysql" "$STATE/spool/ctld" "$STATE/spool/n1" "$STATE/spool/n2"
  chmod 755 "$STATE" "$ETC" "$RUN" "$LOG"
  chmod 755 "$STATE/munge"

  # munge key: generated once, then kept
  if [[ ! -s $STATE/munge/munge.key ]]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$STATE/munge/munge.key"

  if [[ ! -s $ETC/db.pass ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass")
  fi
  chmod 600 "$ETC/db.pass"

  local host cpus mem
  host=$(hostname -s)
  cpus=${RETHINK_SLURM_CPUS:-$(nproc)}
  mem=${RETHINK_SLURM_MEM_MB:-$(awk '/^MemTotal:/{m=int($2/1024*0.8); if (m<1000) m=1000; print m}' /proc/meminfo)}

  install_file "$SLURM_CONF_FILE" 644 <<EOF
# generated by tests/slurm/cluster.sh -- local 2-node test cluster (edit the script, not this file)
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$N1_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# non-default munge socket for every daemon and client; cred_expire=5 so requeued jobs restart after ~6 s (not 121 s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=5
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd-%n.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain /proc process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MessageTimeout=10
KillWait=2
MinJobAge=30
Waittime=0
JobRequeue=1
# schedule immediately instead of every 60 s
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# jobs in partition "urgent" preempt (requeue) jobs in "$PARTITION"
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# accounting (submitit polls sacct; without it a job killed before writing its result never finishes)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$N1_PORT CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$N2_PORT CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=n1,n2 Default=NO MaxTime=INFINITE State=UP PriorityTier=10
EOF

  install_file "$ETC/slurmdbd.conf" 600 <<EOF
# generated by tests/slurm/cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.daemon.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$ETC/db.pass")
StorageLoc=slurm_acct_db
EOF
  chown root:root "$ETC/slurmdbd.conf"
  chmod 600 "$ETC/slurmdbd.conf"

  local changed=$CONFIG_CHANGED
  install_file "$STATE/env.sh" 644 <<EOF
# source this to talk to the rethink test cluster (written by tests/slurm/cluster.sh up)
export SLURM_CONF='$SLURM_CONF_FILE'
export RETHINK_SLURM_DIR='$STATE'
export RETHINK_SLURM_PARTITION='$PARTITION'
export RETHINK_SLURM_NODES='n1,n2'
export RETHINK_SLURM_CLUSTER='$CLUSTER'
EOF
  CONFIG_CHANGED=$changed  # env.sh alone needs no daemon restart
}

# ----------------------------------------------------------------------------------------------------------------
# daemons
# ----------------------------------------------------------------------------------------------------------------
check_port_free() {  # check_port_free NAME PORT
  if ! running "$1" && port_busy "$2"; then
    die "port $2 (for $1) is already in use by another process; set RETHINK_SLURM_PORT_BASE to another range"
  fi
}

db() { mariadb --no-defaults -S "$DB_SOCK" -uroot "$@"; }

start_munged() {
  running munged && return 0
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  spawn munged munged --foreground --force --socket="$MUNGE_SOCK" --key-file="$STATE/munge/munge.key" \
    --pid-file="$RUN/munged.daemon.pid" --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munge.seed"
  local i
  for i in $(seq 1 50); do
    munge -S "$MUNGE_SOCK" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail_logs; die "munged does not answer on $MUNGE_SOCK"
}

start_mariadb() {
  running mariadbd && return 0
  check_port_free mariadbd "$DB_PORT"
  local data=$STATE/mysql/data
  if [[ ! -d $data/mysql ]]; then
    say "initialising MariaDB datadir $data"
    mariadb-install-db --no-defaults --user=root --datadir="$data" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install-db.out" 2>&1 ||
      { tail -n 30 "$LOG/mariadb-install-db.out" >&2; die "mariadb-install-db failed"; }
  fi
  rm -f "$DB_SOCK"
  spawn mariadbd mariadbd --no-defaults --user=root --datadir="$data" --socket="$DB_SOCK" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$RUN/mariadbd.daemon.pid" \
    --log-error="$LOG/mariadbd.log" --tmpdir="$STATE/mysql" --innodb-buffer-pool-size=128M \
    --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M --skip-log-bin
  local i
  for i in $(seq 1 150); do
    mariadb-admin --no-defaults -S "$DB_SOCK" -uroot ping >/dev/null 2>&1 && break
    running mariadbd || { tail_logs; die "mariadbd died during start"; }
    sleep 0.2
  done
  mariadb-admin --no-defaults -S "$DB_SOCK" -uroot ping >/dev/null 2>&1 || { tail_logs; die "MariaDB did not come up"; }
  local pw
  pw=$(<"$ETC/db.pass")
  db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
  if ! running slurmdbd; then
    check_port_free slurmdbd "$DBD_PORT"
    spawn slurmdbd slurmdbd -D -s  # reads slurmdbd.conf next to $SLURM_CONF
  fi
  local i
  for i in $(seq 1 150); do
    sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 && break
    running slurmdbd || { tail_logs; die "slurmdbd died during start"; }
    sleep 0.2
  done
  sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 || { tail_logs; die "slurmdbd does not answer on port $DBD_PORT"; }
  if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    say "registered cluster '$CLUSTER' in slurmdbd"
  fi
}

start_slurmctld() {
  running slurmctld && return 0
  check_port_free slurmctld "$CTLD_PORT"
  spawn slurmctld slurmctld -D -s -f "$SLURM_CONF_FILE"
}

start_slurmd() {  # start_slurmd n1 PORT
  local node=$1 port=$2
  running "slurmd-$node" && return 0
  check_port_free "slurmd-$node" "$port"
  spawn "slurmd-$node" slurmd -D -s -f "$SLURM_CONF_FILE" -N "$node"
}

node_states() { sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null | sort -u; }

wait_nodes() {  # wait until both nodes are usable (idle on a fresh cluster; mixed/allocated fine when re-up)
  local deadline=$(( $(date +%s) + WAIT_TIMEOUT )) states resumed=0
  while :; do
    states=$(node_states || true)
    if [[ $(grep -cE '^(n1|n2) (idle|mixed|allocated|completing)$' <<<"$states") == 2 ]]; then
      return 0
    fi
    # nodes left DOWN/DRAIN from an earlier run: resume them once (ReturnToService=2 usually does it)
    if [[ $resumed == 0 ]] && grep -qE '^(n1|n2) (down|drain|drained|draining|fail)' <<<"$states"; then
      sleep 2
      scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
      resumed=1
    fi
    if (( $(date +%s) >= deadline )); then
      echo "[slurm-cluster] ERROR: nodes not idle after ${WAIT_TIMEOUT}s; sinfo says:" >&2
      sinfo -N -l >&2 || true
      scontrol show node n1 n2 2>&1 | grep -E 'NodeName|State|Reason' >&2 || true
      tail_logs
      exit 1
    fi
    sleep 0.5
  done
}

all_running() { local n; for n in "${START_ORDER[@]}"; do running "$n" || return 1; done; }

print_env() {
  say "environment (also in $STATE/env.sh):"
  grep '^export' "$STATE/env.sh"
}

cmd_up() {
  ensure_packages
  [[ $(id -u) == 0 ]] || die "must run as root (the daemons run as SlurmUser=root)" 77
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 600 9 || die "could not lock $STATE/.lock"
  say "state dir: $STATE"
  write_configs
  export SLURM_CONF=$SLURM_CONF_FILE
  if [[ $CONFIG_CHANGED == 1 ]]; then
    # configs differ from what running daemons were started with: restart the slurm daemons
    local n
    for n in slurmd-n2 slurmd-n1 slurmctld slurmdbd; do running "$n" && { say "config changed: restarting $n"; stop_one "$n"; }; done
  fi
  if all_running && [[ $(node_states | grep -cE '^(n1|n2) (idle|mixed|allocated|completing)$') == 2 ]]; then
    say "already up ($(elapsed) s)"
    print_env
    return 0
  fi
  start_munged
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd n1 "$N1_PORT"
  start_slurmd n2 "$N2_PORT"
  wait_nodes
  say "up: 2 nodes idle ($(elapsed) s)"
  sinfo
  print_env
}

cmd_down() {
  [[ -d $RUN ]] || { say "nothing to stop in $STATE"; return 0; }
  export SLURM_CONF=$SLURM_CONF_FILE
  if running slurmctld; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs: $jobs"
      scancel $jobs 2>/dev/null || true
      local i
      for i in $(seq 1 20); do [[ -z $(squeue -h -t R,CG -o %A 2>/dev/null) ]] && break; sleep 0.5; done
    fi
  fi
  local n
  for n in slurmd-n2 slurmd-n1 slurmctld slurmdbd mariadbd munged; do stop_one "$n"; done
  say "down ($(elapsed) s); state kept in $STATE"
}

cmd_status() {
  say "state dir: $STATE"
  local n pid
  for n in "${START_ORDER[@]}"; do
    if pid=$(pid_of "$n"); then echo "  $n: running (pid $pid)"; else echo "  $n: not running"; fi
  done
  if [[ -f $SLURM_CONF_FILE ]] && running slurmctld; then
    export SLURM_CONF=$SLURM_CONF_FILE
    echo "--- sinfo"; sinfo -N -l || true
    echo "--- squeue"; squeue || true
  fi
  all_running
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status   (state dir: \${RETHINK_SLURM_DIR:-/tmp/rethink-slurm})" >&2; exit 2 ;;
esac
