#!/usr/bin/env bash
# Stops the tansu broker that scripts/stack-up.sh started (the pid in
# .stack/tansu.pid). Leaves PostgreSQL alone, and leaves any broker it did not
# start alone.
#
#   scripts/stack-down.sh          stop the broker, keep its store
#   scripts/stack-down.sh --wipe   stop it and delete its store and log
#                                  (every topic and message is gone)
#
# Honours CONSCOPE_BROKER_PORT and CONSCOPE_STACK_DIR like stack-up.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

wipe=false
case "${1:-}" in
"") ;;
--wipe) wipe=true ;;
-h | --help)
    usage
    exit 0
    ;;
*) die "unknown argument $1 (usage: $0 [--wipe])" ;;
esac

not_running() { ! is_tansu "$1"; }

pid_file="$(stack_file pid)"
if [[ -f "$pid_file" ]]; then
    pid="$(cat "$pid_file")"
    if is_tansu "$pid"; then
        log "tansu: stopping pid $pid"
        kill -TERM "$pid"
        if ! wait_for 20 "tansu pid $pid to exit" not_running "$pid"; then
            log "tansu: pid $pid ignored SIGTERM for 20s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_for 10 "tansu pid $pid to die" not_running "$pid" ||
                die "tansu: pid $pid survives SIGKILL"
        fi
        log "tansu: stopped"
    else
        log "tansu: pid file names $pid, which is not a running tansu; nothing to stop"
    fi
    rm -f "$pid_file"
else
    log "tansu: no pid file ($pid_file); nothing to stop"
fi

if [[ "$wipe" == true ]]; then
    db="$(stack_file db)"
    # Deleting a store under a live broker corrupts it; refuse when a broker we
    # did not stop still answers on the port.
    if kafka_ping "127.0.0.1:$CONSCOPE_BROKER_PORT"; then
        die "a broker still answers on 127.0.0.1:$CONSCOPE_BROKER_PORT (not started by stack-up.sh?); not wiping $db"
    fi
    rm -f "$db" "$db-wal" "$db-shm" "$db-journal" "$(stack_file log)"
    log "tansu: wiped store $db"
fi
