#!/usr/bin/env bash
# Burst: a mass restart against warden-ca with its limits on. 10,000 CSRs at once from
# 100 simulated nodes (distinct callers, 4 connections each); clients retry after the
# CA's RESOURCE_EXHAUSTED pushback as the node agent does. Reports, as medians of $RUNS
# runs (default 3): certificates issued and errors, refusals, when the first, median and
# last node had all its certificates (the spread shows whether a node was starved), and
# the CA's resident memory at start and at peak. SQLite, durable audit. Loopback only.
#
#   bench/ca-burst.sh [extra warden-ca-bench flags, e.g. --ca-arg=--csr-node-rate=20]
#
# The default limits (README: --csr-node-rate 200, burst 1000; 256 at once, 4096
# queued) are exercised by a tighter node rate here (20/s, burst 20), so that every node
# is throttled and must come back on the CA's hint.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p warden-ca --bins
bin=target/release
runs=${RUNS:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  "$bin/warden-ca-bench" --burst 10000 --nodes 100 --node-conns 4 \
    --ca-arg=--csr-node-rate=20 --ca-arg=--csr-node-burst=20 --json "$@" >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"warden-ca burst: {rows[0]['csrs']} CSRs from {rows[0]['nodes']} nodes, medians of {len(rows)} runs")
print(f"  issued {med('issued'):.0f}, errors {med('errors'):.0f}, RESOURCE_EXHAUSTED {med('refusals_resource_exhausted'):.0f}")
print(f"  {med('seconds'):.1f} s, {med('certs_per_sec'):.0f} certs/s")
print(f"  nodes done: first {med('node_done_first_s'):.2f} s, median {med('node_done_median_s'):.2f} s, last {med('node_done_last_s'):.2f} s")
print(f"  CA memory: {med('ca_rss_start_mib'):.1f} MiB at start, {med('ca_rss_peak_mib'):.1f} MiB peak")
PY
