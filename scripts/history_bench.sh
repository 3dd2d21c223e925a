#!/usr/bin/env bash
# History benchmark (issue 13): does ingest slow as price_history grows? The
# same replay into an empty database and into one that already holds a year of
# history; prints both rates and their ratio (target: >= 0.90).
#
#   scripts/history_bench.sh [--history-rows N] [--months K] [--count M]
#                            [--events E] [--listings-per-event L] [--workers W]
#                            [--keep] [--binary PATH]
#
#   --history-rows N  rows put into price_history beforehand (default 50000000)
#   --months K        spread over the K months before the replay (default 12)
#   --count M         messages of the replay (default 1000000)
#   --events E, --listings-per-event L
#                     the replay's world (default 2500 x 40 = 100 000 listings)
#   --workers W       conscope run -w W (default 2)
#   --keep            keep the databases (default: drop the ones this run made)
#   --binary PATH     measure this conscope binary (default: cargo build --release)
#
# Steps (each one failing stops the script with a non-zero status):
#   1. scripts/stack-up.sh, cargo build --release (unless --binary); the binary
#      is copied into the results directory, so a rebuild meanwhile changes
#      nothing measured.
#   2. conscope produce --count M --seed 1 --output FILE: the replay, starting
#      2026-01-01 (produce's default --start), the same file for every run.
#   3. the full database histbench_<ts>_full: conscope migrate, then N rows over
#      the K months before the replay's month, one month partition at a time,
#      not through the job: a table LIKE price_history filled by COPY ... FREEZE
#      from a generate_series (piped between two psql), its primary key and
#      BRIN index built after the load, then ATTACHed as the month's partition
#      (what migration 0010's price_history_ensure_months would have made).
#      100 000 listings of 2 500 events (their events rows too), each observed
#      about N/K/100 000 times a month, in time order. Then VACUUM ANALYZE, so
#      autovacuum has nothing to catch up on during the runs.
#   4. conscope run --input-file FILE --exit-at-end -w W into a fresh empty
#      database, then into the full one, then into another empty one (two empty
#      runs around the full one, against the machine's changing load). Each
#      run's `summary:` line gives its rate (messages / elapsed).
#   5. prints the rates and full / mean(empty).
#
# The replay lands in months the fill does not touch: the steady state of a
# job that has run for a year (history behind it, new observations now).
# Results: .stack/history_bench/<ts>/ (outputs of every step, report.txt).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONSCOPE_ROOT"

history_rows=50000000
months=12
count=1000000
events=2500
listings_per_event=40
workers=2
keep=false
binary=""
while (($#)); do
    case "$1" in
    --history-rows) history_rows="${2:-}" && shift 2 ;;
    --months) months="${2:-}" && shift 2 ;;
    --count) count="${2:-}" && shift 2 ;;
    --events) events="${2:-}" && shift 2 ;;
    --listings-per-event) listings_per_event="${2:-}" && shift 2 ;;
    --workers) workers="${2:-}" && shift 2 ;;
    --keep) keep=true && shift ;;
    --binary) binary="${2:-}" && shift 2 ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
for value in "$history_rows" "$months" "$count" "$events" "$listings_per_event" "$workers"; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "counts must be positive integers, got '$value'"
done
((months <= 120)) || die "--months must be at most 120"
for tool in cargo psql; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

stamp="$(date +%Y%m%d_%H%M%S)"
pg="postgres://$PGUSER_DEFAULT@$PGHOST_DEFAULT:$PGPORT_DEFAULT"
results="$CONSCOPE_STACK_DIR/history_bench/$stamp"
mkdir -p "$results"
report="$results/report.txt"
log "results directory: $results"

# The replay starts at produce's default --start; the fill ends where it begins.
replay_start="2026-01-01T00:00:00Z"
fill_listings=100000

