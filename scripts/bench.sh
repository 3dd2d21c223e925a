#!/usr/bin/env bash
# Throughput benchmark: conscope against the Python storage consumer it
# replaces, both measured in this run on this machine, printed as a table with
# ratios. Nothing in the output is hard-coded: every figure comes from this run.
#
#   scripts/bench.sh [--count N] [--baseline-count M] [--partitions P]
#                    [--stall-timeout S] [--broker-port PORT]
#
#   --count N           messages for the conscope runs (default 1000000)
#   --baseline-count M  messages for the like-for-like comparison with the
#                       Python baseline (default 20000; it commits one
#                       transaction per message, so it is slow)
#   --partitions P      partitions of both input topics (default 4)
#   --stall-timeout S   fail a conscope run whose metrics show no progress for
#                       S seconds (default 300): a benchmark never hangs
#   --broker-port PORT  the broker's port (default $CONSCOPE_BROKER_PORT, else
#                       9092). scripts/stack-up.sh gives any port but 9092 a
#                       broker of its own with its own store
#                       (.stack/tansu-PORT.db), started when nothing answers
#                       there and left running: a way to measure away from other
#                       clients' load and from a big shared store (tansu's
#                       sqlite fetches slow down as its store grows).
#
# Steps (each one failing stops the script with a non-zero status):
#   1. scripts/stack-up.sh (Postgres + tansu on 127.0.0.1:9092), cargo build
#      --release; the binary is copied into the results directory so a rebuild
#      by someone else during the run cannot change what is measured.
#   2. conscope produce N messages (seed 1) to a fresh topic bench_<ts>.
#   3. conscope run --exit-at-end -w 1 over it into a fresh database
#      bench_<ts>_w1; its `summary:` line gives rate, alerts, publish lag and
#      peak RSS; /usr/bin/time -v (when installed) an independent max RSS.
#   4. the same with -w 2 into bench_<ts>_w2.
#   5. conscope produce M messages (seed 1) to bench_<ts>_base; the Python
#      consumer ../shared/peers/python_storage_consumer.py (relative to the
#      repository root) stores them into database bench_<ts>_py, schema
#      bench_py_<ts>; conscope -w 1 and -w 2 run on the same topic into
#      bench_<ts>_base_w1 / _w2, so the ratios compare the same messages.
#   6. scripts/bench_report.py prints the table and the ratios.
#
# The Python consumer needs confluent-kafka, psycopg[binary] and psycopg_pool:
# they are installed into a venv, $CONSCOPE_STACK_DIR/bench-venv (default
# .stack/bench-venv), the first time, and reused afterwards.
#
# Everything stays: topics (never delete a topic on tansu while a client reads
# it), databases and the results directory .stack/bench/<ts>/ (raw outputs of
# every step, and report.txt). The last lines print how to drop the databases.
# The machine's other load is not controlled: the report prints the load
# average before and after every run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

count=1000000
baseline_count=20000
partitions=4
stall_timeout=300
while (($#)); do
    case "$1" in
    --count) count="${2:-}" && shift 2 ;;
    --baseline-count) baseline_count="${2:-}" && shift 2 ;;
    --partitions) partitions="${2:-}" && shift 2 ;;
    --stall-timeout) stall_timeout="${2:-}" && shift 2 ;;
    --broker-port) CONSCOPE_BROKER_PORT="${2:-}" && shift 2 ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
for value in "$count" "$baseline_count" "$partitions" "$stall_timeout" "$CONSCOPE_BROKER_PORT"; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "counts and partitions must be positive integers, got '$value'"
done
export CONSCOPE_BROKER_PORT # scripts/stack-up.sh reads it

python_consumer="$CONSCOPE_ROOT/../shared/peers/python_storage_consumer.py"
[[ -f "$python_consumer" ]] ||
    die "the Python baseline is missing: expected it at $python_consumer (../shared/peers/python_storage_consumer.py relative to the repository root)"
python_consumer="$(cd "$(dirname "$python_consumer")" && pwd)/$(basename "$python_consumer")"
for tool in cargo psql python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

stamp="$(date +%Y%m%d_%H%M%S)"
topic="bench_$stamp"
base_topic="bench_${stamp}_base"
brokers="127.0.0.1:$CONSCOPE_BROKER_PORT"
pg="postgres://$PGUSER_DEFAULT@$PGHOST_DEFAULT:$PGPORT_DEFAULT"
results="$CONSCOPE_STACK_DIR/bench/$stamp"
venv="$CONSCOPE_STACK_DIR/bench-venv"
mkdir -p "$results"
databases=()
log "results directory: $results"

