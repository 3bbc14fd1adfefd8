#!/usr/bin/env bash
# CreateCertificate with the CA's signing key in a PKCS#11 token (SoftHSM) beside the
# same intermediate with its key in memory, in one run: warden-ca-bench against
# `--plugin-certs DIR` and against `--plugin-certs DIR --ca-key-uri pkcs11:...`. Each
# runs $RUNS times (default 3), alternating; the table shows medians and the ratio.
# Loopback only; SoftHSM's token directory is a temp dir of this script's.
#
#   bench/ca-hsm.sh [--clients N] [--duration 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found (apt-get install softhsm2)" >&2; exit 1; }
module=/usr/lib/softhsm/libsofthsm2.so
cargo build --release -q -p warden-ca --bins -p warden-ctl
bin=$PWD/target/release
runs=${RUNS:-3}
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--clients 32 --duration 10s)
work=$(mktemp -d)
trap 'kill "${root_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A token of our own.
export SOFTHSM2_CONF=$work/softhsm2.conf
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label warden --pin 1234 --so-pin 5678 >/dev/null

# An intermediate from a root CA; its key copied into the token.
"$bin/warden-ca" run --data-dir "$work/root" --grpc-addr 127.0.0.1:0 --monitoring-addr 127.0.0.1:0 2>"$work/root.log" &
root_pid=$!
for _ in $(seq 100); do [ -S "$work/root/admin.sock" ] && break; sleep 0.1; done
"$bin/warden" --admin-socket "$work/root/admin.sock" ca intermediate --cluster bench --out "$work/mem" >/dev/null
kill "$root_pid"; wait "$root_pid" 2>/dev/null || true
softhsm2-util --import "$work/mem/ca-key.pem" --token warden --label ca-key --id 01 --pin 1234 >/dev/null
mkdir -p "$work/hsm"
cp "$work/mem/ca-cert.pem" "$work/mem/cert-chain.pem" "$work/mem/root-cert.pem" "$work/hsm/"
printf '1234' >"$work/pin"; chmod 600 "$work/pin"
uri="pkcs11:token=warden;object=ca-key?module-path=$module&pin-source=file:$work/pin"

out=$work/out.jsonl
for i in $(seq "$runs"); do
  "$bin/warden-ca-bench" "${args[@]}" --json --ca-arg=--plugin-certs="$work/mem" | sed 's/^{/{"key":"memory",/' >>"$out"
  "$bin/warden-ca-bench" "${args[@]}" --json --ca-arg=--plugin-certs="$work/hsm" --ca-arg=--ca-key-uri="$uri" | sed 's/^{/{"key":"softhsm",/' >>"$out"
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(k, key): return statistics.median(r[k] for r in rows if r["key"] == key)
n = sum(1 for r in rows if r["key"] == "memory")
print(f"warden-ca CreateCertificate, key in memory vs in SoftHSM, {rows[0]['clients']} clients, medians of {n} runs")
hdr = f"{'key':<9} {'certs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CA µs/cert':>11}"
print(hdr); print("-" * len(hdr))
for k in ("memory", "softhsm"):
    print(f"{k:<9} {med('certs_per_sec',k):>8.0f} {med('p50_ms',k):>7.2f} {med('p99_ms',k):>7.2f} {med('server_cpu_us_per_cert',k):>11.1f}")
print(f"softhsm/memory: {med('certs_per_sec','softhsm')/med('certs_per_sec','memory'):.2f}x certificates/s")
print("CA µs/cert counts warden-ca's own CPU, SoftHSM's signing included (it runs in the CA's process).")
PY
