#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET (default 60) on its seed corpus, with
# cargo-fuzz (libFuzzer, nightly Rust). New corpus entries go to fuzz/corpus-new/<target>
# (gitignored; the kept seeds stay small); crashes are written to fuzz/artifacts/<target>/ (cargo-fuzz's place for them).
# A crash becomes a regression: minimize it (`cargo +nightly fuzz tmin <target> <file>`),
# put it in fuzz/regressions/<target>/, and the stable `cargo test` replays it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
set -uo pipefail

cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -O || exit 1

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-new/$t" "fuzz/artifacts/$t"
    echo "== $t: ${secs}s"
    # The first corpus directory receives new inputs; the kept seeds are only read.
    if ! cargo +nightly fuzz run -O "$t" "fuzz/corpus-new/$t" "fuzz/corpus/$t" \
        $( [ -d "fuzz/regressions/$t" ] && echo "fuzz/regressions/$t" ) \
        -- -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crashes"
