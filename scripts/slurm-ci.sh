#!/usr/bin/env bash
# A real single-node Slurm (Debian's 22.05) for the executor tests, with job accounting
# (slurmdbd + MariaDB, so `sacct` works) and two fake GPUs (gres with mknod'ed devices).
#
#   scripts/slurm-ci.sh start DIR   # installs nothing; starts the daemons, state under DIR
#   scripts/slurm-ci.sh stop DIR    # stops them by their pid files
#
# After `start`, `export SLURM_CONF=DIR/etc/slurm.conf` points Slurm's commands at it.
# SLURM_CI_PORT=N moves the four ports it listens on (MariaDB N, slurmctld N+1, slurmd N+2,
# slurmdbd N+3; default 3307 with Slurm's own defaults), so that two can run on one machine.
# Recipe 1 of ../shared/specs/distributed.md. No systemd: every daemon is started by hand.
set -euo pipefail

cmd="${1:?usage: slurm-ci.sh start|stop DIR}"
D="${2:?usage: slurm-ci.sh start|stop DIR}"
mkdir -p "$D"
D="$(cd "$D" && pwd)"
export SLURM_CONF="$D/etc/slurm.conf"

stop() {
  for f in slurmd slurmctld slurmdbd; do
    if [ -f "$D/run/$f.pid" ]; then
      kill "$(cat "$D/run/$f.pid")" 2>/dev/null || true
      rm -f "$D/run/$f.pid"
    fi
  done
  if [ -f "$D/mysql-run/mariadb.pid" ]; then
    kill "$(cat "$D/mysql-run/mariadb.pid")" 2>/dev/null || true
    rm -f "$D/mysql-run/mariadb.pid"
  fi
  # munged is left running: its socket (/run/munge) is the machine's, and other Slurm
  # instances on this machine (another DIR) authenticate through it too.
}

wait_for() { # seconds, command...
  local end=$(( $(date +%s) + $1 )); shift
  while [ "$(date +%s)" -lt "$end" ]; do
    if timeout 5 "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "slurm-ci: timed out waiting for: $*" >&2
  for log in "$D"/log/*.log; do
    [ -f "$log" ] || continue
    echo "--- last lines of $log" >&2
    tail -n 20 "$log" >&2
  done
  return 1
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: slurm-ci.sh start|stop DIR" >&2; exit 2; }

stop
chmod 755 "$D" # MariaDB runs as mysql and must reach its directories
mkdir -p "$D"/{etc,run,log,spool/slurmd,spool/ctld,mysql-run}
cpus="$(nproc)"
# At least 16 CPUs for Slurm (config_overrides): a 20-point array drains in one wave.
slots=$(( cpus > 16 ? cpus : 16 ))
port="${SLURM_CI_PORT:-}"
db_port="${port:-3307}"
ports_conf=""
dbd_port_conf=""
if [ -n "$port" ]; then
  ports_conf="SlurmctldPort=$(( port + 1 ))
SlurmdPort=$(( port + 2 ))
AccountingStoragePort=$(( port + 3 ))"
  dbd_port_conf="DbdPort=$(( port + 3 ))"
fi

# munge (slurmdbd authenticates with it); the key comes from the package. Its socket is
# the machine's, shared by every Slurm instance here, so it is started when none answers and
# never stopped by this script.
mkdir -p /run/munge && chown munge:munge /run/munge
# A socket left by a munged that no longer runs (a machine image, a killed session) answers
# nothing: check that munge works rather than that its socket exists.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for 10 sh -c 'munge -n | unmunge'
fi

# MariaDB in its own data directory and port.
chown mysql:mysql "$D/mysql-run"
if [ ! -d "$D/mysql/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$D/mysql" >"$D/log/mariadb-install.log" 2>&1
fi
setsid mariadbd --user=mysql --datadir="$D/mysql" --socket="$D/mysql-run/mysql.sock" \
  --port="$db_port" --bind-address=127.0.0.1 --pid-file="$D/mysql-run/mariadb.pid" \
  --skip-log-error >"$D/log/mariadb.log" 2>&1 </dev/null &
wait_for 30 mariadb --socket="$D/mysql-run/mysql.sock" -uroot -e 'select 1'
mariadb --socket="$D/mysql-run/mysql.sock" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ci-slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# Two fake GPUs: character devices, so slurmd accepts them and sets CUDA_VISIBLE_DEVICES.
for i in 0 1; do
  [ -c "$D/gpu$i" ] || mknod "$D/gpu$i" c 195 "$i"
done

cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
$dbd_port_conf
StorageUser=slurm
StoragePass=ci-slurm
StorageLoc=slurm_acct_db
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
EOF
chmod 600 "$D/etc/slurmdbd.conf"

cat >"$D/etc/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmdSpoolDir=$D/spool/slurmd
StateSaveLocation=$D/spool/ctld
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$ports_conf
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
MaxArraySize=1001
NodeName=ci0 NodeAddr=127.0.0.1 CPUs=$slots RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ci0 Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=ci0 Name=gpu File=$D/gpu[0-1]" >"$D/etc/gres.conf"

slurmdbd
wait_for 30 sacctmgr -n list cluster
sacctmgr -i add cluster ci >/dev/null 2>&1 || true
slurmctld -i
slurmd -N ci0
wait_for 30 sh -c 'sinfo -h -o %T | grep -qx idle'
echo "slurm-ci: ready (SLURM_CONF=$SLURM_CONF)"
