#!/usr/bin/env bash
# A single-node SLURM (munge + slurmctld + slurmd) on Debian, for running and
# testing `sbatch slurm/verify.sh` and `--cluster slurm` on one machine.
#
#   scripts/slurm-local.sh start    # install if missing, configure, start, wait for an idle node
#   scripts/slurm-local.sh stop     # stop the three daemons
#   scripts/slurm-local.sh status   # exit 0 when the node accepts jobs
#
# Idempotent: `start` on a running node only checks it.  Needs root to install or
# start anything; without root it succeeds only if SLURM is already usable.
# No systemd is assumed (containers, CI runners): the daemons are started directly.
#
# Environment:
#   WISEVERIFY_SLURM_CPUS     CPUs the node advertises (default 4; may exceed the real
#                             cores, SlurmdParameters=config_overrides allows it)
#   WISEVERIFY_SLURM_MEM_MB   RealMemory of the node in MB (default 8192, capped below RAM)
#   WISEVERIFY_SLURM_TIMEOUT  seconds to wait for an idle node (default 60)
set -euo pipefail

NODE=localhost
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# managed by wiseverify scripts/slurm-local.sh"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
TIMEOUT="${WISEVERIFY_SLURM_TIMEOUT:-60}"

say() { echo "slurm-local: $*" >&2; }
die() { echo "slurm-local: ERROR: $*" >&2; exit 1; }

# --- processes ---------------------------------------------------------------------------
# A killed daemon can linger as a zombie for a second or two: count zombies as dead.
alive() {
    local pid="$1" state
    [ -n "$pid" ] || return 1
    state="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
    [ -n "$state" ] && [ "${state:0:1}" != "Z" ]
}

pid_of() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

running() { alive "$(pid_of "$1")"; }

# Wait for a daemon's pid file (it appears a moment after the daemon returns).
wait_pidfile() {
    local file="$1" name="$2" i
    for i in $(seq 1 100); do
        running "$file" && return 0
        sleep 0.1
    done
    return 1
}

stop_pidfile() {
    local file="$1" name="$2" pid i
    pid="$(pid_of "$file")"
    if alive "$pid"; then
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            say "$name did not stop on SIGTERM; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$file"
}

# --- installation --------------------------------------------------------------------------
need_root() {
    [ "$(id -u)" = 0 ] || die "$* needs root (run as root, or ask an administrator for a SLURM account)"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ "${#missing[@]}" = 0 ] && return 0
    need_root "installing ${missing[*]}"
    command -v apt-get >/dev/null || die "cannot install ${missing[*]}: no apt-get (Debian/Ubuntu only)"
    export DEBIAN_FRONTEND=noninteractive
    say "installing ${missing[*]}"
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -qq || die "apt-get update failed"
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null || die "$cmd still missing after installing ${missing[*]}"
    done
}

# --- configuration ---------------------------------------------------------------------------
node_memory_mb() {
    local want="${WISEVERIFY_SLURM_MEM_MB:-8192}" total
    total="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    # slurmd refuses a node that claims more memory than it has
    if [ "$want" -gt $((total * 9 / 10)) ]; then want=$((total * 9 / 10)); fi
    echo "$want"
}

slurm_user() { if id slurm >/dev/null 2>&1; then echo slurm; else echo root; fi; }

