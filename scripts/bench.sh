#!/usr/bin/env bash
# Benchmark: conscope against what the broker and PostgreSQL can do on their
# own and against the Python storage consumer it replaces, plus produce -> row
# and produce -> alert latency under a steady load, in up to three worlds of
# different sizes side by side. Everything is measured in this run on this
# machine and printed as one report; nothing in it is hard-coded.
#
#   scripts/bench.sh [--worlds small,100k,1m] [--count N] [--file-count F]
#                    [--keep-file] [--baseline-count M] [--partitions P]
#                    [--latency-rate R] [--latency-seconds S]
#                    [--latency-epoch-ms MS] [--latency-worlds small,100k]
#                    [--no-latency] [--no-python] [--stall-timeout S]
#                    [--broker-port PORT]
#
# Worlds (conscope produce's knobs; each world is replayed with seed 1):
#   small  the generator's default world: 50 events x 40 listings = 2,000
#          listings, N messages from Kafka (what this benchmark measured first)
#   100k   2,500 events x 40 listings = 100,000 listings, N messages from Kafka:
#          --sections-per-event 8 --pick uniform --step-pct=-8,5
#          --duplicate-rate 0.02 --malformed-rate 0.005 (about 10 observations a
#          listing at 1M messages, one in five a >= 5 % listing drop)
#   1m     25,000 events x 40 listings = 1,000,000 listings, the 100k world's
#          knobs, F messages from a FILE (conscope produce --output FILE,
#          conscope run --input-file FILE --exit-at-end): no broker read, so its
#          limit is the COPY limit alone
#
#   --worlds LIST        comma-separated worlds to run, in this order (default
#                        small,100k,1m)
#   --count N            messages of the Kafka worlds' throughput runs (default
#                        1000000)
#   --file-count F       messages of the file world (default 10000000; the file
#                        is about 250 bytes a message)
#   --keep-file          keep the file world's input file in the results
#                        directory (default: removed when the script ends; the
#                        same flags and seed make it again byte for byte)
#   --baseline-count M   messages for the Python consumer (default 20000: it commits
#                        one transaction per message, so it is slow); it and
#                        conscope then run on the same M-message topic, the first
#                        M messages of the small world (seed 1). M = N: the
#                        Python consumer reads the small world's topic itself.
#                        Runs only when the small world does
#   --partitions P       partitions of the input topics (default 4)
#   --latency-rate R     messages/s of the latency runs' producer (default 20000)
#   --latency-seconds S  how long it produces (default 60)
#   --latency-epoch-ms MS  the latency runs' --epoch-ms (default: the job's own,
#                        100): how often it commits, which bounds its latency
#   --latency-worlds LIST  Kafka worlds whose latency is measured (default
#                        small,100k; only those also in --worlds run)
#   --no-latency         skip the latency runs
#   --no-python          skip the Python baseline (and its venv)
#   --stall-timeout S    fail a conscope run whose metrics show no progress for
#                        S seconds (default 300): a benchmark never hangs
#   --broker-port PORT   the broker's port (default $CONSCOPE_BROKER_PORT, else
#                        9092). scripts/stack-up.sh starts a broker of its own on
#                        any other port when nothing answers there (its files in
#                        $CONSCOPE_STACK_DIR/kafka-PORT/) and leaves it running;
#                        stop it with scripts/stack-down.sh --broker-only (same
#                        environment). A fresh broker measures away from other
#                        clients' topics and load.
#
# A quick run (a few minutes): scripts/bench.sh --no-python --count 20000
#   --file-count 50000 --latency-seconds 5
#
# Steps (each one failing stops the script with a non-zero status):
#   1. scripts/stack-up.sh (Postgres + Apache Kafka), cargo build --release of
#      conscope and of examples/bench.rs (the measuring tools); both binaries are
#      copied into the results directory, so a rebuild by someone else during the
#      run cannot change what is measured.
#   Then, for each world W of --worlds (steps 2-6):
#   2. conscope produce (seed 1, the world's knobs): a Kafka world's N messages
#      to a fresh topic bench_<ts>_W, the file world's F messages to W.jsonl in
#      the results directory.
#   3. broker read limit (Kafka worlds): `bench drain`, a plain librdkafka
#      consumer, reads the topic from start to end.
#   4. COPY limit: `bench copy` parses the topic (or the file: `bench copy
#      --file`) with conscope's parser, keeps the rows conscope stores in
#      price_history (valid, first of their identity) and COPYs them (binary,
#      one statement) into a fresh table shaped like price_history (same
#      columns, primary key and defaults) in database bench_<ts>_W_copy;
#      Postgres CPU over the COPY alone.
#   5. rules: six alert rules derived from those rows (the busiest events, three
#      whole-event, three on one section, at a low percentile of their prices),
#      added to every conscope database of the world before its run.
#   6. conscope run --exit-at-end -w 1, then -w 2, over the topic (or
#      --input-file), each into a fresh database bench_<ts>_W_w1 / _w2: its
#      `summary:` line (rate, alerts, publish lag, peak RSS), /usr/bin/time -v
#      (CPU, max RSS), and the CPU of every postgres process (from /proc)
#      before and after.
#   7. Python baseline (with the small world; ../shared/peers/python_storage_consumer.py
#      beside the repository, or beside its main checkout for a git worktree) on
#      M messages into bench_<ts>_py, and conscope -w 1 and -w 2 on the same
#      topic (when M < N) into bench_<ts>_base_w1 / _w2.
#   8. latency, for each world of --latency-worlds: fresh topic
#      bench_<ts>_W_lat, its alerts topic created with
#      message.timestamp.type=LogAppendTime (the broker stamps each alert with
#      the time it appended it), conscope run -w 2 as a service (no
#      --exit-at-end) into bench_<ts>_W_lat with the world's rules, and `bench
#      alert-latency` tailing the alerts; then conscope produce (the world's
#      knobs) at R msgs/s for S seconds. Once every message is committed and
#      every alert published: produce -> row committed p50/p99 from the job's
#      own metrics (commit time minus each message's Kafka timestamp), produce
#      -> alert on the topic p50/p99 (the alert's append time minus the Kafka
#      timestamp of the message that triggered it, found in the input topic by
#      the alert's listing and observed_at).
#   9. scripts/bench_report.py prints the report: per world the limits, -w 1
#      next to -w 2 and the speed-up, the ratio to the lower limit and issue
#      13's targets with meets/BELOW verdicts (100k at -w 2: >= 70 % of
#      min(broker read, COPY), <= 15 CPU-s per 1M messages conscope + Postgres,
#      <= 300 MB peak RSS, -w 2 >= 1.3x -w 1; 1m at -w 2: >= 50k msgs/s, <= 20
#      CPU-s per 1M, <= 600 MB; MB = 10^6 bytes), the Python comparison, the
#      latency lines (p99 < 250 ms) and a summary table across the worlds.
#
# The Python consumer needs confluent-kafka, psycopg[binary] and psycopg_pool:
# they are installed into a venv, $CONSCOPE_STACK_DIR/bench-venv (default
# .stack/bench-venv), the first time, and reused afterwards.
#
# Everything but the file world's input file stays: topics, databases and the
# results directory .stack/bench/<ts>/ (raw outputs of every step, manifest,
# report.txt). The last lines print how to drop the databases. Every process
# the script starts is stopped when it ends, however it ends. The machine's
# other load is not controlled: the report prints the load average around every
# run, and the Postgres CPU figures count every postgres process, other
# clients' included.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

