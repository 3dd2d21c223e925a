#!/usr/bin/env bash
# Brings up the local dev stack, idempotently: PostgreSQL (Debian's cluster)
# with a `conscope` database, and a single-node Apache Kafka (KRaft: broker and
# controller in one JVM) on 127.0.0.1:9092. Installs what is missing, starts
# what is down, waits until each answers, and says what it did and how long
# each step took. Assumes nothing was left running.
#
#   scripts/stack-up.sh
#
# What it touches:
#   - PostgreSQL: installs Debian's `postgresql` package when no cluster is
#     there (apt-get), lets user `postgres` in over 127.0.0.1 and ::1 without a
#     password (a `trust` line at the top of pg_hba.conf: a dev stack only),
#     starts the cluster when `pg_isready -h 127.0.0.1` fails, and creates
#     database `conscope` when missing (never drops anything);
#   - Apache Kafka $KAFKA_VERSION (pinned in scripts/kafka/pom.xml): Maven copies
#     kafka_2.13 and its runtime dependencies from Maven Central into $KAFKA_LIB
#     once per machine (installing a JRE and Maven from Debian when missing);
#     the broker's files live in $CONSCOPE_STACK_DIR/kafka-PORT/: server.properties
#     (from scripts/kafka/server.properties), data/ (formatted once with a new
#     cluster id), server.log, stdout.log, pid. The broker runs in the background
#     and survives this script; scripts/stack-down.sh stops it.
#
# Environment:
#   CONSCOPE_BROKER_PORT      broker port (default 9092). Another port is another,
#                             independent broker with its own directory, so a
#                             test or benchmark can have a clean broker.
#   CONSCOPE_CONTROLLER_PORT  its controller's port (default broker port + 1).
#   CONSCOPE_STACK_DIR        where the brokers' directories live (default <repo>/.stack).
#   KAFKA_HEAP_OPTS           the broker's heap (default -Xms512m -Xmx1g: Kafka's own
#                             default size, ample on a 2-core, 24 GiB machine).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage && exit 0
BROKER="127.0.0.1:$CONSCOPE_BROKER_PORT"
[[ -n "$KAFKA_VERSION" ]] || die "no <kafka.version> in scripts/kafka/pom.xml"

as_root() {
    if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        "$@"
    fi
}

apt_updated=false
# apt_install PACKAGE...: installs Debian packages, refreshing the lists once.
apt_install() {
    if [[ "$apt_updated" != true ]]; then
        as_root apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed"
}

# --- PostgreSQL -------------------------------------------------------------

# The newest Debian cluster's version (e.g. 15), or nothing.
pg_version() {
    find /etc/postgresql -mindepth 2 -maxdepth 2 -name main -printf "%h\n" 2>/dev/null |
        xargs -r -n1 basename | sort -n | tail -n 1
}

postgres_install() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -n "$(pg_version)" ]]; then
        log "postgres: cluster $(pg_version)/main installed"
        return
    fi
    log "postgres: not installed; installing Debian's postgresql"
    apt_install postgresql postgresql-client
    # Debian creates the main cluster on install; a minimal image may have
    # create_main_cluster off.
    if [[ -z "$(pg_version)" ]]; then
        local major
        major="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -n | tail -n 1)"
        as_root pg_createcluster "$major" main >&2
    fi
    log "postgres: installed cluster $(pg_version)/main"
}

