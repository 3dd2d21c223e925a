#!/usr/bin/env bash
# Soak: conscope as a service under a steady load for a long time, to show that
# nothing leaks. Not part of CI (it takes --minutes + a few).
#
#   scripts/soak.sh [--minutes M] [--rate R] [--partitions P] [--epoch-ms MS]
#
#   --minutes M     how long the producer runs (default 30)
#   --rate R        messages/s of the producer (default 5000)
#   --partitions P  partitions of the input topic (default 4)
#   --epoch-ms MS   the job's --epoch-ms (default 50)
#
# What runs, all from binaries copied into the results directory
# .stack/soak/<ts>/ (a rebuild during the soak cannot change what is measured):
#   - conscope run -w 2 as a service (no --exit-at-end) over a fresh topic
#     soak_<ts> into a fresh database soak_<ts>, with --metrics-addr;
#   - conscope dashboard on the same database;
#   - conscope produce --rate R for M minutes (seed 1);
#   - every second: GET / and /alerts of the dashboard and /metrics of the job;
#   - every minute: `conscope rules add` on an event the job has stored, and
#     `conscope rules disable` of the rule added the minute before;
#   - `bench alert-latency` (examples/bench.rs, as scripts/bench.sh uses it)
#     tails the alerts topic, whose broker stamps each alert (LogAppendTime).
#
# Each minute it records the job's RSS (VmRSS), its open file descriptors and
# the database's PostgreSQL connections (pg_stat_activity). Once the producer is
# done and the job has caught up (every message committed, the outbox empty),
# it prints one row per minute with produce -> alert p99 (the alert's append
# time minus its triggering message's produce time, by the minute that message
# was produced), and PASS when the RSS at minute M is within 5 % of minute 5
# (FAIL otherwise, exit status 1).
#
# Everything stays: the topic, the database and the results directory. The last
# lines say how to drop them.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

minutes=30
rate=5000
partitions=4
epoch_ms=50
while (($#)); do
    case "$1" in
    --minutes) minutes="${2:-}" && shift 2 ;;
    --rate) rate="${2:-}" && shift 2 ;;
    --partitions) partitions="${2:-}" && shift 2 ;;
    --epoch-ms) epoch_ms="${2:-}" && shift 2 ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
for value in "$minutes" "$rate" "$partitions" "$epoch_ms"; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "minutes, rate, partitions and epoch must be positive integers, got '$value'"
done
((minutes >= 5)) || die "--minutes must be at least 5 (the RSS check compares with minute 5)"
for tool in cargo psql python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

stamp="$(date +%Y%m%d_%H%M%S)"
name="soak_$stamp"
brokers="127.0.0.1:$CONSCOPE_BROKER_PORT"
pg="postgres://$PGUSER_DEFAULT@$PGHOST_DEFAULT:$PGPORT_DEFAULT"
results="$CONSCOPE_STACK_DIR/soak/$stamp"
mkdir -p "$results"
log "results directory: $results"

# Processes this script started: stopped when it ends, however it ends.
running=()
stop_all() {
    local pid
    for pid in "${running[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${running[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    running=()
}
trap stop_all EXIT

bash scripts/stack-up.sh 2>"$results/stack-up.log" || die "stack-up failed (see $results/stack-up.log)"
cargo build --release --bin conscope --example bench 2>"$results/build.log" ||
    die "build failed (see $results/build.log)"
bin="$results/conscope"
tool="$results/bench"
cp target/release/conscope "$bin"
cp target/release/examples/bench "$tool"
log "binary: $("$bin" --version), git $(git describe --always --dirty 2>/dev/null || echo unknown)"

"$tool" --brokers "$brokers" create-topic --topic "$name" --partitions "$partitions" >/dev/null
"$tool" --brokers "$brokers" create-topic --topic "$name.alerts" --partitions "$partitions" \
    --log-append-time >/dev/null
"$bin" migrate --database-url "$pg/$name" >"$results/migrate.log" 2>&1 ||
    die "migrate failed (see $results/migrate.log)"

# A free port for the job's metrics: the kernel picks one, we give it back.
metrics_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
: >"$results/run.err"
"$bin" run --brokers "$brokers" --database-url "$pg/$name" --input-topic "$name" \
    --alerts-topic "$name.alerts" --dlq-topic "$name.dlq" --group-id "$name" \
    --from earliest -w 2 --epoch-ms "$epoch_ms" --metrics-addr "127.0.0.1:$metrics_port" \
    >"$results/run.out" 2>"$results/run.err" &
job=$!
running+=("$job")
job_ready() {
    kill -0 "$job" && (($(grep -c 'assigned partition' "$results/run.err") >= partitions))
}
wait_for 120 "the job to assign its partitions" job_ready || die "the job did not start (see $results/run.err)"

"$bin" dashboard --database-url "$pg/$name" --listen 127.0.0.1:0 >"$results/dashboard.out" 2>"$results/dashboard.err" &
running+=("$!")
dashboard_up() { grep -q 'listening on http://' "$results/dashboard.out"; }
wait_for 60 "the dashboard" dashboard_up || die "the dashboard did not start (see $results/dashboard.err)"
dashboard="$(grep -oE 'http://[^ ]+' "$results/dashboard.out" | head -n 1)"

started_ms="$(($(date +%s%N) / 1000000))"
"$tool" --brokers "$brokers" alert-latency --alerts-topic "$name.alerts" --input-topic "$name" \
    --stop-file "$results/alerts.stop" --minutes-from "$started_ms" \
    >"$results/alerts.out" 2>"$results/alerts.err" &
