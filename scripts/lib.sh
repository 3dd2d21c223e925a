# shellcheck shell=bash
# Helpers shared by scripts/*.sh. Source it; it defines functions and variables
# only, and changes no shell options of the caller.
#
#   CONSCOPE_ROOT            the repository root
#   CONSCOPE_STACK_DIR       where the dev stack keeps its files (default <repo>/.stack)
#   CONSCOPE_BROKER_PORT     the local broker's port (default 9092)
#   CONSCOPE_CONTROLLER_PORT its KRaft controller's port (default broker port + 1)
#   KAFKA_VERSION            the Apache Kafka version pinned in scripts/kafka/pom.xml
#   KAFKA_LIB                where that version's jars are copied (shared by every
#                            broker of this machine; default ~/.cache/conscope/kafka-VERSION/lib)

CONSCOPE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSCOPE_STACK_DIR="${CONSCOPE_STACK_DIR:-$CONSCOPE_ROOT/.stack}"
CONSCOPE_BROKER_PORT="${CONSCOPE_BROKER_PORT:-9092}"
CONSCOPE_CONTROLLER_PORT="${CONSCOPE_CONTROLLER_PORT:-$((CONSCOPE_BROKER_PORT + 1))}"
# The one place the version is written is the POM; read it from there.
KAFKA_VERSION="$(sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$CONSCOPE_ROOT/scripts/kafka/pom.xml")"
# shellcheck disable=SC2034 # used by the scripts that source this file
KAFKA_LIB="${KAFKA_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/conscope/kafka-$KAFKA_VERSION/lib}"

# Postgres of the dev stack (trust auth on localhost).
PGHOST_DEFAULT="127.0.0.1"
PGPORT_DEFAULT="5432"
PGUSER_DEFAULT="postgres"

# log MESSAGE...: a timestamped line on stderr, tagged with the script's name.
log() {
    printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$(basename "$0" .sh)" "$*" >&2
}

# usage: prints the calling script's header comment (its documentation).
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# die MESSAGE...: log and exit 1.
die() {
    log "ERROR: $*"
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND [ARGS...]: runs COMMAND every half second
# until it succeeds; returns 1 (after logging) when SECONDS pass first.
wait_for() {
    local timeout="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# broker_dir: the directory of the broker on $CONSCOPE_BROKER_PORT: its
# server.properties, data/ (the log dirs and KRaft metadata), server.log,
# stdout.log and pid. Each port has its own, so a test broker never shares
# data with the dev broker.
broker_dir() {
    echo "$CONSCOPE_STACK_DIR/kafka-$CONSCOPE_BROKER_PORT"
}

# is_broker PID: succeeds when PID is a live (not zombie) JVM running kafka.Kafka
# with this port's server.properties.
is_broker() {
    local stat cmdline
    [[ "$1" =~ ^[0-9]+$ ]] && stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # /proc/PID/stat: "PID (COMM) STATE ..."
    [[ "$stat" =~ ^[0-9]+\ \([^\)]*\)\ ([A-Z]) ]] && [[ "${BASH_REMATCH[1]}" != Z ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)"
    [[ "$cmdline" == *" kafka.Kafka $(broker_dir)/server.properties"* ]]
}

# broker_pid: the pid in this port's pid file, when that process is our broker.
broker_pid() {
    local pid_file pid
    pid_file="$(broker_dir)/pid"
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    is_broker "$pid" || return 1
    echo "$pid"
}

# kafka_ping HOST:PORT: succeeds when a Kafka broker answers ApiVersions there
# (scripts/kafka_ping.py; a bash version of the same check when there is no python3).
kafka_ping() {
    if command -v python3 >/dev/null 2>&1; then
        python3 "$CONSCOPE_ROOT/scripts/kafka_ping.py" --quiet "$1"
    else
        kafka_ping_bash "$1"
    fi
}

# kafka_ping_bash HOST:PORT: kafka_ping.py's check in bash + coreutils: sends an
# ApiVersions v0 request (correlation id "cons", client id "conscope-ping") and
# checks the reply's size, correlation id, error code 0 and API count.
kafka_ping_bash() (
    { exec 3<>"/dev/tcp/${1%:*}/${1##*:}"; } 2>/dev/null || exit 1
    # size 23; api key 18, version 0; correlation id "cons"; client id, 13 bytes.
    printf '\x00\x00\x00\x17\x00\x12\x00\x00cons\x00\x0dconscope-ping' >&3
    read_u() { # N bytes from the socket as unsigned decimal bytes
        timeout 3 dd bs=1 count="$1" status=none <&3 | od -An -v -tu1
    }
    local size_bytes size reply
    read -r -a size_bytes <<<"$(read_u 4)"
    ((${#size_bytes[@]} == 4)) || exit 1
    size=$(((size_bytes[0] << 24) | (size_bytes[1] << 16) | (size_bytes[2] << 8) | size_bytes[3]))
    ((size >= 10 && size <= 65536)) || exit 1
    read -r -a reply <<<"$(read_u "$size" | tr -s " \n" " ")"
    ((${#reply[@]} == size)) || exit 1
    # correlation id "cons" = 99 111 110 115, then error code 0 0.
    [[ "${reply[*]:0:6}" == "99 111 110 115 0 0" ]] || exit 1
    local count=$(((reply[6] << 24) | (reply[7] << 16) | (reply[8] << 8) | reply[9]))
    ((count > 0 && size == 10 + 6 * count))
)

# pg_ready: succeeds when the dev Postgres accepts connections.
pg_ready() {
    pg_isready -q -h "$PGHOST_DEFAULT" -p "$PGPORT_DEFAULT"
}

# psql_admin ARGS...: psql as the superuser, on the postgres database by default.
psql_admin() {
    psql -X -v ON_ERROR_STOP=1 -h "$PGHOST_DEFAULT" -p "$PGPORT_DEFAULT" -U "$PGUSER_DEFAULT" "$@"
}

# phase NAME COMMAND [ARGS...]: runs a command, logs its duration and status.
# Returns the command's status.
phase() {
    local name="$1"
    shift
    local started=$SECONDS status=0
    log "==> $name"
    "$@" || status=$?
    local took=$((SECONDS - started))
    if ((status == 0)); then
        log "<== $name: ok (${took}s)"
    else
        log "<== $name: FAILED with status $status (${took}s)"
    fi
    return "$status"
}