# The dev stack's rule: user postgres over loopback without a password. Put
# first, so Debian's scram-sha-256 lines below never see these connections.
PG_TRUST_MARK="# conscope dev stack: user postgres over loopback without a password"
postgres_trust() {
    local hba
    hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
    [[ -f "$hba" ]] || return 0
    if grep -qF "$PG_TRUST_MARK" "$hba"; then
        return 1
    fi
    local tmp
    tmp="$(mktemp)"
    {
        echo "$PG_TRUST_MARK"
        echo "host    all             postgres        127.0.0.1/32            trust"
        echo "host    all             postgres        ::1/128                 trust"
        cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    log "postgres: added trust for user postgres on loopback to $hba"
}

# The dev stack's server settings, as a production server of this machine's
# size would have them (Debian's defaults are sized for a small VM). Measured
# on a 1,000,000-listing replay (2M messages, -w 2): with the defaults (128 MB
# of shared buffers, checkpoints every 1 GB of WAL) PostgreSQL spent 43.6
# CPU-s per 1M messages, evicting and re-reading the listings' and the
# history's index pages, and writing a full-page image after every checkpoint;
# with these, 33.5. A job's own server wants the same: shared buffers that hold
# `listings`, its primary key and the current month's history index.
# max_prepared_transactions lets the writer commit a large batch on more than
# one connection (`--writer-connections`, src/sink/parts.rs): one prepared
# part per connection but the first.
PG_TUNING="# conscope dev stack: written by scripts/stack-up.sh
shared_buffers = '1GB'
max_wal_size = '4GB'
max_prepared_transactions = 8"

# Writes the settings to the cluster's conf.d; true (0) when they changed.
postgres_tune() {
    local conf
    conf="/etc/postgresql/$(pg_version)/main/conf.d/conscope.conf"
    [[ -d "$(dirname "$conf")" ]] || return 1
    if [[ -f "$conf" && "$(cat "$conf")" == "$PG_TUNING" ]]; then
        return 1
    fi
    local tmp
    tmp="$(mktemp)"
    echo "$PG_TUNING" >"$tmp"
    as_root cp "$tmp" "$conf"
    rm -f "$tmp"
    as_root chmod 644 "$conf"
    log "postgres: wrote the dev stack's server settings to $conf"
}

postgres_up() {
    postgres_install
    local version hba_changed=false tuned=false
    version="$(pg_version)"
    postgres_trust && hba_changed=true
    postgres_tune && tuned=true
    if pg_ready; then
        log "postgres: already accepting connections on $PGHOST_DEFAULT:$PGPORT_DEFAULT"
        if [[ "$tuned" == true ]]; then
            # shared_buffers takes a restart.
            log "postgres: restarting cluster $version/main for its new settings"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart >&2
            wait_for 60 "postgres to accept connections" pg_ready ||
                die "postgres: not ready after 60s"
        elif [[ "$hba_changed" == true ]]; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
        fi
    else
        log "postgres: not ready; starting cluster $version/main"
        # A cluster that is "already running" but not ready yet is fine: wait below.
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 ||
            log "postgres: pg_ctlcluster returned $?; waiting for it anyway"
        wait_for 60 "postgres to accept connections" pg_ready ||
            die "postgres: not ready after 60s"
        # So that stack-down.sh stops only a cluster this stack dir started.
        mkdir -p "$CONSCOPE_STACK_DIR"
        echo "$version" >"$CONSCOPE_STACK_DIR/postgres.started"
        log "postgres: started"
    fi
    psql_admin -d postgres -tAc "SELECT 1" >/dev/null ||
        die "postgres: user postgres cannot log in over $PGHOST_DEFAULT without a password (see pg_hba.conf)"
    local exists
    exists="$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='conscope'")"
    if [[ "$exists" == 1 ]]; then
        log "postgres: database conscope exists"
    else
        psql_admin -d postgres -qc "CREATE DATABASE conscope"
        log "postgres: created database conscope"
    fi
}

# --- Apache Kafka: fetch ------------------------------------------------------

kafka_fetch() {
    if [[ -f "$KAFKA_LIB/.complete" ]]; then
        log "kafka: $KAFKA_VERSION jars in $KAFKA_LIB"
        return
    fi
    command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null 2>&1 || apt_install maven
    mkdir -p "$(dirname "$KAFKA_LIB")"
    # Two stack-ups at once (tests starting their own brokers) copy once.
    exec 9>"$(dirname "$KAFKA_LIB")/.fetch.lock"
    flock 9
    if [[ -f "$KAFKA_LIB/.complete" ]]; then
        exec 9>&-
        log "kafka: $KAFKA_VERSION jars in $KAFKA_LIB (copied meanwhile)"
        return
    fi
    log "kafka: fetching Apache Kafka $KAFKA_VERSION and its dependencies with Maven into $KAFKA_LIB"
    local tmp="$KAFKA_LIB.tmp.$$"
    rm -rf "$tmp"
    # Maven colours its (quiet) output even in batch mode: strip the colours.
    # pipefail (set above) makes a Maven failure the pipeline's.
    if ! mvn -B -q -Dstyle.color=never -f "$CONSCOPE_ROOT/scripts/kafka/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
        sed 's/\x1b\[[0-9;]*m//g' >&2; then
        rm -rf "$tmp"
        die "kafka: Maven could not fetch kafka_2.13 $KAFKA_VERSION (see the output above)"
    fi
    compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null ||
        die "kafka: Maven finished but $tmp has no kafka_2.13-$KAFKA_VERSION.jar"
    rm -rf "$KAFKA_LIB"
    mv "$tmp" "$KAFKA_LIB"
    echo "$KAFKA_VERSION" >"$KAFKA_LIB/.complete"
    exec 9>&-
    log "kafka: $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars in $KAFKA_LIB"
}