alerts=$!
running+=("$alerts")

count=$((rate * minutes * 60))
"$bin" produce --brokers "$brokers" --topic "$name" --partitions "$partitions" --count "$count" \
    --seed 1 --rate "$rate" >"$results/produce.out" 2>"$results/produce.err" &
producer=$!
running+=("$producer")
log "producing $count messages at $rate/s for $minutes min; job pid $job, dashboard $dashboard, metrics :$metrics_port"

# Every second: the dashboard's two busiest pages and the job's /metrics.
(
    while kill -0 "$job" 2>/dev/null; do
        for url in "$dashboard/" "$dashboard/alerts" "http://127.0.0.1:$metrics_port/metrics"; do
            curl -s -o /dev/null --max-time 5 -w "%{http_code}\n" "$url" >>"$results/polls.log" || echo "fail" >>"$results/polls.log"
        done
        sleep 1
    done
) &
running+=("$!")

sql() { psql_admin -d "$name" -tAc "$1"; }
# One rule added and the previous one disabled per minute, on a busy event at a
# low price of its own, so rules fire and re-arm.
previous_rule=""
rotate_rule() {
    local pick event currency price id
    pick="$(sql "SELECT event_id || '|' || currency || '|' || percentile_disc(0.05) WITHIN GROUP (ORDER BY price)
                 FROM listings WHERE available GROUP BY event_id, currency ORDER BY random() LIMIT 1")"
    [[ -n "$pick" ]] || return 0
    IFS='|' read -r event currency price <<<"$pick"
    id="$("$bin" rules add --database-url "$pg/$name" --event "$event" --currency "$currency" \
        --max-price "$price" 2>>"$results/rules.log")" || { log "rules add failed (see $results/rules.log)"; return 0; }
    if [[ -n "$previous_rule" ]]; then
        "$bin" rules disable --database-url "$pg/$name" "$previous_rule" >>"$results/rules.log" 2>&1 ||
            log "rules disable $previous_rule failed (see $results/rules.log)"
    fi
    previous_rule="$id"
}

printf 'minute\trss_kb\tfds\tpg_connections\n' >"$results/minutes.tsv"
for ((minute = 1; minute <= minutes; minute++)); do
    next=$((started_ms / 1000 + minute * 60))
    rotate_rule
    while (($(date +%s) < next)); do sleep 1; done
    kill -0 "$job" 2>/dev/null || die "the job exited during minute $minute (see $results/run.err)"
    rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$job/status")"
    fds="$(find "/proc/$job/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    connections="$(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")"
    printf '%s\t%s\t%s\t%s\n' "$minute" "$rss" "$fds" "$connections" >>"$results/minutes.tsv"
    log "minute $minute: rss ${rss} kB, $fds fds, $connections PostgreSQL connections"
done

wait "$producer" || die "the producer failed (see $results/produce.err)"
log "$(grep -E '^produced ' "$results/produce.out" | tail -n 1)"
caught_up() {
    kill -0 "$job" && [[ "$(sql "SELECT (SELECT coalesce(sum(next_offset), 0) FROM kafka_offsets WHERE topic = '$name')
                                  || ' ' || (SELECT count(*) FROM outbox)")" == "$count 0" ]]
}
wait_for 600 "the job to commit every message and publish every alert" caught_up ||
    die "the job did not catch up (see $results/run.err)"
touch "$results/alerts.stop"
wait "$alerts" || die "bench alert-latency failed (see $results/alerts.err)"
polls_failed="$(grep -vc '^200$' "$results/polls.log" || true)"
polls_total="$(wc -l <"$results/polls.log")"

status=0
python3 - "$results/minutes.tsv" "$results/alerts.out" "$minutes" "$polls_total" "$polls_failed" <<'PY' | tee "$results/report.txt" || status=$?
import json, sys
table, alerts, minutes, polls, failed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [line.split("\t") for line in open(table).read().splitlines()[1:]]
latency = json.loads(open(alerts).read().splitlines()[-1])
p99 = {row["minute"]: row for row in latency.get("minutes", [])}
print(f"{'minute':>6} {'rss MB':>8} {'fds':>5} {'pg conns':>8} {'alerts':>7} {'p99 ms':>8}")
rss = {}
for minute, kb, fds, conns in rows:
    rss[int(minute)] = int(kb)
    row = p99.get(int(minute), {})
    value = row.get("on_topic_p99_ms")
    print(f"{minute:>6} {int(kb) / 1024:>8.1f} {fds:>5} {conns:>8} {row.get('alerts', 0):>7} "
          f"{'-' if value is None else f'{value:.0f}':>8}")
print(f"alerts on the topic: {latency['alerts']}, matched to their message: {latency['matched']}, "
      f"overall p99 {latency.get('on_topic_p99_ms')} ms")
print(f"HTTP polls: {polls}, not 200: {failed}")
first, last = rss[5], rss[minutes]
change = (last - first) / first * 100
verdict = "PASS" if abs(change) <= 5 else "FAIL"
print(f"{verdict}: RSS at minute {minutes} {last / 1024:.1f} MB vs minute 5 {first / 1024:.1f} MB ({change:+.1f} %, limit 5 %)")
sys.exit(0 if verdict == "PASS" else 1)
PY
stop_all
log "to clean up: psql -h $PGHOST_DEFAULT -U $PGUSER_DEFAULT -c 'DROP DATABASE $name' and delete topics $name, $name.alerts, $name.dlq"
exit "$status"
