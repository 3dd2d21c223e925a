#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run): brings up the dev stack, then
# checks formatting and lints, builds everything, and runs every test.
#
#   scripts/test.sh [extra nextest / cargo test filter args...]
#
# Phases, each timed: stack-up, old-test-databases, chromium, aiosmtpd, fmt, clippy,
# build, tests. A
# failing phase does not hide the others: every phase runs, except the tests
# when the stack or the build failed. Exits non-zero when any phase failed.
#
# Tests run with cargo-nextest when it is installed (`cargo test` otherwise),
# two at a time: integration tests each run the job binary, and CI has 2 cores.
# tests/dashboard_browser.rs drives Debian's headless `chromium` through
# `chromedriver` (package chromium-driver): the chromium phase installs both
# when missing (apt-get update first). Without them that test fails, saying so.
# They find the stack through CONSCOPE_BROKERS (exported here) and the default
# database URL, and create their own topics and databases, named
# <what>_t<pid>_<nanos> (testkit's `unique`). The old-test-databases phase
# drops those whose test process is gone (a run's databases stay until the
# next run, for a look after a failure; a run in progress keeps its own).
#
# Environment:
#   CONSCOPE_BROKER_PORT   broker port (default 9092)
#   CONSCOPE_TEST_THREADS  tests at once (default 2)
#   CONSCOPE_TEST_TIMEOUT  limit for the test phase, timeout(1) syntax (default 40m)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage && exit 0
cd "$CONSCOPE_ROOT"

export CONSCOPE_BROKERS="127.0.0.1:$CONSCOPE_BROKER_PORT"
threads="${CONSCOPE_TEST_THREADS:-2}"
test_timeout="${CONSCOPE_TEST_TIMEOUT:-40m}"
filters=("$@")

results=()
failed=0
# run_phase NAME COMMAND...: runs a phase, records its result and duration.
run_phase() {
    local name="$1" started=$SECONDS status=0
    shift
    phase "$name" "$@" || status=$?
    local result=ok
    if ((status != 0)); then
        result="FAILED ($status)"
        failed=1
    fi
    results+=("$(printf '%-10s %-12s %5ss' "$name" "$result" $((SECONDS - started)))")
    return "$status"
}
skip_phase() {
    log "--- $1: skipped ($2)"
    results+=("$(printf '%-10s %-12s' "$1" "skipped")")
    failed=1
}

# Debian's chromium and chromedriver, for tests/dashboard_browser.rs.
install_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        log "chromium: $(chromium --version 2>/dev/null | head -n 1) installed"
        return
    fi
    log "chromium: not installed; installing Debian's chromium and chromium-driver"
    local sudo=()
    if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver
}

# tests/notify.rs runs a real SMTP server with STARTTLS: Python's aiosmtpd
# (testkit/smtp_server.py), with a certificate made by openssl. One small pure
# Python package; pip only when it is missing.
install_aiosmtpd() {
    if python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        log "aiosmtpd: installed"
        return
    fi
    command -v openssl >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
    python3 -m pip install -q aiosmtpd
}

test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        timeout -k 60 "$test_timeout" cargo nextest run --release --workspace \
            --no-fail-fast --test-threads "$threads" ${filters[@]+"${filters[@]}"} 2>&1 | tee "$test_log"
    else
        log "cargo-nextest not installed; using cargo test"
        timeout -k 60 "$test_timeout" cargo test --release --workspace --no-fail-fast \
            ${filters[@]+"${filters[@]}"} -- --test-threads "$threads" 2>&1 | tee "$test_log"
    fi
    return "${PIPESTATUS[0]}"
}

# The closing line CI reads: "tests: N passed, M failed", summed from the runner.
tally_tests() {
    local summary passed failed
    # nextest prints one summary line for the whole run; cargo test one per binary.
    summary=$(grep -E 'tests run:' "$test_log" | tail -n 1 || true)
    [[ -n "$summary" ]] || summary=$(grep -E '^test result:' "$test_log" || true)
    passed=$( (grep -oE '[0-9]+ passed' <<<"$summary" || true) | awk '{s += $1} END {print s + 0}')
    failed=$( (grep -oE '[0-9]+ failed' <<<"$summary" || true) | awk '{s += $1} END {print s + 0}')
    echo "tests: $passed passed, $failed failed"
}

# Databases of earlier test runs whose process is gone (see the header).
drop_old_test_databases() {
    local db pid dropped=0
    while read -r db; do
        [[ -n "$db" ]] || continue
        pid=$(sed -E 's/.*_t([0-9]+)_[0-9]+$/\1/' <<<"$db")
        kill -0 "$pid" 2>/dev/null && continue
        psql_admin -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
        dropped=$((dropped + 1))
    done < <(psql_admin -Atc "SELECT datname FROM pg_database WHERE datname ~ '_t[0-9]+_[0-9]+$'")
    log "dropped $dropped databases of finished test runs"
}

total_started=$SECONDS
stack_ok=true
build_ok=true
run_phase stack-up bash scripts/stack-up.sh || stack_ok=false
[[ $stack_ok == true ]] && { run_phase old-test-databases drop_old_test_databases || true; }
run_phase chromium install_chromium || true
run_phase aiosmtpd install_aiosmtpd || true
# tests/progress.rs draws its bars in a pseudo-terminal made by util-linux's
# script(1), from Debian's bsdutils (essential, so normally there).
if ! command -v script >/dev/null 2>&1; then
    run_phase bsdutils bash -c 'apt-get update -qq && apt-get install -y -qq bsdutils' || true
fi
run_phase fmt cargo fmt --all -- --check || true
run_phase clippy cargo clippy --release --workspace --all-targets -- -D warnings || true
run_phase build cargo build --release --workspace --all-targets || build_ok=false
if [[ "$build_ok" != true ]]; then
    skip_phase tests "the build failed"
elif [[ "$stack_ok" != true ]]; then
    skip_phase tests "the stack is not up"
else
    run_phase tests run_tests || true
fi

echo
echo "== scripts/test.sh summary (brokers $CONSCOPE_BROKERS)"
printf '  %s\n' "${results[@]}"
echo "  total: $((SECONDS - total_started))s"
if ((failed)); then
    echo "  RESULT: FAILED"
    [[ -s "$test_log" ]] && tally_tests
    exit 1
fi
echo "  RESULT: ok"
tally_tests
