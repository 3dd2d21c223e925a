#!/usr/bin/env bash
# Stops what scripts/stack-up.sh started: the Kafka broker on
# $CONSCOPE_BROKER_PORT (the pid in $CONSCOPE_STACK_DIR/kafka-PORT/pid), and
# PostgreSQL when stack-up started it from this stack dir. Leaves alone any
# broker or database it did not start.
#
#   scripts/stack-down.sh                stop the broker (and Postgres, see above); keep their data
#   scripts/stack-down.sh --wipe         ... and delete the broker's data and logs
#                                        (every topic and message is gone)
#   scripts/stack-down.sh --broker-only  stop the broker only; with --wipe too
#
# Honours CONSCOPE_BROKER_PORT and CONSCOPE_STACK_DIR like stack-up.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

wipe=false
broker_only=false
for arg in "$@"; do
    case "$arg" in
    --wipe) wipe=true ;;
    --broker-only) broker_only=true ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument $arg (usage: $0 [--wipe] [--broker-only])" ;;
    esac
done

not_running() { ! is_broker "$1"; }

dir="$(broker_dir)"
if pid="$(broker_pid)"; then
    log "kafka: stopping pid $pid (127.0.0.1:$CONSCOPE_BROKER_PORT)"
    kill -TERM "$pid"
    # A controlled shutdown flushes and closes its logs: give it time, so the
    # next start needs no log recovery.
    if ! wait_for 60 "kafka pid $pid to exit" not_running "$pid"; then
        log "kafka: pid $pid ignored SIGTERM for 60s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 10 "kafka pid $pid to die" not_running "$pid" ||
            die "kafka: pid $pid survives SIGKILL"
    fi
    log "kafka: stopped"
    rm -f "$dir/pid"
else
    log "kafka: no broker of ours runs on 127.0.0.1:$CONSCOPE_BROKER_PORT; nothing to stop"
fi

if [[ "$wipe" == true ]]; then
    # Deleting the data under a live broker corrupts it; refuse when a broker
    # we did not stop still answers on the port.
    if kafka_ping "127.0.0.1:$CONSCOPE_BROKER_PORT"; then
        die "a broker still answers on 127.0.0.1:$CONSCOPE_BROKER_PORT (not started by stack-up.sh?); not wiping $dir"
    fi
    rm -rf "$dir"
    log "kafka: wiped $dir"
fi

marker="$CONSCOPE_STACK_DIR/postgres.started"
if [[ "$broker_only" != true && -f "$marker" ]]; then
    version="$(cat "$marker")"
    log "postgres: stopping cluster $version/main (started by stack-up.sh)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main stop ||
        log "postgres: pg_ctlcluster stop returned $?"
    rm -f "$marker"
fi