time_bin=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1; then
    time_bin=/usr/bin/time
else
    log "no GNU /usr/bin/time (apt package 'time'): max RSS comes from conscope's own peak_rss only"
fi

# The manifest bench_report.py reads: one key=value line per fact, and one
# run=... line per measured run.
manifest="$results/manifest"
: >"$manifest"
fact() { printf '%s=%s\n' "$1" "$2" >>"$manifest"; }

fact started "$(date -Is)"
fact count "$count"
fact baseline_count "$baseline_count"
fact partitions "$partitions"
fact nproc "$(nproc)"
fact cpu_model "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
fact mem_total_kb "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
fact mem_available_kb "$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)"
fact kernel "$(uname -sr)"
fact load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
fact git "$(git describe --always --dirty 2>/dev/null || echo unknown)"
fact conscope_env "$(env | grep -E '^(CONSCOPE_|DATABASE_URL=)' | sort | tr '\n' ' ' || true)"
fact time_bin "${time_bin:-none}"

# --- 1. stack and build -----------------------------------------------------

phase "stack up" bash scripts/stack-up.sh 2> >(tee "$results/stack-up.log" >&2)
# Which broker answers: ours (pid file) or one someone else started.
broker_desc="unknown Kafka broker at $brokers (not started by scripts/stack-up.sh)"
broker_pid=""
pid_file="$(stack_file pid)"
if [[ -f "$pid_file" ]] && is_tansu "$(cat "$pid_file")"; then
    broker_pid="$(cat "$pid_file")"
    version="unknown version"
    if tansu="$(tansu_bin)"; then
        version="$("$tansu" --version 2>/dev/null | head -n 1 || echo "unknown version")"
    fi
    engine="$(tr '\0' ' ' <"/proc/$broker_pid/cmdline" | grep -oE -- '--storage-engine [^ ]+' | cut -d' ' -f2 || true)"
    store="$(stack_file db)"
    store_size="$(du -sh "$store" 2>/dev/null | cut -f1 || echo "?")"
    broker_desc="$version at $brokers (pid $broker_pid, storage ${engine:-unknown} in $CONSCOPE_STACK_DIR, $store_size at start)"
fi
fact broker "$broker_desc"
fact postgres "$(psql_admin -d postgres -tAc 'SHOW server_version') at $PGHOST_DEFAULT:$PGPORT_DEFAULT"

phase "build" cargo build --release
bin="$results/conscope"
cp target/release/conscope "$bin"
fact binary "$bin ($("$bin" --version), sha256 $(sha256sum "$bin" | cut -c1-12))"

# --- helpers ----------------------------------------------------------------

# The measured process running now, if any: stopped when this script ends
# early (an error, Ctrl-C, TERM), so no run outlives the benchmark.
current_pid=""
on_exit() {
    if [[ -n "$current_pid" ]] && kill -0 "$current_pid" 2>/dev/null; then
        log "stopping the run in progress (pid $current_pid)"
        stop_tree "$current_pid"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# messages_in TOPIC: how many messages the topic holds.
messages_in() {
    python3 scripts/kafka_offsets.py --brokers "$brokers" --count "$1"
}

# fresh_database NAME: fails when it exists already (never reuses state).
fresh_database() {
    local exists
    exists="$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$1'")"
    [[ -z "$exists" ]] || die "database $1 exists already; not reusing it"
    databases+=("$1")
}

# produce NAME TOPIC COUNT: the mock producer, seed 1; checks every message
# was delivered and the topic holds exactly COUNT messages.
produce() {
    local name="$1" to="$2" n="$3"
    phase "produce $n messages to $to ($partitions partitions, seed 1)" \
        "$bin" produce --brokers "$brokers" --topic "$to" --partitions "$partitions" \
        --count "$n" --seed 1 >"$results/$name.out" 2>"$results/$name.err" ||
        { tail -n 20 "$results/$name.err" >&2; die "producing to $to failed (log: $results/$name.err)"; }
    local line
    line="$(grep -E '^produced ' "$results/$name.out" | tail -n 1)"
    [[ -n "$line" ]] || die "the producer printed no 'produced ...' line (see $results/$name.out)"
    log "$line"
    if ! [[ "$line" =~ \ ([0-9]+)\ delivered,\ 0\ failed ]] || ((BASH_REMATCH[1] != n)); then
        die "not every message was delivered: $line"
    fi
    local held
    held="$(messages_in "$to")"
    ((held == n)) || die "topic $to holds $held messages, expected $n"
    fact "produce_$name" "$line"
}

