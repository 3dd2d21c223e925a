#!/usr/bin/env bash
# Restart benchmark: what a restart costs as the price history grows. For each
# size it builds a database holding that many stored observations over the same
# listings, restarts `conscope run` on it with a tiny new input file, and prints
# the time from the start to the first processed (committed) message and the
# job's peak RSS at that moment. Restart cost should follow the listings, not
# the history. Nothing in the report is hard-coded.
#
#   scripts/restart_bench.sh [--sizes "100000 1000000 10000000"] [--listings L]
#                            [--binary PATH] [--workers N] [--max-rss-mb MB]
#                            [--keep]
#
#   --sizes "N..."   stored observations per database (default: 100k, 1M, 10M);
#                    each is rounded down to a multiple of the listings
#   --listings L     listings shared by every database (default 2000: 100
#                    events of 20 listings)
#   --binary PATH    the conscope binary to measure (default: cargo build
#                    --release, then target/release/conscope, copied away so a
#                    rebuild during the run changes nothing)
#   --workers N      -w of the restarted job (default 2)
#   --max-rss-mb MB  stop a job whose RSS passes MB before its first message
#                    and report it as such (default 6000): a job that loads the
#                    whole history must not take the machine down
#   --keep           keep the databases (default: drop them at the end)
#
# Each database is filled in SQL (generate_series), consistent as the job
# itself would have left it: `price_history` holds N/L observations per
# listing, one minute apart; `listings` the latest of each; `events` their
# first and last times and names; the summaries their aggregates. The tiny
# input is 100 newer observations of existing listings. The job runs live
# (`--metrics-addr`), polled every 20 ms until messages_processed_total > 0;
# then VmHWM is read from /proc and the job is stopped. It needs the dev stack
# (scripts/stack-up.sh): PostgreSQL, and a broker for the job's output topics.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

sizes="100000 1000000 10000000"
listings=2000
binary=""
workers=2
max_rss_mb=6000
keep=false
while (($#)); do
    case "$1" in
    --sizes) sizes="${2:-}" && shift 2 ;;
    --listings) listings="${2:-}" && shift 2 ;;
    --binary) binary="${2:-}" && shift 2 ;;
    --workers) workers="${2:-}" && shift 2 ;;
    --max-rss-mb) max_rss_mb="${2:-}" && shift 2 ;;
    --keep) keep=true && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
for value in $sizes "$listings" "$workers" "$max_rss_mb"; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "sizes, listings, workers and limits must be positive integers, got '$value'"
done
((listings % 20 == 0)) || die "--listings must be a multiple of 20 (events of 20 listings)"
for tool in psql curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
pg_ready || die "PostgreSQL does not answer at $PGHOST_DEFAULT:$PGPORT_DEFAULT (scripts/stack-up.sh)"

stamp="$(date +%Y%m%d_%H%M%S)"
work="$CONSCOPE_STACK_DIR/restart_bench/$stamp"
mkdir -p "$work"
if [[ -z "$binary" ]]; then
    phase "build" cargo build --release --bin conscope
    binary=target/release/conscope
fi
cp "$binary" "$work/conscope"
binary="$work/conscope"
log "results directory: $work"

pg="postgres://$PGUSER_DEFAULT@$PGHOST_DEFAULT:$PGPORT_DEFAULT"
databases=()
job_pid=""
cleanup() {
    if [[ -n "$job_pid" ]] && kill -0 "$job_pid" 2>/dev/null; then
        kill "$job_pid" 2>/dev/null || true
        wait "$job_pid" 2>/dev/null || true
    fi
    if [[ "$keep" == false ]]; then
        for db in "${databases[@]}"; do
            psql_admin -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
        done
    fi
}
trap cleanup EXIT

