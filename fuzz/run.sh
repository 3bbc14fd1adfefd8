#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET (default 60) on its seed corpus, with
# cargo-fuzz (libFuzzer, nightly Rust). New corpus entries go to fuzz/corpus-new/<target>
# (gitignored; the kept seeds stay small); crashes are written to fuzz/artifacts/<target>/
# (cargo-fuzz's place for them).
# A crash becomes a regression: minimize it (`cargo +nightly fuzz tmin <target> <file>`),
# put it in fuzz/regressions/<target>/, and the stable `cargo test` replays it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none. Warden's crates have no `unsafe` of their
#                   own, so CI fuzzes without AddressSanitizer: it builds in about half
#                   the time and runs several times as many inputs per second.
#   FUZZ_JOBS       how many targets run at once (default 1; CI uses one per core).
#   FUZZ_INSTALL    set to 0 to fail instead of installing cargo-fuzz when it is missing.
set -uo pipefail

cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
sanitizer="${FUZZ_SANITIZER:-address}"
jobs="${FUZZ_JOBS:-1}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${FUZZ_INSTALL:-1}" = 0 ]; then
        echo "fuzz/run.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
        exit 1
    fi
    cargo install cargo-fuzz --locked --version 0.13.2 --quiet || exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

build_start=$(date +%s)
cargo +nightly fuzz build -O --sanitizer "$sanitizer" || exit 1
echo "== fuzz targets built in $(( $(date +%s) - build_start ))s (sanitizer: $sanitizer)"

# One target: its log goes to fuzz/logs/<target>.log, its last lines to stdout.
run_one() {
    local t="$1"
    mkdir -p "fuzz/corpus-new/$t" "fuzz/artifacts/$t" fuzz/logs
    local regressions=()
    [ -d "fuzz/regressions/$t" ] && regressions=("fuzz/regressions/$t")
    # The first corpus directory receives new inputs; the kept seeds are only read.
    cargo +nightly fuzz run -O --sanitizer "$sanitizer" "$t" \
        "fuzz/corpus-new/$t" "fuzz/corpus/$t" "${regressions[@]}" \
        -- -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    local rc=$?
    local runs
    runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$')
    if [ $rc -eq 0 ]; then
        echo "== $t: ${secs}s, ${runs:-?} inputs, no crash"
    else
        echo "== $t: FAILED (exit $rc); the end of its log:"
        tail -40 "fuzz/logs/$t.log"
    fi
    return $rc
}

failed=()
pids=()
names=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    if [ ${#pids[@]} -ge "$jobs" ]; then
        wait "${pids[0]}" || failed+=("${names[0]}")
        pids=("${pids[@]:1}")
        names=("${names[@]:1}")
    fi
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crashes in ${#targets[@]} targets"