# cpu_ticks PID: user+system clock ticks the process used so far.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# settle NAME TOPIC: before a measured run, waits (up to 10 minutes) until the
# broker is idle and answers: tansu can stay busy for minutes with work a
# previous client left (its sqlite writes), and a run started then would
# measure that. Idle = the broker process (when it is ours) used under 20% of
# one CPU over 5 s, and Metadata + ListOffsets for TOPIC answer within 5 s.
# The wait is logged and reported, never included in a run's figures.
settle() {
    local name="$1" to="$2" started=$SECONDS
    local hz
    hz="$(getconf CLK_TCK)"
    while true; do
        local idle=1
        if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
            local before after
            before="$(cpu_ticks "$broker_pid")"
            sleep 5
            after="$(cpu_ticks "$broker_pid")"
            # under 20% of one CPU: ticks used < 0.2 * 5 s * hz
            ((after - before < hz)) || idle=0
        fi
        if ((idle)) && python3 scripts/kafka_offsets.py --brokers "$brokers" --timeout 5 --count "$to" >/dev/null 2>&1; then
            break
        fi
        ((SECONDS - started < 600)) || die "the broker at $brokers did not settle (idle and answering) within 600s before $name"
        ((SECONDS - started < 30)) || log "  waiting for the broker to settle before $name ($((SECONDS - started))s so far)"
    done
    fact "settle_$name" "$((SECONDS - started))"
}

# measure NAME WATCH COMMAND...: runs COMMAND with its stdout/stderr in the results
# directory, under /usr/bin/time -v when available, and records the wall time
# and the load average around it. Logs the job's latest metrics line every 30s.
# Watchdog (WATCH=1, conscope runs): when its metrics lines show no progress (processed, commits,
# published alerts and dead letters unchanged) for $stall_timeout seconds, the
# run is stopped (TERM, then KILL, by pid) and the step fails.
measure() {
    local name="$1" watch="$2"
    shift 2
    local out="$results/$name.out" err="$results/$name.err" timing="$results/$name.time"
    local cmd=("$@")
    [[ -n "$time_bin" ]] && cmd=("$time_bin" -v -o "$timing" "${cmd[@]}")
    fact "load_before_$name" "$(cut -d' ' -f1-3 /proc/loadavg)"
    local started ended status=0
    started="$(date +%s.%N)"
    "${cmd[@]}" >"$out" 2>"$err" &
    local pid=$! next=$((SECONDS + 30)) progress="" progress_at=$SECONDS stalled=0
    current_pid=$pid
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        local now
        now="$(grep -hoE 'processed=[0-9]+|commits=[0-9]+|published_alerts=[0-9]+|published_dead_letters=[0-9]+' "$err" | tail -n 4 | tr '\n' ' ' || true)"
        if [[ "$now" != "$progress" ]]; then
            progress="$now"
            progress_at=$SECONDS
        elif ((watch && SECONDS - progress_at >= stall_timeout)); then
            log "  $name: no progress for ${stall_timeout}s ($progress); stopping it"
            stalled=1
            stop_tree "$pid"
            break
        fi
        if ((SECONDS >= next)); then
            next=$((SECONDS + 30))
            local latest
            latest="$( { grep -hoE 'processed=[0-9]+[^"]*rate=[0-9]+/s' "$err" || grep -hE '^\{' "$out" || true; } | tail -n 1)"
            log "  $name running: ${latest:-no progress line yet}"
        fi
    done
    wait "$pid" || status=$?
    current_pid=""
    ended="$(date +%s.%N)"
    fact "load_after_$name" "$(cut -d' ' -f1-3 /proc/loadavg)"
    fact "wall_$name" "$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.3f", b - a }')"
    if ((stalled)); then
        tail -n 30 "$err" >&2
        die "$name stalled: no progress for ${stall_timeout}s (output: $out, log: $err)"
    fi
    if ((status != 0)); then
        tail -n 30 "$err" >&2
        die "$name failed with status $status (output: $out, log: $err)"
    fi
}