# fill DATABASE OBSERVATIONS: the tables as a job would have left them.
fill() {
    local db="$1" per=$(($2 / listings))
    psql_admin -d "$db" -q -v per="$per" -v listings="$listings" <<'SQL'
-- Listing l (0-based) belongs to event l/20, section (l%20)/5, row l%5.
CREATE TEMP VIEW gen AS
SELECT l, j, 'rb-e' || (l / 20) AS event_id, 'S' || ((l % 20) / 5) AS section, 'R' || (l % 5) AS "row",
       (100 + (l * 7 + j * 13) % 900)::numeric(12,2) AS price,
       timestamptz '2026-01-01 00:00:00+00' + j * interval '1 minute' AS observed_at
FROM generate_series(0, :listings - 1) AS l, generate_series(0, :per - 1) AS j;

INSERT INTO events (event_id, event_name, first_seen, last_seen, event_name_observed_at)
SELECT 'rb-e' || e, 'Event ' || e, timestamptz '2026-01-01 00:00:00+00',
       timestamptz '2026-01-01 00:00:00+00' + (:per - 1) * interval '1 minute',
       timestamptz '2026-01-01 00:00:00+00' + (:per - 1) * interval '1 minute'
FROM generate_series(0, :listings / 20 - 1) AS e;

-- price_history is partitioned by month (migration 0010): its months first.
SELECT price_history_ensure_months(ARRAY(
    SELECT DISTINCT date_trunc('month', observed_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM gen));
INSERT INTO price_history (event_id, section, "row", seat, source, price, currency, available, observed_at)
SELECT event_id, section, "row", '', 'src', price, 'USD', true, observed_at FROM gen;

INSERT INTO listings (event_id, section, "row", seat, source, price, currency, available, observed_at)
SELECT event_id, section, "row", '', 'src', price, 'USD', true, observed_at FROM gen WHERE j = :per - 1;

INSERT INTO event_summary (event_id, currency, listings, available, get_in_price)
SELECT event_id, currency, count(*), count(*) FILTER (WHERE available), min(price) FILTER (WHERE available)
FROM listings GROUP BY event_id, currency;
INSERT INTO section_summary (event_id, section, currency, available, low_price)
SELECT event_id, section, currency, count(*) FILTER (WHERE available), min(price) FILTER (WHERE available)
FROM listings GROUP BY event_id, section, currency;
VACUUM ANALYZE;
SQL
}

# The tiny input: 100 observations newer than everything stored.
input="$work/tiny.jsonl"
for ((i = 0; i < 100; i++)); do
    l=$(((i * 37) % listings))
    printf '{"event_id":"rb-e%d","section":"S%d","row":"R%d","seat":"","source":"src","price":"%d.50","timestamp":"2027-01-01T00:00:%02dZ"}\n' \
        $((l / 20)) $(((l % 20) / 5)) $((l % 5)) $((50 + i)) $((i % 60)) >>"$input"
done

now_ms() { date +%s%3N; }
metrics_port=$((19450 + RANDOM % 40))

report="$work/report.txt"
printf '%-12s %-12s %-14s %-14s %s\n' observations fill_s first_msg_ms peak_rss_mb note | tee "$report"
for size in $sizes; do
    db="restart_${stamp}_$size"
    databases+=("$db")
    observations=$((size / listings * listings))
    "$binary" migrate --database-url "$pg/$db" >"$work/$db.migrate.log" 2>&1
    started=$SECONDS
    phase "fill $db ($observations observations)" fill "$db" "$observations"
    fill_s=$((SECONDS - started))
    stored="$(psql_admin -d "$db" -tAc 'SELECT count(*) FROM price_history')"
    ((stored == observations)) || die "$db holds $stored observations, expected $observations"

    start="$(now_ms)"
    "$binary" run -w "$workers" --input-file "$input" --database-url "$pg/$db" \
        --alerts-topic "$db.alerts" --dlq-topic "$db.dlq" \
        --metrics-addr "127.0.0.1:$metrics_port" --metrics-interval 60 \
        >"$work/$db.run.log" 2>&1 &
    job_pid=$!
    first="" note=""
    while :; do
        if ! kill -0 "$job_pid" 2>/dev/null; then
            note="the job exited (see $work/$db.run.log)"
            break
        fi
        processed="$(curl -sf "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null |
            awk '/^conscope_messages_processed_total / { print $2 }' || true)"
        if [[ -n "$processed" && "$processed" != 0 ]]; then
            first=$(($(now_ms) - start))
            break
        fi
        rss_kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$job_pid/status" 2>/dev/null || echo 0)"
        if ((rss_kb / 1024 > max_rss_mb)); then
            note="stopped: RSS passed ${max_rss_mb} MB after $(($(now_ms) - start)) ms"
            break
        fi
        sleep 0.02
    done
    peak_kb="$(awk '/^VmHWM:/ { print $2 }' "/proc/$job_pid/status" 2>/dev/null || echo 0)"
    kill "$job_pid" 2>/dev/null || true
    wait "$job_pid" 2>/dev/null || true
    job_pid=""
    printf '%-12s %-12s %-14s %-14s %s\n' "$observations" "$fill_s" "${first:--}" "$((peak_kb / 1024))" "$note" |
        tee -a "$report"
done
log "report: $report"