count=1000000
file_count=10000000
keep_file=false
worlds="small,100k,1m"
latency_worlds="small,100k"
latency=true
baseline_count=20000
partitions=4
latency_rate=20000
latency_seconds=60
latency_epoch_ms=""
python=true
stall_timeout=300
while (($#)); do
    case "$1" in
    --worlds) worlds="${2:-}" && shift 2 ;;
    --count) count="${2:-}" && shift 2 ;;
    --file-count) file_count="${2:-}" && shift 2 ;;
    --keep-file) keep_file=true && shift ;;
    --baseline-count) baseline_count="${2:-}" && shift 2 ;;
    --partitions) partitions="${2:-}" && shift 2 ;;
    --latency-rate) latency_rate="${2:-}" && shift 2 ;;
    --latency-seconds) latency_seconds="${2:-}" && shift 2 ;;
    --latency-epoch-ms) latency_epoch_ms="${2:-}" && shift 2 ;;
    --latency-worlds) latency_worlds="${2:-}" && shift 2 ;;
    --no-latency) latency=false && shift ;;
    --no-python) python=false && shift ;;
    --stall-timeout) stall_timeout="${2:-}" && shift 2 ;;
    --broker-port) CONSCOPE_BROKER_PORT="${2:-}" && shift 2 ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
