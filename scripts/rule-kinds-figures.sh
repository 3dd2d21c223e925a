#!/usr/bin/env bash
# Figures for the rule kinds of SPEC §2b: a replay of `conscope produce` data
# with one rule of each kind on each of the busiest events, in a world with
# many listings per section (so deals can happen), run three times into three
# databases: -w 1, -w 4, and -w 2 killed (SIGKILL) mid-run then restarted.
# Prints the alerts of each kind per run and whether the three runs stored the
# same alert ids. Uses its own topics and databases (dropped at the end unless
# KEEP=1: the dashboard screenshots read the -w 1 one).
#
# Usage: scripts/rule-kinds-figures.sh [COUNT] [EVENTS] [LISTINGS_PER_EVENT] [BUSY]
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-200000}
events=${2:-12}
listings=${3:-240}
busy=${4:-6}
bin=target/release/conscope
pg=${CONSCOPE_TEST_PG:-postgres://postgres@127.0.0.1:5432}
tag="rulefig_$$"
input="$tag.input"
sample=$(mktemp)
trap 'rm -f "$sample"' EXIT

# The same flags and seed give byte-identical messages: once to a file to pick
# the busy events, once to the topic.
gen=(--count "$count" --seed 14 --events "$events" --listings-per-event "$listings")
$bin produce "${gen[@]}" --output "$sample" >/dev/null
$bin produce "${gen[@]}" --topic "$input" --partitions 4 >/dev/null
mapfile -t busiest < <(python3 - "$sample" "$busy" <<'PY'
import collections, json, sys
counts = collections.Counter()
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if isinstance(message, dict) and isinstance(message.get("event_id"), str):
        counts[message["event_id"]] += 1
for event, _ in counts.most_common(int(sys.argv[2])):
    print(event)
PY
)
echo "input: $count messages, $events events, $listings listings per event; rules on the ${#busiest[@]} busiest events"

# One rule of each kind per busy event, through the CLI, in the same order in
# every database (so rule ids match).
add_rules() {
    local url=$1
    $bin migrate --database-url "$url" >/dev/null
    for event in "${busiest[@]}"; do
        $bin rules --database-url "$url" add --event "$event" --max-price 150 --rearm-pct 5 --cooldown 2m >/dev/null 2>&1
        $bin rules --database-url "$url" add --event "$event" --kind new_low --window-days 1 >/dev/null 2>&1
        $bin rules --database-url "$url" add --event "$event" --kind back_in_stock --max-price 120 >/dev/null 2>&1
        $bin rules --database-url "$url" add --event "$event" --kind deal --deal-pct 15 --cooldown 90s >/dev/null 2>&1
    done
}

run() {
    local name=$1
    shift
    $bin run --input-topic "$input" --alerts-topic "$tag.$name.alerts" --dlq-topic "$tag.$name.dlq" \
        --database-url "$pg/${tag}_$name" --from earliest "$@"
}

for name in w1 w4 crash; do
    add_rules "$pg/${tag}_$name"
done
start=$(date +%s.%N)
run w1 -w 1 --exit-at-end >/dev/null 2>"/tmp/$tag.w1.log"
echo "-w 1: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"
run w4 -w 4 --epoch-ms 7 --max-batch 97 --exit-at-end >/dev/null 2>"/tmp/$tag.w4.log"

# Crashed: SIGKILL once a few transactions are committed, then a restart.
# Not through `run`: a backgrounded function is a subshell, and $! must be
# the job itself.
$bin run --input-topic "$input" --alerts-topic "$tag.crash.alerts" --dlq-topic "$tag.crash.dlq" \
    --database-url "$pg/${tag}_crash" --from earliest \
    -w 2 --epoch-ms 10 --max-batch 200 --max-in-flight 500 >/dev/null 2>"/tmp/$tag.crash.log" &
job=$!
for _ in $(seq 1 600); do
    commits=$(psql "$pg/${tag}_crash" -tAc "SELECT commit_no FROM job_progress" 2>/dev/null || echo 0)
    [ "${commits:-0}" -ge 5 ] && break
    sleep 0.1
done
kill -9 "$job"
wait "$job" 2>/dev/null || true
stored=$(psql "$pg/${tag}_crash" -tAc "SELECT count(*) FROM price_history")
echo "crash: killed after $commits commits with $stored history rows stored"
run crash -w 2 --exit-at-end >/dev/null 2>>"/tmp/$tag.crash.log"

for name in w1 w4 crash; do
    echo "== $name: alerts by kind"
    psql "$pg/${tag}_$name" -tAc "SELECT kind, count(*) FROM price_alerts GROUP BY kind ORDER BY kind" | sed 's/^/  /'
done
for name in w1 w4 crash; do
    digest=$(psql "$pg/${tag}_$name" -tAc "SELECT md5(string_agg(alert_id, ',' ORDER BY alert_id)), count(*) FROM price_alerts")
    echo "$name alert ids: md5,count = $digest"
done
echo "== examples (-w 1), one per rule kind"
psql "$pg/${tag}_w1" -tAc "SELECT DISTINCT ON (kind) kind, event_id, section, rule_id, old_price, new_price, observed_at
                            FROM price_alerts WHERE rule_id IS NOT NULL ORDER BY kind, observed_at" | sed 's/^/  /'

if [ "${KEEP:-0}" != 1 ]; then
    for name in w1 w4 crash; do
        psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS ${tag}_$name"
    done
else
    echo "kept databases ${tag}_w1 ${tag}_w4 ${tag}_crash"
fi
