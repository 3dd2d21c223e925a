#!/usr/bin/env bash
# Brings up the local dev stack, idempotently: PostgreSQL (the system cluster)
# with a `conscope` database, and a tansu Kafka broker on 127.0.0.1:9092.
#
#   scripts/stack-up.sh
#
# What it touches:
#   - starts the Debian Postgres cluster when `pg_isready -h 127.0.0.1` fails,
#     and creates database `conscope` when missing (never drops anything);
#   - installs tansu $TANSU_VERSION with cargo into ~/.cargo/bin when it is
#     neither on PATH nor there (13-25 minutes, once per machine);
#   - starts tansu in the background when nothing listens on the broker port,
#     with its files in $CONSCOPE_STACK_DIR (default <repo>/.stack):
#     tansu.db (sqlite store), tansu.log, tansu.pid. It survives this script;
#     scripts/stack-down.sh stops it.
#
# Environment:
#   CONSCOPE_BROKER_PORT  broker port (default 9092). Any other port gets its own
#                         files (tansu-PORT.db/.log/.pid), so a test broker never
#                         shares a store with the dev broker.
#   CONSCOPE_STACK_DIR    where the broker's files live (default <repo>/.stack).
#
# The broker uses the sqlite storage engine: the memory engine reports wrong
# watermarks. Never delete a topic while a client reads it: tansu 0.6 can
# corrupt its sqlite store that way. Use fresh topic names instead.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage && exit 0
BROKER="127.0.0.1:$CONSCOPE_BROKER_PORT"

# --- PostgreSQL -------------------------------------------------------------

postgres_up() {
    if pg_ready; then
        log "postgres: already accepting connections on $PGHOST_DEFAULT:$PGPORT_DEFAULT"
    else
        [[ -d /etc/postgresql ]] ||
            die "postgres: nothing answers on $PGHOST_DEFAULT:$PGPORT_DEFAULT and no Debian cluster in /etc/postgresql to start"
        local version
        # The newest installed major version, e.g. 15.
        version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -n | tail -n 1)"
        log "postgres: not ready; starting cluster $version/main"
        local pg_ctl=(pg_ctlcluster --skip-systemctl-redirect "$version" main start)
        if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
            pg_ctl=(sudo "${pg_ctl[@]}")
        fi
        # A cluster that is "already running" but not ready yet is fine: wait below.
        "${pg_ctl[@]}" || log "postgres: pg_ctlcluster returned $?; waiting for it anyway"
        wait_for 60 "postgres to accept connections" pg_ready ||
            die "postgres: not ready after 60s"
        log "postgres: started"
    fi
    local exists
    exists="$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='conscope'")"
    if [[ "$exists" == 1 ]]; then
        log "postgres: database conscope exists"
    else
        psql_admin -d postgres -qc "CREATE DATABASE conscope"
        log "postgres: created database conscope"
    fi
}

# --- tansu: install ---------------------------------------------------------

tansu_install() {
    local bin
    if bin="$(tansu_bin)"; then
        log "tansu: found $bin"
        return
    fi
    mkdir -p "$CONSCOPE_STACK_DIR"
    # Two stack-ups at once (or an install started by hand) must not build twice:
    # wait for a running install, and serialise ours behind a lock.
    local waited=0
    while pgrep -f "cargo install tansu" >/dev/null 2>&1; do
        ((waited % 120 == 0)) &&
            log "tansu: a 'cargo install tansu' is already running; waiting for it (${waited}s so far)"
        sleep 10
        waited=$((waited + 10))
    done
    local lock="${CARGO_HOME:-$HOME/.cargo}/.conscope-tansu-install.lock"
    mkdir -p "$(dirname "$lock")"
    exec 9>"$lock"
    flock 9
    if bin="$(tansu_bin)"; then
        log "tansu: found $bin (installed meanwhile)"
        exec 9>&-
        return
    fi
    local install_log="$CONSCOPE_STACK_DIR/tansu-install.log"
    log "tansu: not installed; installing tansu $TANSU_VERSION with cargo."
    log "tansu: THIS TAKES 13-25 MINUTES, once per machine (log: $install_log)"
    local started=$SECONDS
    cargo install tansu --locked --version "$TANSU_VERSION" --features libsql \
        >"$install_log" 2>&1 &
    local pid=$!
    # A line a minute, so CI does not think the job hangs.
    local next_note=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        if ((SECONDS >= next_note)) && kill -0 "$pid" 2>/dev/null; then
            next_note=$((SECONDS + 60))
            log "tansu: still building ($(((SECONDS - started) / 60)) min): $(grep -E 'Compiling|Building' "$install_log" | tail -n 1 | sed 's/^ *//')"
        fi
    done
    local status=0
    wait "$pid" || status=$?
    exec 9>&-
    if ((status != 0)); then
        tail -n 40 "$install_log" >&2
        die "tansu: cargo install failed with status $status (log: $install_log)"
    fi
    bin="$(tansu_bin)" || die "tansu: cargo install succeeded but no tansu binary in ~/.cargo/bin"
    log "tansu: installed $bin in $(((SECONDS - started) / 60)) min"
}

