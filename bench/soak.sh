#!/usr/bin/env bash
# Soak: mixed HTTP/1.1, HTTP/2, gRPC (tonic to grpcio) and TCP traffic through Warden
# proxies and Envoy (client and server sidecars, certificates over SDS) for SECONDS
# (default 1800), with 10-second certificates, an AuthorizationPolicy change every 10 s
# and a root rotation (prepare, activate, taint, revoke) 40% of the way through. The
# test is tests/tests/soak.rs (CI runs it for 120 s in debug); this runs its release
# build. Loopback only; about 90 requests/s, paced, so it can share a machine.
#
#   bench/soak.sh [SECONDS]
#
# Reports, and fails unless: requests allowed that should have been denied 0; allowed
# requests that failed 0; policy-flipping probes judged outside transition windows all
# right; the root rotation complete; every proxy and Envoy rotated its certificate at
# least every 10 s; and each process's resident memory after the run within
# max(20 MiB, 50%) of what it was after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
cargo build --release -q --workspace --bins
# The harness runs the binaries next to the test executable: target/release.
cargo test --release -q -p warden-tests --test soak --no-run
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
WARDEN_SOAK_SECONDS=$seconds cargo test --release -q -p warden-tests --test soak \
  -- --nocapture 2>&1 | tee "$out" || status=$?
python3 - "$out" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("SOAK-REPORT ")]
if not lines:
    sys.exit("no SOAK-REPORT line: the soak did not finish (its output is above)")
r = json.loads(lines[-1][len("SOAK-REPORT "):])
f, s = r["flip"], r["svid_rotations"]
print(f"warden soak: {r['seconds']:.0f} s, {r['requests']} requests ({r['requests_per_second']}/s)")
print(f"  allowed that should have been denied: {r['allowed_that_should_have_been_denied']}")
print(f"  allowed requests that failed:         {r['allowed_requests_failed']}")
print(f"  denials that came as errors:          {r['denials_with_errors']}")
print(f"  policy-flipping probes: {f['checked']} judged, {f['mismatched']} wrong, "
      f"{f['skipped_in_window']} skipped in transition windows")
print(f"  policy changes: {r['policy_changes']} (each applied by every proxy within "
      f"{r['policy_apply_ms']['max']} ms)")
print(f"  certificates: agent refreshed {s['agent_refreshes']:.0f} "
      f"({s['agent_refresh_failures']:.0f} failures), CA issued {s['ca_issued']:.0f}")
print("    taken by: " + ", ".join(f"proxy {k} {v}" for k, v in s["proxies"].items())
      + f", Envoy client {s['envoy_client']}, Envoy server {s['envoy_server']}")
steps = ", ".join(f"{x['step']} at {x['at_s']:.0f} s" for x in r["root_rotation"]["steps"])
print(f"  root rotations completed: {r['root_rotation']['completed']} ({steps})")
print("  memory, VmRSS MiB after warm-up -> end:")
for name, m in r["memory"].items():
    print(f"    {name:<24} {m['start_mib']:7.1f} -> {m['end_mib']:7.1f}  ({m['growth_mib']:+.1f})")
PY
exit "$status"
