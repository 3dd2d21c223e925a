#!/usr/bin/env bash
# The fault suite (issue 9), full size: a 200 000-message topic (duplicates,
# stale, sold and malformed messages, rules active) replayed eight times, each
# time breaking something, each ending with an exact comparison against an
# uninterrupted run of the same topic (every table, the alerts topic by
# alert_id, the dead letters whole: input position, reason, key, value):
#   1. 20 SIGKILLs at seeded random moments, each after a commit of that run
#   2. an abort at each fault point of src/fail.rs, each seen to fire
#   3. Postgres restarted with `pg_ctl restart -m immediate` twice mid-run
#      (a throwaway cluster of its own, port 19542: never the shared one)
#   4. the broker killed (kill -9) and restarted mid-run (a broker of its own, port 19561)
#   5. Postgres writes blocked for 30 s by LOCK TABLE price_history: peak RSS
#      (VmHWM) under the block, bounded
#   6. a second instance on the same database: refused with a clear error
#      before it restores or publishes; the first goes on
#   7. a cluster of two processes, one killed, then the cluster restarted
#   8. INSERT on price_history revoked from the job's role (not a superuser)
#      for 30 s, then granted back: the job waits, exits and quarantines nothing
#
#   scripts/faults.sh [--seed N] [--only 1,4,...]
#
# Brings up the dev stack (scripts/stack-up.sh), builds the tests in release,
# runs tests/faults (full_fault_suite) and prints its table: per scenario what
# was injected, rows compared, missing and extra (doubled or unexpected) table
# rows / alert ids / dead letters, the jobs' peak RSS, time, PASS/FAIL. Exits
# non-zero when any scenario failed; the failing scenarios' job logs are kept
# (the path is printed). The quick
# variant of the same suite runs with the tests (tests/faults, quick_fault_suite).
#
# Environment: CONSCOPE_BROKER_PORT (the shared broker, default 9092).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seed=""
only=""
while (($# > 0)); do
    case "$1" in
    -h | --help) usage && exit 0 ;;
    --seed) seed="${2:?--seed needs a number}" && shift 2 ;;
    --only) only="${2:?--only needs scenario numbers}" && shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
cd "$CONSCOPE_ROOT"

export CONSCOPE_BROKERS="127.0.0.1:$CONSCOPE_BROKER_PORT"
[[ -n "$seed" ]] && export CONSCOPE_FAULTS_SEED="$seed"
[[ -n "$only" ]] && export CONSCOPE_FAULTS_ONLY="$only"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
export CONSCOPE_FAULTS_REPORT="$report"

phase "stack-up" bash scripts/stack-up.sh
phase "build" cargo test --release --test faults --no-run
status=0
phase "fault suite" cargo test --release --test faults full_fault_suite -- --ignored --exact --nocapture ||
    status=$?
echo
if [[ -s "$report" ]]; then
    cat "$report"
else
    echo "the suite ended before its table (see the output above)"
    status=1
fi
exit "$status"
