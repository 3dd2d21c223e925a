#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo fuzz: libFuzzer with AddressSanitizer,
# debug assertions and overflow checks on) for a number of executions each, and
# prints how many each ran. Not part of scripts/test.sh: a million runs per
# target take minutes.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]
#
# RUNS: executions per target (default 1000000). TARGETs: default every target
# in fuzz/Cargo.toml (parse_observation: the input parser; decode_alert: what
# `conscope alerts` decodes).
#
# Installs cargo-fuzz when missing (`cargo install cargo-fuzz`). cargo-fuzz
# needs nightly compiler features: the script runs it on the default toolchain
# with RUSTC_BOOTSTRAP=1, or on CONSCOPE_FUZZ_TOOLCHAIN (e.g. nightly) when set.
# Each target's corpus grows in fuzz/corpus/TARGET (not in git), seeded from
# fuzz/seeds/TARGET; a crash leaves its input in fuzz/artifacts/TARGET and
# fails the script.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage && exit 0
cd "$CONSCOPE_ROOT"

runs="${1:-1000000}"
[[ "$runs" =~ ^[0-9]+$ ]] || die "RUNS must be a number, got '$runs'"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^conscope-fuzz$')
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz not installed; installing it"
    cargo install cargo-fuzz --locked
fi
fuzz=(cargo)
if [[ -n "${CONSCOPE_FUZZ_TOOLCHAIN:-}" ]]; then
    fuzz+=("+$CONSCOPE_FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
fuzz+=(fuzz)

results=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    out="$(mktemp)"
    log "fuzzing $target for $runs runs"
    status=0
    "${fuzz[@]}" run --debug-assertions "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- -runs="$runs" >"$out" 2>&1 || status=$?
    # libFuzzer's last progress lines, and any crash report.
    grep -E '^(#[0-9]+ |Done |==[0-9]+==|thread .* panicked|SUMMARY)' "$out" | tail -n 8 || true
    done_line="$(grep -E '^Done [0-9]+ runs' "$out" | tail -n 1 || true)"
    if ((status != 0)) || [[ -z "$done_line" ]]; then
        tail -n 30 "$out"
        results+=("$(printf '%-20s FAILED (exit %s; see fuzz/artifacts/%s)' "$target" "$status" "$target")")
    else
        results+=("$(printf '%-20s ok: %s' "$target" "$done_line")")
    fi
    rm -f "$out"
done

echo
echo "== scripts/fuzz.sh ($runs runs per target)"
printf '  %s\n' "${results[@]}"
for line in "${results[@]}"; do
    [[ "$line" == *FAILED* ]] && exit 1
done
exit 0
