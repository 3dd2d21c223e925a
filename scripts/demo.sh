#!/usr/bin/env bash
# The end-to-end demo, on a Debian machine with the Rust toolchain, a JDK and
# Maven: brings up the dev stack (scripts/stack-up.sh installs PostgreSQL and
# fetches Apache Kafka the first time, about a minute), builds conscope,
# produces mock price observations to a fresh topic, runs the job over them
# until it has consumed the topic to its end, and shows what landed in Postgres
# and on the output topics.
#
#   scripts/demo.sh [--topic T] [--database-url URL] [--count N]
#                   [--partitions N] [--workers N] [--seed S] [-- RUN_ARGS...]
#
# Every run uses its own topics and database, so reruns are independent:
#   input    demo_<timestamp>          (--topic)
#   alerts   <input>.alerts,  dead letters  <input>.dlq
#   database conscope_demo_<timestamp> (--database-url; one database holds one
#            job's state, so a new topic needs a new database)
# Arguments after `--` go to `conscope run` as they are.
# Nothing is deleted afterwards; the last lines print how to clean up.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

stamp="$(date +%Y%m%d_%H%M%S)"
topic="demo_$stamp"
database_url="postgres://$PGUSER_DEFAULT@$PGHOST_DEFAULT:$PGPORT_DEFAULT/conscope_demo_$stamp"
count=50000
partitions=4
workers=2
seed=42
run_args=()
while (($#)); do
    case "$1" in
    --topic) topic="$2" && shift 2 ;;
    --database-url) database_url="$2" && shift 2 ;;
    --count) count="$2" && shift 2 ;;
    --partitions) partitions="$2" && shift 2 ;;
    --workers | -w) workers="$2" && shift 2 ;;
    --seed) seed="$2" && shift 2 ;;
    --) shift && run_args=("$@") && break ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
db_name="${database_url##*/}"
db_name="${db_name%%\?*}"
alerts_topic="$topic.alerts"
dlq_topic="$topic.dlq"
brokers="127.0.0.1:$CONSCOPE_BROKER_PORT"
bin="$CONSCOPE_ROOT/target/release/conscope"
# The job and the tools read the same settings; flags below make them explicit.
export CONSCOPE_BROKERS="$brokers"

command -v cargo >/dev/null || die "cargo is required (see README, Quickstart)"

phase "stack up" bash scripts/stack-up.sh
command -v psql >/dev/null || die "psql is required (scripts/stack-up.sh installs it with PostgreSQL)"
phase "build" cargo build --release --bin conscope
phase "migrate $db_name" "$bin" migrate --database-url "$database_url"

phase "produce $count messages to $topic ($partitions partitions, seed $seed)" \
    "$bin" produce --brokers "$brokers" --topic "$topic" \
    --partitions "$partitions" --count "$count" --seed "$seed"
# topics TOPIC...: message counts per topic (needs python3; skipped without).
topics() {
    if command -v python3 >/dev/null 2>&1; then
        python3 scripts/kafka_offsets.py --brokers "$brokers" "$@"
    else
        log "no python3: not counting messages in $*"
    fi
}
topics "$topic"

started=$SECONDS
phase "run the job over $topic with $workers workers until its end" \
    "$bin" run --brokers "$brokers" --database-url "$database_url" \
    --input-topic "$topic" --alerts-topic "$alerts_topic" --dlq-topic "$dlq_topic" \
    --exit-at-end --from earliest -w "$workers" ${run_args[@]+"${run_args[@]}"}
took=$((SECONDS - started))

q() { psql -X -v ON_ERROR_STOP=1 -P pager=off -d "$database_url" "$@"; }

echo
echo "== What landed in $db_name (job took ${took}s)"
q -c "
SELECT 'events' AS \"table\", count(*) AS rows FROM events
UNION ALL SELECT 'price_history', count(*) FROM price_history
UNION ALL SELECT 'listings', count(*) FROM listings
UNION ALL SELECT 'price_alerts', count(*) FROM price_alerts
UNION ALL SELECT 'event_summary', count(*) FROM event_summary
UNION ALL SELECT 'section_summary', count(*) FROM section_summary
UNION ALL SELECT 'alert_rules', count(*) FROM alert_rules
UNION ALL SELECT 'outbox (not yet published)', count(*) FROM outbox"
q -c "SELECT kind, count(*) AS alerts FROM price_alerts GROUP BY kind ORDER BY kind"

echo "== The 5 events with the most listings, and their get-in price (event_summary, kept by the job)"
q -c "
SELECT e.event_id, left(e.event_name, 40) AS event_name, s.currency,
       s.listings, s.available, s.get_in_price
FROM event_summary s JOIN events e USING (event_id)
ORDER BY s.listings DESC, e.event_id, s.currency
LIMIT 5"

echo "== The 10 latest alerts"
q -c "
SELECT kind, event_id, section, \"row\", seat, source, old_price, new_price, currency, observed_at
FROM price_alerts
ORDER BY observed_at DESC, alert_id
LIMIT 10"

echo "== Topics"
topics "$topic" "$alerts_topic" "$dlq_topic"
if command -v python3 >/dev/null 2>&1; then
    dlq="$(python3 scripts/kafka_offsets.py --brokers "$brokers" --count "$dlq_topic")"
    echo "$dlq rejected messages in the dead-letter topic $dlq_topic"
fi

cat <<DONE

Look around:
  psql '$database_url'
  $bin alerts --brokers $brokers --alerts-topic $alerts_topic --from-beginning
Clean up the database (the topics stay until scripts/stack-down.sh --wipe deletes the broker's data):
  psql -h $PGHOST_DEFAULT -U $PGUSER_DEFAULT -c 'DROP DATABASE "$db_name"'
DONE
