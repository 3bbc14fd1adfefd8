#!/usr/bin/env bash
# Node agent benchmark (release build, loopback only, about two minutes):
#  1. scale: N identities (default 1000) in node mode, one `socket:wI` entry and socket
#     each, N SDS streams (one per socket, watching default+ROOTCA and ACKing like
#     Envoy); the agent's RSS and CPU idle, with the streams, and over one full
#     rotation wave (TTL default 60s: every SVID refreshed and pushed once);
#  2. rotation to Envoy: Envoy 1.40 (.venv, installed by ./test.sh) on the agent's
#     SDS with 2-second SVIDs; for each rotation, the time from the agent receiving
#     the new SVID from the CA to Envoy's admin /certs showing it (median of R).
#
#   bench/agent.sh [N] [TTL_SECONDS] [ROTATIONS]     # defaults: 1000 60 30
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p warden-ca -p warden-agent -p warden-ctl -p warden-tests --bins
exec target/release/warden-agent-bench "${1:-1000}" "${2:-60}" "${3:-30}"