for value in "$count" "$file_count" "$baseline_count" "$partitions" "$latency_rate" "$latency_seconds" \
    "$stall_timeout" "$CONSCOPE_BROKER_PORT" ${latency_epoch_ms:+"$latency_epoch_ms"}; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "counts, rates, seconds and ports must be positive integers, got '$value'"
done
((baseline_count <= count)) || die "--baseline-count ($baseline_count) must not exceed --count ($count)"

# world_knobs WORLD: conscope produce's arguments that make WORLD (one a line).
world_knobs() {
    local large=(--listings-per-event 40 --sections-per-event 8 --pick uniform --step-pct=-8,5
        --duplicate-rate 0.02 --malformed-rate 0.005)
    case "$1" in
    small) ;;
    100k) printf '%s\n' --events 2500 "${large[@]}" ;;
    1m) printf '%s\n' --events 25000 "${large[@]}" ;;
    *) return 1 ;;
    esac
}
# world_source WORLD: where WORLD's messages come from (kafka or file).
world_source() {
    case "$1" in
    1m) echo file ;;
    *) echo kafka ;;
    esac
}
# world_count WORLD: how many messages WORLD's throughput runs replay.
world_count() {
    case "$(world_source "$1")" in
    file) echo "$file_count" ;;
    *) echo "$count" ;;
    esac
}
# A comma-separated list of known worlds, each once, into the named array.
parse_worlds() {
    local -n into="$2"
    local world listed=()
    into=()
    IFS=',' read -r -a listed <<<"$1"
    ((${#listed[@]})) || die "no world in '$1'"
    for world in "${listed[@]}"; do
        world_knobs "$world" >/dev/null || die "unknown world '$world' (small, 100k or 1m)"
        [[ " ${into[*]} " != *" $world "* ]] || die "world $world listed twice in '$1'"
        into+=("$world")
    done
}
parse_worlds "$worlds" world_list
parse_worlds "$latency_worlds" latency_listed
latency_list=()
if [[ "$latency" == true ]]; then
    for world in "${latency_listed[@]}"; do
        [[ "$(world_source "$world")" == kafka ]] || die "--latency-worlds: $world is replayed from a file, not from Kafka"
        [[ " ${world_list[*]} " == *" $world "* ]] && latency_list+=("$world")
    done
fi
with_small=false
[[ " ${world_list[*]} " == *" small "* ]] && with_small=true
if [[ "$python" == true && "$with_small" == false ]]; then
    log "no small world in --worlds: no Python baseline"
    python=false
fi
export CONSCOPE_BROKER_PORT # scripts/stack-up.sh reads it

# The Python baseline sits beside the repository; a git worktree looks beside
# its main checkout too.
python_consumer="$CONSCOPE_ROOT/../shared/peers/python_storage_consumer.py"
if [[ ! -f "$python_consumer" ]] && common="$(git -C "$CONSCOPE_ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)"; then
    python_consumer="$(dirname "$common")/../shared/peers/python_storage_consumer.py"
fi
if [[ "$python" == true ]]; then
    [[ -f "$python_consumer" ]] ||
        die "the Python baseline is missing: expected ../shared/peers/python_storage_consumer.py beside the repository (or pass --no-python)"
    python_consumer="$(cd "$(dirname "$python_consumer")" && pwd)/$(basename "$python_consumer")"
fi
for tool in cargo psql python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

stamp="$(date +%Y%m%d_%H%M%S)"
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
    log "no GNU /usr/bin/time (apt package 'time'): no CPU or max RSS per process, only conscope's own peak_rss"
fi

# The manifest bench_report.py reads: one key=value line per fact.
manifest="$results/manifest"
: >"$manifest"
fact() { printf '%s=%s\n' "$1" "$2" >>"$manifest"; }

fact started "$(date -Is)"
fact count "$count"
fact file_count "$file_count"
fact worlds "$(IFS=,; echo "${world_list[*]}")"
fact latency_worlds "$(IFS=,; echo "${latency_list[*]}")"
for world in "${world_list[@]}"; do
    fact "world_${world}_source" "$(world_source "$world")"
    fact "world_${world}_count" "$(world_count "$world")"
    fact "world_${world}_knobs" "$(world_knobs "$world" | tr '\n' ' ' | sed 's/ $//')"
done
fact baseline_count "$baseline_count"
fact partitions "$partitions"
fact latency_rate "$latency_rate"
fact latency_seconds "$latency_seconds"
fact latency_epoch_ms "${latency_epoch_ms:-default}"
fact nproc "$(nproc)"
fact clk_tck "$(getconf CLK_TCK)"
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
if broker_pid="$(broker_pid)"; then
    fact broker "Apache Kafka $KAFKA_VERSION at $brokers (pid $broker_pid, $(broker_dir); $(du -sh "$(broker_dir)/data" 2>/dev/null | cut -f1 || echo "?") of data at start)"
else
    # Started from another stack dir, or by hand: the process listening on the port.
    broker_pid="$(ss -Htlnp "sport = :$CONSCOPE_BROKER_PORT" 2>/dev/null | grep -oE 'pid=[0-9]+' | head -n 1 | cut -d= -f2 || true)"
    fact broker "a Kafka broker at $brokers not started by scripts/stack-up.sh with this stack dir (pid ${broker_pid:-unknown})"
fi
fact postgres "$(psql_admin -d postgres -tAc 'SHOW server_version') at $PGHOST_DEFAULT:$PGPORT_DEFAULT"

phase "build" cargo build --release --bin conscope --example bench
bin="$results/conscope"
tool="$results/bench"
cp target/release/conscope "$bin"
cp target/release/examples/bench "$tool"
fact binary "$bin ($("$bin" --version), sha256 $(sha256sum "$bin" | cut -c1-12))"

# --- helpers ----------------------------------------------------------------

# Processes this script started and has not stopped yet: stopped when it ends
# early (an error, Ctrl-C, TERM), so nothing outlives the benchmark.
running=()
# Files removed when the script ends (the file world's input, unless --keep-file).
scratch=()
on_exit() {
    local pid file
    for pid in "${running[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping pid $pid"
            stop_tree "$pid"
        fi
    done
    for file in "${scratch[@]}"; do
        rm -f "$file"
    done
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# forget PID: PID ended or was stopped.
forget() {
    local kept=() pid
    for pid in "${running[@]}"; do
        [[ "$pid" == "$1" ]] || kept+=("$pid")
    done
    running=("${kept[@]}")
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

# messages_in TOPIC: how many messages the topic holds.
messages_in() {
    python3 scripts/kafka_offsets.py --brokers "$brokers" --count "$1"
}

# fresh_database NAME: creates it and applies conscope's migrations; fails
# when it exists already (never reuses state).
fresh_database() {
    local exists
    exists="$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$1'")"
    [[ -z "$exists" ]] || die "database $1 exists already; not reusing it"
    databases+=("$1")
    "$bin" migrate --database-url "$pg/$1" >"$results/$1.migrate.log" 2>&1 ||
        { tail -n 20 "$results/$1.migrate.log" >&2; die "migrate $1 failed"; }
}

# add_rules DATABASE WORLD: WORLD's rules (step 5) into DATABASE.
add_rules() {
    local event section currency price
    while IFS='|' read -r event section currency price; do
        local scope=()
        [[ -n "$section" ]] && scope=(--section "$section")
        "$bin" rules add --database-url "$pg/$1" --event "$event" "${scope[@]}" \
            --currency "$currency" --max-price "$price" >>"$results/$1.rules.log" 2>&1 ||
            { tail -n 20 "$results/$1.rules.log" >&2; die "rules add into $1 failed"; }
    done <"$results/rules_$2.txt"
}

# produce NAME TOPIC COUNT [ARGS...]: the mock producer, seed 1, under measure;
# checks every message was delivered and the topic holds exactly COUNT messages.
produce() {
    local name="$1" to="$2" n="$3"
    shift 3
    phase "produce $n messages to $to ($partitions partitions, seed 1${*:+, $*})" \
        measure "$name" 0 "$bin" produce --brokers "$brokers" --topic "$to" --partitions "$partitions" \
        --count "$n" --seed 1 "$@"
    local line
    line="$(produced_line "$name")"
    if ! [[ "$line" =~ \ ([0-9]+)\ delivered,\ 0\ failed ]] || ((BASH_REMATCH[1] != n)); then
        die "not every message was delivered: $line"
    fi
    local held
    held="$(messages_in "$to")"
    ((held == n)) || die "topic $to holds $held messages, expected $n"
    fact "produce_$name" "$line"
}

# produced_line NAME: the producer's 'produced ...' line of step NAME, logged.
produced_line() {
    local line
    line="$(grep -E '^produced ' "$results/$1.out" | tail -n 1)"
    [[ -n "$line" ]] || die "the producer printed no 'produced ...' line (see $results/$1.out)"
    log "$line"
    echo "$line"
}

# produce_file NAME FILE COUNT [ARGS...]: the mock producer, seed 1, writing
# COUNT JSON lines to FILE under measure; checks the file holds COUNT lines.
produce_file() {
    local name="$1" to="$2" n="$3"
    shift 3
    [[ "$keep_file" == true ]] || scratch+=("$to")
    phase "produce $n messages to $to (seed 1${*:+, $*})" \
        measure "$name" 0 "$bin" produce --output "$to" --count "$n" --seed 1 "$@"
    local line held
    line="$(produced_line "$name")"
    held="$(wc -l <"$to")"
    ((held == n)) || die "$to holds $held lines, expected $n"
    fact "produce_$name" "$line; $(du -h "$to" | cut -f1)"
}

# postgres_ticks: CPU clock ticks every postgres process has used so far.
postgres_ticks() {
    "$tool" pg-cpu | sed -E 's/.*"postgres_cpu_ticks":([0-9]+).*/\1/'
}

# process_ticks PID: user+system clock ticks PID has used so far.
process_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# machine_ticks: "TOTAL IDLE" clock ticks of all CPUs so far (/proc/stat; idle
# includes iowait).
machine_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}

# broker_ticks: the broker's CPU clock ticks so far, when its pid is known.
broker_ticks() {
    if [[ -n "$broker_pid" ]] && [[ -r "/proc/$broker_pid/stat" ]]; then
        process_ticks "$broker_pid"
    fi
}

# snapshot WHEN: the CPU counters the report compares, as facts *_WHEN.
snapshot() {
    fact "pg_ticks_$1" "$(postgres_ticks)"
    fact "machine_ticks_$1" "$(machine_ticks)"
    fact "broker_ticks_$1" "$(broker_ticks)"
}

# latest_metrics FILE: the job's latest metrics line in its log.
latest_metrics() {
    grep -hoE 'processed=[0-9]+ .*rate=[0-9]+/s' "$1" | tail -n 1 || true
}

# measure NAME WATCH COMMAND...: runs COMMAND with its stdout/stderr in the results
# directory, under /usr/bin/time -v when available, and records the wall time,
# the load average and the CPU counters (snapshot) around it. Logs the job's latest
# metrics line every 30s. Watchdog (WATCH=1, conscope runs): when its metrics
# lines show no progress (processed, commits, published alerts and dead letters
# unchanged) for $stall_timeout seconds, the run is stopped and the step fails.
measure() {
    local name="$1" watch="$2"
    shift 2
    local out="$results/$name.out" err="$results/$name.err" timing="$results/$name.time"
    local cmd=("$@")
    [[ -n "$time_bin" ]] && cmd=("$time_bin" -v -o "$timing" "${cmd[@]}")
    fact "load_before_$name" "$(cut -d' ' -f1-3 /proc/loadavg)"
    snapshot "before_$name"
    local started ended status=0
    started="$(date +%s.%N)"
    "${cmd[@]}" >"$out" 2>"$err" &
    local pid=$! next=$((SECONDS + 30)) progress="" progress_at=$SECONDS stalled=0
    running+=("$pid")
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
            latest="$(latest_metrics "$err")"
            log "  $name running: ${latest:-no progress line yet}"
        fi
    done
    wait "$pid" || status=$?
    forget "$pid"
    ended="$(date +%s.%N)"
    snapshot "after_$name"
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

# conscope_run NAME WORLD SOURCE WORKERS: conscope run --exit-at-end over
# SOURCE (a topic, or file:PATH) into a fresh database bench_<ts>_NAME (with
# WORLD's rules) with its own alerts/DLQ topics and group.
conscope_run() {
    local name="$1" world="$2" from="$3" workers="$4"
    local db="bench_${stamp}_$name" input
    fresh_database "$db"
    add_rules "$db" "$world"
    case "$from" in
    file:*) input=(--input-file "${from#file:}") ;;
    *) input=(--input-topic "$from" --from earliest) ;;
    esac
    phase "conscope run -w $workers --exit-at-end over $from into $db" \
        measure "$name" 1 "$bin" run --brokers "$brokers" --database-url "$pg/$db" \
        "${input[@]}" --alerts-topic "$db.alerts" --dlq-topic "$db.dlq" \
        --group-id "$db" --exit-at-end -w "$workers"
    local summary
    summary="$(grep -E '^summary: ' "$results/$name.out" | tail -n 1)"
    [[ -n "$summary" ]] || die "conscope run printed no 'summary:' line (see $results/$name.out)"
    log "$summary"
    fact "topic_$name" "$from"
    fact "database_$name" "$db"
}

# --- 2-6. per world: its input, the broker and COPY limits, rules, conscope ------

# copy_limit WORLD SOURCE...: step 4, `bench copy` over SOURCE (--topic T or
# --file F) into bench_<ts>_WORLD_copy.copy_rows, and the listings it holds.
copy_limit() {
    local world="$1"
    shift
    local copy_db="bench_${stamp}_${world}_copy"
    fresh_database "$copy_db"
    psql_admin -d "$copy_db" -qc "CREATE TABLE copy_rows (LIKE price_history INCLUDING ALL)"
    phase "COPY limit ($world): $* as price_history rows into $copy_db.copy_rows" \
        measure "${world}_copy" 0 "$tool" --brokers "$brokers" copy "$@" \
        --database-url "$pg/$copy_db" --table copy_rows
    log "copy: $(tail -n 1 "$results/${world}_copy.out")"
    fact "listings_$world" "$(psql_admin -d "$copy_db" -tAc \
        'SELECT count(*) FROM (SELECT DISTINCT event_id, section, "row", seat, source FROM copy_rows) AS listing')"
}

# derive_rules WORLD: step 5. The six busiest (event, currency) pairs among
# available observations: the first three get a whole-event rule at the 2nd
# percentile of their prices, the last three a rule on their busiest section at
# its 10th percentile, so rules fire and re-arm during the runs.
derive_rules() {
    local copy_db="bench_${stamp}_$1_copy" rules="$results/rules_$1.txt"
    psql_admin -d "$copy_db" -tA -F '|' >"$rules" <<'SQL'
WITH busiest AS (
    SELECT event_id, currency, row_number() OVER (ORDER BY count(*) DESC, event_id, currency) AS rank
    FROM copy_rows WHERE available GROUP BY event_id, currency
    ORDER BY rank LIMIT 6
), sections AS (
    SELECT DISTINCT ON (b.rank) b.rank, c.section
    FROM busiest b JOIN copy_rows c USING (event_id, currency)
    WHERE c.available AND b.rank > 3
    GROUP BY b.rank, c.section
    ORDER BY b.rank, count(*) DESC, c.section
)
SELECT b.event_id, coalesce(s.section, ''), b.currency,
       percentile_disc(CASE WHEN s.section IS NULL THEN 0.02 ELSE 0.10 END) WITHIN GROUP (ORDER BY c.price)
FROM busiest b
LEFT JOIN sections s USING (rank)
JOIN copy_rows c ON c.event_id = b.event_id AND c.currency = b.currency AND c.available
     AND (s.section IS NULL OR c.section = s.section)
GROUP BY b.rank, b.event_id, s.section, b.currency
ORDER BY b.rank
SQL
    local rule_count
    rule_count="$(grep -c . "$rules" || true)"
    ((rule_count > 0)) || die "no rules could be derived from $copy_db.copy_rows"
    fact "rules_$1" "$rule_count"
    log "rules for every conscope run of world $1 (event|section|currency|max_price):"
    sed 's/^/    /' "$rules" >&2
}

# run_world WORLD: steps 2-6 for WORLD.
run_world() {
    local world="$1" n knobs source
    n="$(world_count "$world")"
    source="$(world_source "$world")"
    mapfile -t knobs < <(world_knobs "$world")
    if [[ "$source" == file ]]; then
        local file="$results/$world.jsonl"
        produce_file "$world" "$file" "$n" "${knobs[@]}"
        copy_limit "$world" --file "$file"
        derive_rules "$world"
        conscope_run "${world}_w1" "$world" "file:$file" 1
        conscope_run "${world}_w2" "$world" "file:$file" 2
        if [[ "$keep_file" != true ]]; then
            rm -f "$file"
        fi
    else
        local topic="bench_${stamp}_$world"
        produce "$world" "$topic" "$n" "${knobs[@]}"
        phase "broker read limit ($world): plain librdkafka consumer over $topic" \
            measure "${world}_drain" 0 "$tool" --brokers "$brokers" drain --topic "$topic"
        log "drain: $(tail -n 1 "$results/${world}_drain.out")"
        copy_limit "$world" --topic "$topic"
        derive_rules "$world"
        conscope_run "${world}_w1" "$world" "$topic" 1
        conscope_run "${world}_w2" "$world" "$topic" 2
    fi
}

for world in "${world_list[@]}"; do
    run_world "$world"
done

# --- 7. the Python baseline, and conscope on its topic --------------------------

if [[ "$python" == true ]]; then
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

    small_topic="bench_${stamp}_small"
    base_topic="$small_topic"
    if ((baseline_count < count)); then
        base_topic="bench_${stamp}_base"
        mapfile -t small_knobs < <(world_knobs small)
        produce base "$base_topic" "$baseline_count" "${small_knobs[@]}"
    fi
    py_db="bench_${stamp}_py"
    py_schema="bench_py_$stamp"
    fresh_database "$py_db"
    # It loops until it has seen EXPECTED messages: bound it generously (>= 5 min,
    # or 20 ms per message), so a missing message fails the run instead of hanging.
    py_timeout=$((baseline_count / 50 > 300 ? baseline_count / 50 : 300))
    phase "python baseline over $base_topic ($baseline_count messages) into $py_db, schema $py_schema" \
        measure py 0 timeout "$py_timeout" "$venv/bin/python" "$python_consumer" \
        "$brokers" "$base_topic" "$pg/$py_db" "$py_schema" "$baseline_count"
    log "python: $(grep -E '^\{.*"msgs_per_s"' "$results/py.out" | tail -n 1)"
    fact topic_py "$base_topic"
    if [[ "$base_topic" != "$small_topic" ]]; then
        conscope_run base_w1 small "$base_topic" 1
        conscope_run base_w2 small "$base_topic" 2
    fi
fi

# --- 8. latency under a steady load ---------------------------------------------

# latency_run WORLD: step 8 for WORLD.
latency_run() {
    local world="$1" knobs
    mapfile -t knobs < <(world_knobs "$world")
    local name="${world}_lat"
    local lat_topic="bench_${stamp}_$name" lat_db="bench_${stamp}_$name"
    local lat_count=$((latency_rate * latency_seconds))
    local run_err="$results/${name}_run.err"
    "$tool" --brokers "$brokers" create-topic --topic "$lat_topic" --partitions "$partitions" >/dev/null
    "$tool" --brokers "$brokers" create-topic --topic "$lat_db.alerts" --partitions "$partitions" \
        --log-append-time >/dev/null
    fresh_database "$lat_db"
    add_rules "$lat_db" "$world"
    fact "topic_$name" "$lat_topic"
    fact "database_$name" "$lat_db"

    log "latency ($world): starting conscope run -w 2 as a service over $lat_topic into $lat_db"
    local epoch_args=()
    [[ -n "$latency_epoch_ms" ]] && epoch_args=(--epoch-ms "$latency_epoch_ms")
    # There before job_ready first reads it.
    : >"$run_err"
    "$bin" run --brokers "$brokers" --database-url "$pg/$lat_db" --input-topic "$lat_topic" \
        --alerts-topic "$lat_db.alerts" --dlq-topic "$lat_db.dlq" --group-id "$lat_db" \
        --from earliest -w 2 --metrics-interval 1 "${epoch_args[@]}" \
        >"$results/${name}_run.out" 2>"$run_err" &
    local lat_pid=$!
    running+=("$lat_pid")
    # Ready: every partition assigned and a first metrics line out (or it ended).
    job_ready() {
        ! kill -0 "$lat_pid" 2>/dev/null || {
            (($(grep -c 'assigned partition' "$run_err") >= partitions)) &&
                [[ -n "$(latest_metrics "$run_err")" ]]
        }
    }
    if ! wait_for 120 "conscope to assign its partitions" job_ready || ! kill -0 "$lat_pid" 2>/dev/null; then
        tail -n 30 "$run_err" >&2
        die "conscope run did not start (see $run_err)"
    fi

    "$tool" --brokers "$brokers" alert-latency --alerts-topic "$lat_db.alerts" --input-topic "$lat_topic" \
        --stop-file "$results/${name}_alerts.stop" \
        >"$results/${name}_alerts.out" 2>"$results/${name}_alerts.err" &
    local alerts_pid=$!
    running+=("$alerts_pid")
    sleep 2

    local job_ticks_before
    job_ticks_before="$(process_ticks "$lat_pid")"
    produce "$name" "$lat_topic" "$lat_count" --rate "$latency_rate" "${knobs[@]}"

    # Caught up: every message committed (offsets start at 0 on a fresh topic) and
    # the outbox empty (every alert published).
    caught_up() {
        ! kill -0 "$lat_pid" 2>/dev/null || {
            local state
            state="$(psql_admin -d "$lat_db" -tAc "SELECT (SELECT coalesce(sum(next_offset), 0) FROM kafka_offsets
                WHERE topic = '$lat_topic') || ' ' || (SELECT count(*) FROM outbox)")"
            [[ "$state" == "$lat_count 0" ]]
        }
    }
    local caught_up_started=$SECONDS
    if ! wait_for "$stall_timeout" "conscope to commit and publish everything" caught_up ||
        ! kill -0 "$lat_pid" 2>/dev/null; then
        tail -n 30 "$run_err" >&2
        die "conscope did not catch up within ${stall_timeout}s, or exited (see $run_err)"
    fi
    fact "${name}_catch_up_s" "$((SECONDS - caught_up_started))"
    fact "${name}_job_ticks" "$(($(process_ticks "$lat_pid") - job_ticks_before))"
    snapshot "caught_up_$name"
    # One more metrics line, so the last one counts every commit.
    sleep 2
    fact "${name}_metrics" "$(latest_metrics "$run_err")"
    fact "${name}_alert_rows" "$(psql_admin -d "$lat_db" -tAc "SELECT count(*) FROM price_alerts")"
    fact "${name}_peak_rss" "$(awk '/^VmHWM:/ { print $2 $3 }' "/proc/$lat_pid/status")"

    touch "$results/${name}_alerts.stop"
    wait_for 600 "the alert tail to finish" bash -c "! kill -0 $alerts_pid 2>/dev/null" ||
        die "bench alert-latency did not finish (see $results/${name}_alerts.err)"
    wait "$alerts_pid" || die "bench alert-latency failed (see $results/${name}_alerts.err)"
    forget "$alerts_pid"
    log "alerts: $(tail -n 1 "$results/${name}_alerts.out")"
    stop_tree "$lat_pid"
    wait "$lat_pid" 2>/dev/null || true
    forget "$lat_pid"
}

for world in "${latency_list[@]}"; do
    latency_run "$world"
done

fact load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
fact finished "$(date -Is)"

# --- 9. report ---------------------------------------------------------------------

status=0
python3 scripts/bench_report.py "$results" | tee "$results/report.txt" || status=$?
cat <<DONE

Raw outputs and this report: $results
Topics stay. Drop the databases with:
  for db in ${databases[*]}; do psql -h $PGHOST_DEFAULT -U $PGUSER_DEFAULT -d postgres -c "DROP DATABASE \$db"; done
DONE
if ((status != 0)); then
    die "the report found a problem (status $status): see above"
fi