# stop_tree PID: TERM to PID's children and PID (processes this script
# started), then KILL to whatever is left after 15s.
stop_tree() {
    local pids=("$1") child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        pids=("$child" "${pids[@]}")
    done
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local waited=0
    while kill -0 "$1" 2>/dev/null && ((waited < 15)); do
        sleep 1
        waited=$((waited + 1))
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# conscope_run NAME TOPIC MESSAGES WORKERS: conscope run --exit-at-end into a
# fresh database bench_<ts>_NAME with its own alerts/DLQ topics and group.
conscope_run() {
    local name="$1" from_topic="$2" n="$3" workers="$4"
    local db="bench_${stamp}_$name"
    fresh_database "$db"
    phase "migrate $db" "$bin" migrate --database-url "$pg/$db" \
        >"$results/$name.migrate.log" 2>&1 ||
        { tail -n 20 "$results/$name.migrate.log" >&2; die "migrate $db failed"; }
    settle "$name" "$from_topic"
    phase "conscope run -w $workers over $from_topic ($n messages) into $db" \
        measure "$name" 1 "$bin" run --brokers "$brokers" --database-url "$pg/$db" \
        --input-topic "$from_topic" --alerts-topic "$db.alerts" --dlq-topic "$db.dlq" \
        --group-id "$db" --exit-at-end --from earliest -w "$workers"
    local summary
    summary="$(grep -E '^summary: ' "$results/$name.out" | tail -n 1)"
    [[ -n "$summary" ]] || die "conscope run printed no 'summary:' line (see $results/$name.out)"
    log "$summary"
    printf 'run=%s|conscope -w %s|%s|%s|%s\n' "$name" "$workers" "$from_topic" "$n" "$db" >>"$manifest"
}

# --- 2-4. conscope on N messages ----------------------------------------------

produce main "$topic" "$count"
conscope_run w1 "$topic" "$count" 1
conscope_run w2 "$topic" "$count" 2

# --- 5. the Python baseline and conscope on the same M messages ---------------

venv_ok() {
    [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -c 'import confluent_kafka, psycopg, psycopg_pool' >/dev/null 2>&1
}
if venv_ok; then
    log "python venv: reusing $venv"
else
    log "python venv: installing confluent-kafka, psycopg[binary], psycopg_pool into $venv"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" ||
        die "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        confluent-kafka 'psycopg[binary]' psycopg_pool ||
        die "pip install into $venv failed"
    venv_ok || die "$venv still cannot import confluent_kafka, psycopg, psycopg_pool"
fi
fact python "$("$venv/bin/python" -c 'import sys, confluent_kafka, psycopg; print("Python", sys.version.split()[0], "confluent-kafka", confluent_kafka.version()[0], "librdkafka", confluent_kafka.libversion()[0], "psycopg", psycopg.__version__)')"

produce base "$base_topic" "$baseline_count"

py_db="bench_${stamp}_py"
py_schema="bench_py_$stamp"
fresh_database "$py_db"
psql_admin -d postgres -qc "CREATE DATABASE $py_db"
# It loops until it has seen EXPECTED messages: bound it generously (>= 5 min,
# or 20 ms per message), so a missing message fails the run instead of hanging.
py_timeout=$((baseline_count / 50 > 300 ? baseline_count / 50 : 300))
settle py "$base_topic"
phase "python baseline over $base_topic ($baseline_count messages) into $py_db, schema $py_schema" \
    measure py 0 timeout "$py_timeout" "$venv/bin/python" "$python_consumer" \
    "$brokers" "$base_topic" "$pg/$py_db" "$py_schema" "$baseline_count"
py_line="$(grep -E '^\{.*"msgs_per_s"' "$results/py.out" | tail -n 1)"
[[ -n "$py_line" ]] || die "the Python consumer printed no final JSON line (see $results/py.out)"
log "python: $py_line"
printf 'run=%s|%s|%s|%s|%s\n' py "python baseline" "$base_topic" "$baseline_count" "$py_db" >>"$manifest"

conscope_run base_w1 "$base_topic" "$baseline_count" 1
conscope_run base_w2 "$base_topic" "$baseline_count" 2

fact load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
fact finished "$(date -Is)"

# --- 6. report ----------------------------------------------------------------

status=0
python3 scripts/bench_report.py "$results" | tee "$results/report.txt" || status=$?
cat <<DONE

Raw outputs and this report: $results
Topics stay (never delete a topic on tansu while a client reads it). Drop the databases with:
  for db in ${databases[*]}; do psql -h $PGHOST_DEFAULT -U $PGUSER_DEFAULT -d postgres -c "DROP DATABASE \$db"; done
DONE
if ((status != 0)); then
    die "the report found a problem (status $status): see above"
fi
