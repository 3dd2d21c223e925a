#!/usr/bin/env bash
# Runs conscope as a timely cluster of several processes.
#
#   scripts/cluster.sh HOSTS_FILE [conscope run args...]
#
# HOSTS_FILE is timely's format: one `host:port` per line, line I (counting
# from 0) is the address process I listens on for its peers; the number of
# lines is the number of processes N. No blank lines, no comments: timely
# reads every line as an address. For three processes on one machine:
#
#   127.0.0.1:2101
#   127.0.0.1:2102
#   127.0.0.1:2103
#
# This script starts `conscope run --processes N --process I --hosts HOSTS_FILE
# [args...]` for every line I whose host is an address of this machine (on a
# single machine: every line; on several machines, run it on each with the same
# file and the same arguments). Each process's output is prefixed with [pI].
# It waits for all of them and exits non-zero if any failed; when one fails, it
# stops the others (a timely cluster cannot go on without a member).
#
# The binary is $CONSCOPE_BIN, default target/release/conscope (built if missing).
#
#   scripts/cluster.sh hosts.txt -w 2 --exit-at-end --from earliest --input-topic raw_prices
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 1)) || die "usage: $0 HOSTS_FILE [conscope run args...]"
[[ "$1" == -h || "$1" == --help ]] && usage && exit 0
hosts_file="$(realpath "$1")"
shift
[[ -r "$hosts_file" ]] || die "cannot read hosts file $hosts_file"

mapfile -t lines <"$hosts_file"
processes=${#lines[@]}
((processes >= 1)) || die "$hosts_file is empty"
for i in "${!lines[@]}"; do
    line="${lines[$i]%$'\r'}"
    [[ "$line" =~ ^[^[:space:]#]+:[0-9]+$ ]] ||
        die "$hosts_file line $((i + 1)): expected host:port, got '${lines[$i]}' (no blank lines or comments)"
done

# is_local HOST: succeeds when this machine can bind HOST, i.e. it is one of
# ours. Without python3: localhost, loopback, or listed by `hostname -I`.
is_local() {
    if ! command -v python3 >/dev/null 2>&1; then
        local host="${1#[}"
        host="${host%]}"
        [[ "$host" == localhost || "$host" == 127.* || "$host" == ::1 ||
            "$host" == "$(hostname)" || " $(hostname -I 2>/dev/null) " == *" $host "* ]]
        return
    fi
    python3 - "$1" <<'PY'
import socket, sys
host = sys.argv[1].strip("[]")
try:
    for family, kind, proto, _, address in socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.bind(address[:1] + (0,) + address[2:])
            sys.exit(0)
except OSError:
    pass
sys.exit(1)
PY
}

bin="${CONSCOPE_BIN:-$CONSCOPE_ROOT/target/release/conscope}"
if [[ ! -x "$bin" ]]; then
    log "no $bin; building it"
    (cd "$CONSCOPE_ROOT" && cargo build --release --bin conscope)
fi

declare -A pids=()
for i in "${!lines[@]}"; do
    address="${lines[$i]%$'\r'}"
    host="${address%:*}"
    if ! is_local "$host"; then
        log "process $i ($address) is not on this machine; skipping it"
        continue
    fi
    log "starting process $i of $processes on $address"
    "$bin" run --processes "$processes" --process "$i" --hosts "$hosts_file" "$@" \
        > >(sed -u "s/^/[p$i] /") 2>&1 &
    pids[$i]=$!
done
((${#pids[@]} > 0)) || die "no line of $hosts_file names an address of this machine"

stop_all() {
    for i in "${!pids[@]}"; do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
}
trap 'log "interrupted; stopping the processes"; stop_all; wait; exit 130' INT TERM

failed=()
stopping=false
while ((${#pids[@]} > 0)); do
    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        kill -0 "$pid" 2>/dev/null && continue
        status=0
        wait "$pid" || status=$?
        unset "pids[$i]"
        if ((status == 0)); then
            log "process $i exited ok"
        elif [[ "$stopping" == true ]]; then
            log "process $i stopped (status $status)"
        else
            log "process $i FAILED with status $status"
            failed+=("$i")
            if ((${#pids[@]} > 0)); then
                log "stopping the other processes"
                stopping=true
                stop_all
            fi
        fi
    done
    sleep 0.5
done
wait # the output filters

if ((${#failed[@]} > 0)); then
    die "process(es) ${failed[*]} failed"
fi
log "all processes exited ok"