# --- tansu: start -----------------------------------------------------------

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$CONSCOPE_BROKER_PORT") 2>/dev/null
}

# The pid in the pid file, when that process is alive and is a tansu.
running_pid() {
    local pid_file pid
    pid_file="$(stack_file pid)"
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    is_tansu "$pid" || return 1
    echo "$pid"
}

tansu_up() {
    local db log_file pid_file pid
    db="$(stack_file db)"
    log_file="$(stack_file log)"
    pid_file="$(stack_file pid)"
    if kafka_ping "$BROKER"; then
        if pid="$(running_pid)"; then
            log "tansu: already running on $BROKER (pid $pid, store $db)"
        else
            log "tansu: a Kafka broker already answers on $BROKER (not started by these scripts); using it"
        fi
        return
    fi
    if pid="$(running_pid)"; then
        # Ours, but not answering yet: it is still starting up.
        log "tansu: pid $pid is starting on $BROKER; waiting"
    elif port_open; then
        die "tansu: something listens on $BROKER but does not speak Kafka; free the port or set CONSCOPE_BROKER_PORT"
    else
        rm -f "$pid_file"
        tansu_install
        local bin
        bin="$(tansu_bin)"
        mkdir -p "$CONSCOPE_STACK_DIR"
        # tansu resolves a sqlite:// URL relative to its working directory
        # (sqlite://NAME -> ./NAME), so it runs in the stack dir with a bare name.
        local cmd=(
            "$bin" broker
            --storage-engine "sqlite://$(basename "$db")"
            --listener-url "tcp://127.0.0.1:$CONSCOPE_BROKER_PORT"
            --advertised-listener-url "tcp://127.0.0.1:$CONSCOPE_BROKER_PORT"
        )
        log "tansu: starting: (cd $CONSCOPE_STACK_DIR && ${cmd[*]})"
        printf '\n=== %s stack-up: %s\n' "$(date -Is)" "${cmd[*]}" >>"$log_file"
        # setsid + nohup: its own session, so neither the end of this script nor
        # a closed terminal takes the broker down. Neither forks here, so $! is
        # the broker's pid.
        # Every other inherited descriptor is closed: a CI runner waits for its
        # pipes to close, and a broker holding one would hang the step.
        (
            cd "$CONSCOPE_STACK_DIR"
            for fd in "/proc/$BASHPID/fd/"*; do
                fd="${fd##*/}"
                ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
            done
            exec setsid nohup "${cmd[@]}" >>"$log_file" 2>&1 </dev/null
        ) &
        pid=$!
        echo "$pid" >"$pid_file"
        log "tansu: pid $pid, store $db, log $log_file"
    fi
    local deadline=$((SECONDS + 60))
    until kafka_ping "$BROKER"; do
        if ! is_tansu "$pid"; then
            tail -n 30 "$log_file" >&2 || true
            rm -f "$pid_file"
            die "tansu: exited before answering on $BROKER (log: $log_file)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$log_file" >&2 || true
            die "tansu: no Kafka answer on $BROKER after 60s (pid $pid still running; log: $log_file)"
        fi
        sleep 0.5
    done
    log "tansu: answering Kafka on $BROKER"
}

postgres_up
tansu_up
log "stack is up: postgres://postgres@$PGHOST_DEFAULT:$PGPORT_DEFAULT/conscope, brokers $BROKER"
