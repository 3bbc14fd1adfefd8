#!/usr/bin/env bash
# CreateCertificate benchmark: warden-ca over gRPC/TLS with durable audit (default
# logging), on SQLite and on PostgreSQL, next to ring's single-core ECDSA P-256
# sign+verify ceiling measured in the same runs. Each backend runs $RUNS times (default
# 3); the table shows medians. Loopback only; about two minutes in all.
#
#   bench/ca.sh [--clients N] [--duration 10s]
#
# PostgreSQL: $WARDEN_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres);
# a fresh database is created for each run and dropped. Skipped, with a note, when no
# server answers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p warden-ca --bins
bin=target/release
runs=${RUNS:-3}
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--clients 32 --duration 10s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for i in $(seq "$runs"); do
  "$bin/warden-ca-bench" "${args[@]}" --json >>"$out"
done

admin=${WARDEN_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin%/*}
if psql "$admin" -qtAc "select 1" >/dev/null 2>&1; then
  for i in $(seq "$runs"); do
    db="warden_bench_$$_$i"
    psql "$admin" -qc "CREATE DATABASE $db"
    "$bin/warden-ca-bench" "${args[@]}" --json --database-url "$base/$db" >>"$out"
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  done
else
  echo "PostgreSQL: no server at $admin; PostgreSQL runs skipped" >&2
fi

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(rs, k): return statistics.median(r[k] for r in rs)
print(f"warden-ca CreateCertificate, {rows[0]['clients']} clients, medians of {len(rows)//max(1,len({r['backend'] for r in rows}))} runs each")
hdr = f"{'backend':<10} {'certs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CA µs/cert':>11} {'DB µs/cert':>11} {'batch':>6} {'ring s+v µs':>12} {'CA/ring':>8}"
print(hdr); print("-" * len(hdr))
for b in ("sqlite", "postgres"):
    rs = [r for r in rows if r["backend"] == b]
    if not rs: continue
    ca, ring = med(rs, "server_cpu_us_per_cert"), med(rs, "ring_sign_plus_verify_us")
    print(f"{b:<10} {med(rs,'certs_per_sec'):>8.0f} {med(rs,'p50_ms'):>7.2f} {med(rs,'p99_ms'):>7.2f} {ca:>11.1f} "
          f"{med(rs,'postgres_cpu_us_per_cert'):>11.1f} {med(rs,'mean_batch'):>6.1f} {ring:>12.1f} {ca/ring:>7.2f}x")
print("ring s+v: one core's ECDSA P-256 sign + verify (the cryptographic floor of one issuance).")
print("CA µs/cert: warden-ca's own CPU (user+sys, all threads) per issued certificate; DB: PostgreSQL's.")
PY