render_conf() {
    local cpus="${WISEVERIFY_SLURM_CPUS:-4}" mem user
    mem="$(node_memory_mb)"
    user="$(slurm_user)"
    cat <<EOF
$MARK
# One node, one partition, no accounting database, no cgroups: enough to run
# real sbatch/srun/scancel against real daemons.
ClusterName=wiseverify-local
SlurmctldHost=$NODE
SlurmUser=$user
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
ScronParameters=enable
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Returns 0 when the file changed.
write_conf() {
    local new
    new="$(render_conf)"
    mkdir -p "$CONF_DIR"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it " \
            "(is another SLURM installation configured here?)"
    fi
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
        return 1
    fi
    printf '%s\n' "$new" >"$CONF"
    say "wrote $CONF"
    return 0
}

prepare_dirs() {
    local user
    user="$(slurm_user)"
    mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
    chown "$user:" /var/spool/slurmctld "$LOG_DIR"
    chmod 755 /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
}

# --- daemons -----------------------------------------------------------------------------------
start_munge() {
    if running "$MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    rm -f "$MUNGE_PID"
    [ -s /etc/munge/munge.key ] || {
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
    }
    chown munge: /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force || die "munged failed to start (see /var/log/munge/munged.log)"
    wait_pidfile "$MUNGE_PID" munged || die "munged did not write $MUNGE_PID"
    munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge credentials do not round-trip"
}

start_slurmctld() {
    running "$CTLD_PID" && return 0
    rm -f "$CTLD_PID"
    say "starting slurmctld"
    slurmctld || die "slurmctld failed to start; last log lines:
$(tail -n 20 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
    wait_pidfile "$CTLD_PID" slurmctld || die "slurmctld did not stay up; last log lines:
$(tail -n 20 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
}

start_slurmd() {
    running "$SLURMD_PID" && return 0
    rm -f "$SLURMD_PID"
    say "starting slurmd"
    slurmd -N "$NODE" || die "slurmd failed to start; last log lines:
$(tail -n 20 "$LOG_DIR/slurmd.log" 2>/dev/null)"
    wait_pidfile "$SLURMD_PID" slurmd || die "slurmd did not stay up; last log lines:
$(tail -n 20 "$LOG_DIR/slurmd.log" 2>/dev/null)"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true; }

# The node accepts work: idle, or already running jobs.
usable_state() {
    case "$1" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state="" resumed=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(node_state)"
        state="$(printf '%s' "$state" | tr -d '*~#!%$@^-')"
        if [ "$state" = idle ]; then
            return 0
        fi
        if [ "$resumed" = 0 ] && case "$state" in down* | drain* | fail*) true ;; *) false ;; esac; then
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        sleep 0.5
    done
    die "node $NODE not idle after ${TIMEOUT}s (state: ${state:-unknown}); $(scontrol show node "$NODE" 2>/dev/null | grep -o 'Reason=.*' || true)
slurmctld log: $(tail -n 10 "$LOG_DIR/slurmctld.log" 2>/dev/null)
slurmd log: $(tail -n 10 "$LOG_DIR/slurmd.log" 2>/dev/null)"
}

cmd_start() {
    # Already usable, either a SLURM installation not managed here or ours with the
    # current configuration and all three daemons up: nothing to do.
    if command -v sinfo >/dev/null && usable_state "$(node_state)"; then
        if ! grep -qsF "$MARK" "$CONF"; then
            say "SLURM is up (node $NODE $(node_state); $CONF not managed by this script)"
            return 0
        fi
        if [ "$(cat "$CONF")" = "$(render_conf)" ] && running "$MUNGE_PID" \
            && running "$CTLD_PID" && running "$SLURMD_PID"; then
            say "SLURM is up (node $NODE $(node_state))"
            return 0
        fi
    fi
    need_root "starting SLURM"
    install_packages
    local changed=0
    write_conf && changed=1
    prepare_dirs
    if [ "$changed" = 1 ]; then
        stop_pidfile "$SLURMD_PID" slurmd
        stop_pidfile "$CTLD_PID" slurmctld
    fi
    start_munge
    start_slurmctld
    start_slurmd
    wait_idle
    say "SLURM is up: node $NODE idle ($(sinfo -h -N -n "$NODE" -o '%c CPUs, %m MB'))"
}

cmd_stop() {
    need_root "stopping SLURM"
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
    stop_pidfile "$MUNGE_PID" munged
    say "stopped"
}

cmd_status() {
    local rc=0 d state
    for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        if running "${d#*:}"; then
            echo "${d%%:*}: running (pid $(pid_of "${d#*:}"))"
        else
            echo "${d%%:*}: not running"
        fi
    done
    state="$(command -v sinfo >/dev/null && node_state || true)"
    if usable_state "$(printf '%s' "$state" | tr -d '*~#!%$@^-')"; then
        sinfo -N -o '%N %T %c %m %P'
    else
        echo "node $NODE: not usable (${state:-no answer from slurmctld})"
        rc=3
    fi
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: scripts/slurm-local.sh start|stop|status" >&2
        exit 2
        ;;
esac