databases=()
cleanup() {
    [[ "$keep" == true ]] && { ((${#databases[@]})) && log "kept databases: ${databases[*]}"; return; }
    local db
    for db in "${databases[@]}"; do
        psql_admin -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || log "could not drop $db"
    done
}
trap cleanup EXIT

# fresh_database NAME: a new, migrated database this run owns.
fresh_database() {
    local exists
    exists="$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'")"
    [[ -z "$exists" ]] || die "database $1 exists already; not reusing it"
    databases+=("$1")
    "$bin" migrate --database-url "$pg/$1" >"$results/$1.migrate.log" 2>&1 ||
        { tail -n 20 "$results/$1.migrate.log" >&2; die "migrate $1 failed"; }
}

# --- 1. stack and build -----------------------------------------------------

phase "stack up" bash scripts/stack-up.sh 2> >(tee "$results/stack-up.log" >&2)
if [[ -z "$binary" ]]; then
    phase "cargo build --release" cargo build --release --bin conscope 2>"$results/build.log" ||
        { tail -n 30 "$results/build.log" >&2; die "build failed"; }
    binary=target/release/conscope
fi
[[ -x "$binary" ]] || die "no conscope binary at $binary"
bin="$results/conscope"
cp "$binary" "$bin"
# What is measured, named at the start: the tree may change during the run.
measured="$binary, tree $(git describe --always --dirty 2>/dev/null || echo unknown) at start"

# --- 2. the replay ------------------------------------------------------------

input="$results/replay.jsonl"
phase "conscope produce --count $count (${events} events x ${listings_per_event} listings) into $input" \
    "$bin" produce --count "$count" --seed 1 --events "$events" --listings-per-event "$listings_per_event" \
    --start "$replay_start" --output "$input" >"$results/produce.out" 2>"$results/produce.err" ||
    { tail -n 20 "$results/produce.err" >&2; die "produce failed"; }

# --- 3. the full database -----------------------------------------------------

full="histbench_${stamp}_full"
fresh_database "$full"

# fill_month START ROWS: ROWS observations of the fill's listings in the month
# starting at START (a UTC month), as that month's partition.
fill_month() {
    local start="$1" rows="$2" part
    part="price_history_p$(date -u -d "$start" +%Y%m)"
    # Listing l (0 .. 99 999) is seat l%40 of event h<l/40>; its k-th
    # observation of the month is at START + k * step (+ l ms), so the rows come
    # in time order and every identity once.
    psql_admin -d "$full" -qAt -c "COPY (
        SELECT 'h' || (l / 40), 'S' || (l % 40 / 5), (l % 5)::text, (l % 40)::text, 'fill',
               (10 + (i * 7919 % 99000) / 100.0)::numeric(12,2), 'USD', i % 17 <> 0,
               timestamptz '$start' + (i / $fill_listings) * step + l * interval '1 millisecond'
        FROM generate_series(0::bigint, $rows - 1) AS i,
             LATERAL (SELECT i % $fill_listings AS l) AS listing,
             LATERAL (SELECT (interval '28 days' - $fill_listings * interval '1 millisecond')
                             / ceil($rows::numeric / $fill_listings) AS step) AS spacing
        ) TO STDOUT" |
        psql_admin -d "$full" -q -1 \
            -c "CREATE TABLE $part (LIKE price_history INCLUDING DEFAULTS)" \
            -c "COPY $part FROM STDIN (FREEZE)"
    # Indexes built after the load (a sort each) rather than entry by entry.
    psql_admin -d "$full" -q \
        -c "SET maintenance_work_mem = '512MB'" \
        -c "ALTER TABLE $part ADD PRIMARY KEY (event_id, section, \"row\", seat, source, observed_at)" \
        -c "CREATE INDEX ON $part USING brin (observed_at) WITH (autosummarize = on)" \
        -c "ALTER TABLE price_history ATTACH PARTITION $part
            FOR VALUES FROM ('$start') TO (timestamptz '$start' + interval '1 month')"
}

fill() {
    local month start rows remaining="$history_rows"
    for ((month = months; month >= 1; month--)); do
        start="$(date -u -d "${replay_start%T*} -$month month" +%Y-%m-%dT00:00:00Z)"
        rows=$((remaining / month))
        remaining=$((remaining - rows))
        log "  $start: $rows rows"
        fill_month "$start" "$rows"
    done
    psql_admin -d "$full" -q -c "INSERT INTO events (event_id, event_name, first_seen, last_seen)
        SELECT 'h' || e, 'history event ' || e, timestamptz '$replay_start' - interval '$months months',
               timestamptz '$replay_start'
        FROM generate_series(0, $fill_listings / 40 - 1) AS e"
    psql_admin -d "$full" -q -c "VACUUM ANALYZE price_history" -c "VACUUM ANALYZE events"
}
phase "fill $full with $history_rows history rows over $months months" fill
stored="$(psql_admin -d "$full" -tAc "SELECT count(*) FROM price_history")"
((stored == history_rows)) || die "$full holds $stored history rows, not $history_rows"
psql_admin -d "$full" -tAc "SELECT pg_size_pretty(pg_database_size(current_database()))" >"$results/full_size"
log "$full: $stored history rows, $(cat "$results/full_size")"

# --- 4. the runs --------------------------------------------------------------

# replay NAME DATABASE: conscope run over the file into DATABASE; its rate.
replay() {
    local name="$1" db="$2" out="$results/$1.out" err="$results/$1.err"
    phase "conscope run -w $workers --input-file into $db ($name)" \
        "$bin" run --input-file "$input" --exit-at-end -w "$workers" --database-url "$pg/$db" \
        --alerts-topic "$db.alerts" --dlq-topic "$db.dlq" >"$out" 2>"$err" ||
        { tail -n 30 "$err" >&2; die "$name failed"; }
    local summary
    summary="$(grep -E '^summary: ' "$out" | tail -n 1)"
    [[ -n "$summary" ]] || die "$name printed no 'summary:' line (see $out)"
    log "$name: $summary"
    [[ "$summary" =~ \ rate=([0-9]+)/s ]] || die "no rate in $name's summary"
    rate["$name"]="${BASH_REMATCH[1]}"
    load["$name"]="$(cut -d' ' -f1-3 /proc/loadavg)"
}
declare -A rate load
empty1="histbench_${stamp}_empty1"
empty2="histbench_${stamp}_empty2"
fresh_database "$empty1"
replay empty1 "$empty1"
replay full "$full"
fresh_database "$empty2"
replay empty2 "$empty2"

# --- 5. report ----------------------------------------------------------------

{
    echo "history bench $stamp on $(nproc) cores: $measured"
    echo "replay: $count messages, $events events x $listings_per_event listings, conscope run -w $workers --input-file"
    echo "full database: $history_rows price_history rows over $months months before the replay, $(cat "$results/full_size")"
    printf '%-28s %10s   %s\n' "run" "msgs/s" "load average after"
    printf '%-28s %10s   %s\n' "empty database (1)" "${rate[empty1]}" "${load[empty1]}"
    printf '%-28s %10s   %s\n' "$history_rows history rows" "${rate[full]}" "${load[full]}"
    printf '%-28s %10s   %s\n' "empty database (2)" "${rate[empty2]}" "${load[empty2]}"
    awk -v full="${rate[full]}" -v a="${rate[empty1]}" -v b="${rate[empty2]}" 'BEGIN {
        ratio = full / ((a + b) / 2)
        printf "ratio full / mean(empty): %.3f (target >= 0.90: %s)\n", ratio, (ratio >= 0.90 ? "met" : "NOT met")
    }'
} | tee "$report"