# --- Apache Kafka: configure and start ---------------------------------------

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# java_cmd: sets JAVA_CMD to the java command line, up to the main class, that
# runs Kafka's classes with our log4j2 configuration and the broker's log dir.
java_cmd() {
    local dir heap jvm
    dir="$(broker_dir)"
    # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS are lists of flags, split on spaces.
    read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
    # kafka-run-class.sh's GC settings: short pauses, so clients see no stalls.
    read -r -a jvm <<<"${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
    JAVA_CMD=(java "${heap[@]}" "${jvm[@]}" -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$CONSCOPE_ROOT/scripts/kafka/log4j2.properties"
        -Dkafka.logs.dir="$dir" -cp "$KAFKA_LIB/*")
}

kafka_configure() {
    local dir
    dir="$(broker_dir)"
    mkdir -p "$dir"
    sed -e "s|@BROKER_PORT@|$CONSCOPE_BROKER_PORT|g" \
        -e "s|@CONTROLLER_PORT@|$CONSCOPE_CONTROLLER_PORT|g" \
        -e "s|@DATA_DIR@|$dir/data|g" \
        "$CONSCOPE_ROOT/scripts/kafka/server.properties" >"$dir/server.properties"
    if [[ -f "$dir/data/meta.properties" ]]; then
        log "kafka: storage in $dir/data already formatted"
        return
    fi
    # A cluster id is 16 random bytes in URL-safe base64 without padding.
    local cluster_id
    # One starting with "-" would be read as an option by the format tool: draw again.
    cluster_id=-
    while [[ "$cluster_id" == -* ]]; do
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    log "kafka: formatting storage in $dir/data (cluster id $cluster_id)"
    java_cmd
    "${JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
        >>"$dir/stdout.log" 2>&1 || {
        tail -n 20 "$dir/stdout.log" >&2
        die "kafka: formatting $dir/data failed"
    }
}

kafka_up() {
    local dir pid
    dir="$(broker_dir)"
    if kafka_ping "$BROKER"; then
        if pid="$(broker_pid)"; then
            log "kafka: already running on $BROKER (pid $pid, $dir)"
        else
            log "kafka: a Kafka broker already answers on $BROKER (not started by these scripts); using it"
        fi
        return
    fi
    if pid="$(broker_pid)"; then
        # Ours, but not answering yet: it is still starting up.
        log "kafka: pid $pid is starting on $BROKER; waiting"
    else
        local port
        for port in "$CONSCOPE_BROKER_PORT" "$CONSCOPE_CONTROLLER_PORT"; do
            port_open "$port" &&
                die "kafka: something listens on 127.0.0.1:$port but is not our broker; free the port or set CONSCOPE_BROKER_PORT"
        done
        rm -f "$dir/pid"
        kafka_fetch
        kafka_configure
        log "kafka: starting $KAFKA_VERSION on $BROKER (controller 127.0.0.1:$CONSCOPE_CONTROLLER_PORT)"
        printf '\n=== %s stack-up: kafka.Kafka %s\n' "$(date -Is)" "$dir/server.properties" >>"$dir/stdout.log"
        # setsid + nohup: its own session, so neither the end of this script nor
        # a closed terminal takes the broker down. Neither forks here, so $! is
        # the broker's pid. Every other inherited descriptor is closed: a CI
        # runner waits for its pipes to close, and a broker holding one would
        # hang the step.
        (
            for fd in "/proc/$BASHPID/fd/"*; do
                fd="${fd##*/}"
                ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
            done
            cd "$dir"
            java_cmd
            exec setsid nohup "${JAVA_CMD[@]}" kafka.Kafka "$dir/server.properties" \
                >>"$dir/stdout.log" 2>&1 </dev/null
        ) &
        pid=$!
        echo "$pid" >"$dir/pid"
        log "kafka: pid $pid, log $dir/server.log"
    fi
    local deadline=$((SECONDS + 90))
    until kafka_ping "$BROKER"; do
        if ! is_broker "$pid"; then
            tail -n 30 "$dir/stdout.log" "$dir/server.log" >&2 || true
            rm -f "$dir/pid"
            die "kafka: exited before answering on $BROKER (logs in $dir)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$dir/server.log" >&2 || true
            die "kafka: no answer on $BROKER after 90s (pid $pid still running; logs in $dir)"
        fi
        sleep 0.5
    done
    log "kafka: answering on $BROKER"
}

started=$SECONDS
phase "postgres" postgres_up
phase "kafka" kafka_up
log "stack is up in $((SECONDS - started))s: postgres://postgres@$PGHOST_DEFAULT:$PGPORT_DEFAULT/conscope, brokers $BROKER"
