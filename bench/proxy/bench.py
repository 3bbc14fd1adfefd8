#!/usr/bin/env python3
"""Proxy-pair benchmark driver for bench/proxy.sh (standard library only).

Starts warden-ca and warden-agent (two SPIFFE identities for this uid, over SDS and as
PEM files), nginx as the app on 127.0.0.3:8080, and then, one pair at a time, a client
proxy on 127.0.0.2 and a server proxy on 127.0.0.3 (mTLS, TLS 1.3, between them, one
worker thread each), and measures every pair in three scenarios:

  saturation  wrk -t1 -c$SAT_CONNS --latency, closed loop
  rate        bench/proxy/loadgen at $RATE req/s over $RATE_CONNS keep-alive
              connections, open loop, latency from the intended send time
  oneconn     wrk -t1 -c1 --latency, closed loop

Each (scenario, pair) gets freshly started proxies, a warm-up ($WARMUP s, same load)
and a measured run ($DURATION s). CPU per request per proxy is the process's
utime+stime delta (/proc/PID/stat, all threads) over the measured run divided by the
requests completed; peak RSS is VmHWM (/proc/PID/status) at the end of the run.

The script's wrapper (bench/proxy.sh) installs the tools and builds the binaries; this
file only runs them. Environment: see bench/proxy.sh.
"""

import ctypes
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "bench-proxy"


def env_num(name, default, kind=float):
    v = os.environ.get(name, "")
    try:
        return kind(v) if v else default
    except ValueError:
        sys.exit(f"bench/proxy: ${name}={v!r} is not a number")


DURATION = env_num("DURATION", 10)
WARMUP = env_num("WARMUP", 2)
RATE = env_num("RATE", 1000)
RATE_CONNS = env_num("RATE_CONNS", 16, int)
SAT_CONNS = env_num("SAT_CONNS", 32, int)
REPEAT = max(1, env_num("REPEAT", 1, int))
PIN = os.environ.get("PIN", "1") != "0"
KEEP = os.environ.get("KEEP", "0") == "1"
PAIRS = os.environ.get("PAIRS", "direct warden envoy haproxy").split()
SCENARIOS = os.environ.get("SCENARIOS", "saturation rate oneconn").split()
BIN_DIR = Path(os.environ.get("BIN_DIR", ROOT / "target" / "release"))
ENVOY = os.environ.get("ENVOY_BIN", "")
LOADGEN = Path(os.environ.get("LOADGEN_BIN", OUT / "loadgen"))
WARDEN_PROXY_SKIP = os.environ.get("WARDEN_PROXY_SKIP", "")  # reason, set by proxy.sh
# Traffic management in the Warden pair's config: 0 (none), or N VirtualServices (one
# for the benchmarked host, with a header rule that does not match before the route,
# and N-1 for other hosts), each with a DestinationRule; ENDPOINTS more WorkloadEntries
# of another service.
VIRTUAL_SERVICES = env_num("VIRTUAL_SERVICES", 0, int)
ENDPOINTS = env_num("ENDPOINTS", 0, int)

TD = "cluster.local"
NS = "bench"
CLIENT_ID = f"spiffe://{TD}/ns/{NS}/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/{NS}/sa/server"
CLIENT_IP, SERVER_IP = "127.0.0.2", "127.0.0.3"
APP_PORT = 8080
HOST = f"nginx.{NS}.svc.cluster.local:{APP_PORT}"
# Pair -> (client listener port, server listener port). Warden's are its defaults.
PORTS = {"warden": (15001, 15006), "envoy": (16001, 16006), "haproxy": (17001, 17006)}
PORTS["haproxy-log"] = PORTS["haproxy"]
# Telemetry variants of the Warden pair (issue 16), on Warden's ports, one after the
# other: metrics are always on (as Envoy's stats are); `log` adds the JSON access log to
# a file, `trace1`/`trace100` tracing at 1% / 100% sampling exported over OTLP/gRPC to
# bench's otlp_sink (on the load core), `all` both at 100%.
WARDEN_VARIANTS = {
    "warden-log": ["log"],
    # The access log in Istio's TEXT form (about a third of the JSON line's bytes).
    "warden-logtext": ["logtext"],
    "warden-trace1": ["trace1"],
    "warden-trace100": ["trace100"],
    "warden-all": ["log", "trace100"],
    # The same pair with another warden-proxy build (ALT_PROXY=path), to compare two
    # builds in one run: an optimization against its base, on the same machine state.
    "alt": ["alt"],
    "alt-log": ["alt", "log"],
}
ALT_PROXY = os.environ.get("ALT_PROXY", "")
for _v in WARDEN_VARIANTS:
    PORTS[_v] = PORTS["warden"]
OTLP_SINK = Path(os.environ.get("OTLP_SINK_BIN", OUT / "otlp_sink"))
OTLP_ADDR = "127.0.0.1:14317"
WARDEN_HEALTH_PORT = 15021

# CPU placement: load generator and app on one core, the two proxies on the other.
NCPU = os.cpu_count() or 1
LOAD_CPU, PROXY_CPU = ("0", "1") if NCPU >= 2 else ("0", "0")
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIO_TITLES = {
    "saturation": "saturation: wrk -t1 -c{c}, closed loop".format(c=SAT_CONNS),
    "rate": "fixed rate: {r:g} req/s open loop over {c} connections (latency from intended send time)".format(
        r=RATE, c=RATE_CONNS
    ),
    "oneconn": "one connection: wrk -t1 -c1, closed loop",
}


def say(msg):
    print(msg, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # PR_SET_PDEATHSIG: the child gets SIGKILL if this driver dies without cleaning up.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Procs:
    """Every process this driver starts, stopped by its own pid."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.live = []

    def start(self, name, argv, cpu=None, cwd=None):
        if cpu is not None and PIN:
            argv = ["taskset", "-c", cpu] + [str(a) for a in argv]
        log = self.logdir / f"{name}.log"
        f = open(log, "wb")
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        f.close()
        p.name = name
        p.log = log
        self.live.append(p)
        return p

    def stop(self, p, timeout=5):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            try:
                self.stop(p)
            except Exception:  # keep stopping the others
                pass


def log_tail(p, n=30):
    try:
        lines = p.log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def check_alive(p):
    if p.poll() is not None:
        raise BenchError(f"{p.name} exited ({p.returncode}); its log ({p.log}):\n{log_tail(p)}")


def wait_json_log(p, message, timeout=30):
    """Waits for a JSON log line of `p` whose message is `message`; returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        check_alive(p)
        for line in p.log.read_text(errors="replace").splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict) and (v.get("message") == message or v.get("fields", {}).get("message") == message):
                return {**v.get("fields", {}), **v}
        time.sleep(0.05)
    raise BenchError(f"{p.name}: no log line {message!r} within {timeout}s:\n{log_tail(p)}")


def run(argv, timeout=60, check=True):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def http_status(host, port, method="GET", path="/", timeout=2.0):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=b"x" if method == "POST" else None, headers={"Host": HOST})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_until(what, fn, timeout=30, procs=()):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        for p in procs:
            check_alive(p)
        try:
            if fn():
                return
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.05)
    logs = "".join(f"\n--- {p.name} ({p.log}):\n{log_tail(p)}" for p in procs)
    raise BenchError(f"{what} not ready within {timeout}s (last error: {last}){logs}")


# ---------------------------------------------------------------- /proc

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds():
    """CPU time all CPUs spent not idle, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def children_cpu_seconds():
    """CPU time of this driver's reaped children (wrk, loadgen)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------- identities

def start_identities(procs, d):
    uid = os.getuid()
    ca_dir = d / "ca"
    ca = procs.start(
        "warden-ca",
        [BIN_DIR / "warden-ca", "run", "--grpc-addr", "127.0.0.1:0", "--monitoring-addr", "127.0.0.1:0",
         "--log-format", "json", "--data-dir", ca_dir],
        cpu=LOAD_CPU,
    )
    v = wait_json_log(ca, "warden-ca serving")
    grpc_port = v["grpc_addr"].rsplit(":", 1)[1]
    admin = ["--admin-socket", ca_dir / "admin.sock"]
    warden = BIN_DIR / "warden"
    token = run([warden, *admin, "token", "create", "--node", "bench"]).stdout.strip().splitlines()[-1].strip()
    for sid in (CLIENT_ID, SERVER_ID):
        run([warden, *admin, "entry", "create", "--json", "--parent-id", f"spiffe://{TD}/warden/node/bench",
             "--spiffe-id", sid, "--selector", f"unix:uid:{uid}"])
    svids = d / "svids"
    agent = procs.start(
        "warden-agent",
        [BIN_DIR / "warden-agent", "run", "--ca-addr", f"https://localhost:{grpc_port}",
         "--ca-root", ca_dir / "root-cert.pem", "--data-dir", d / "agent", "--node-name", "bench",
         "--join-token", token, "--monitoring-addr", "127.0.0.1:0", "--sync-interval", "1s",
         "--write-dir", svids, "--log-format", "json"],
        cpu=LOAD_CPU,
    )
    v = wait_json_log(agent, "warden-agent serving")
    socket = v["socket"]
    mon_host, mon_port = v["monitoring_addr"].rsplit(":", 1)

    def ready():
        c = http.client.HTTPConnection(mon_host, int(mon_port), timeout=2)
        c.request("GET", "/ready")
        ok = c.getresponse().status == 200
        c.close()
        files = [svids / sid.split("/", 3)[3] / f for sid in (CLIENT_ID, SERVER_ID)
                 for f in ("cert-chain.pem", "key.pem", "root-cert.pem")]
        return ok and all(f.exists() for f in files)

    wait_until("warden-agent (ready, both SVIDs written)", ready, procs=[ca, agent])
    pem = {}
    for name, sid in (("client", CLIENT_ID), ("server", SERVER_ID)):
        sd = svids / sid.split("/", 3)[3]
        pem[name] = sd
    return socket, pem


# ---------------------------------------------------------------- the app

def start_nginx(procs, d):
    nd = d / "nginx"
    nd.mkdir()
    conf = nd / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
master_process off;
daemon off;
pid {nd}/nginx.pid;
error_log {nd}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {nd}/body;
    proxy_temp_path {nd}/proxy;
    fastcgi_temp_path {nd}/fastcgi;
    uwsgi_temp_path {nd}/uwsgi;
    scgi_temp_path {nd}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen {SERVER_IP}:{APP_PORT};
        location / {{
            default_type text/plain;
            return 200 "hello from nginx\\n";
        }}
    }}
}}
""")
    p = procs.start("nginx", ["nginx", "-p", nd, "-e", nd / "error.log", "-c", conf], cpu=LOAD_CPU)
    wait_until("nginx", lambda: http_status(SERVER_IP, APP_PORT) == 200, procs=[p])
    return p


# ---------------------------------------------------------------- Envoy pair

def sds(name):
    return ('{"name": "%s", "sds_config": {"api_config_source": {"api_type": "GRPC", "grpc_services": '
            '[{"envoy_grpc": {"cluster_name": "sds-grpc"}}], "set_node_on_first_message_only": true, '
            '"transport_api_version": "V3"}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}'
            % name)


def envoy_common(socket):
    return f"""
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe: {{ path: "{socket}" }}
"""


TLS13 = "tls_params: { tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }"


def hcm(stat_prefix, cluster, rbac=""):
    return f"""
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster}, timeout: 10s }}
          http_filters:{rbac}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


# Istio's translation of the AuthorizationPolicy below (ALLOW, principal, GET).
ENVOY_RBAC = f"""
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "ns[{NS}]-policy[allow-client]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - header: {{ name: ":method", string_match: {{ exact: "GET" }} }}
                    principals:
                    - and_ids:
                        ids:
                        - or_ids:
                            ids:
                            - authenticated: {{ principal_name: {{ exact: "{CLIENT_ID}" }} }}"""


def envoy_client_config(socket):
    out_port, in_port = PORTS["envoy"]
    return f"""node:
  id: sidecar~{CLIENT_IP}~client.{NS}~{NS}.svc.cluster.local
  cluster: client.{NS}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: outbound
    address:
      socket_address: {{ address: {CLIENT_IP}, port_value: {out_port} }}
    filter_chains:
    - filters:{hcm("outbound", "server")}
  clusters:{envoy_common(socket)}
  - name: server
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: server
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {SERVER_IP}, port_value: {in_port} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.{APP_PORT}_._.nginx.{NS}.svc.cluster.local
        common_tls_context:
          {TLS13}
          tls_certificate_sds_secret_configs:
          - {sds(CLIENT_ID)}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{SERVER_ID}" }}
            validation_context_sds_secret_config: {sds("ROOTCA")}
"""


def envoy_server_config(socket):
    _, in_port = PORTS["envoy"]
    return f"""node:
  id: sidecar~{SERVER_IP}~server.{NS}~{NS}.svc.cluster.local
  cluster: server.{NS}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: inbound
    address:
      socket_address: {{ address: {SERVER_IP}, port_value: {in_port} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {TLS13}
            tls_certificate_sds_secret_configs:
            - {sds(SERVER_ID)}
            validation_context_sds_secret_config: {sds("ROOTCA")}
      filters:{hcm("inbound", "app", ENVOY_RBAC)}
  clusters:{envoy_common(socket)}
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {SERVER_IP}, port_value: {APP_PORT} }}
"""


def start_envoy_pair(procs, d, ctx):
    pair = []
    for role, conf in (("server", envoy_server_config(ctx["socket"])), ("client", envoy_client_config(ctx["socket"]))):
        ed = d / f"envoy-{role}"
        ed.mkdir(exist_ok=True)
        for f in ed.iterdir():
            f.unlink()
        (ed / "envoy.yaml").write_text(conf)
        p = procs.start(
            f"envoy-{role}",
            [ENVOY, "-c", ed / "envoy.yaml", "--concurrency", "1", "--use-dynamic-base-id",
             "--base-id-path", ed / "base-id", "--admin-address-path", ed / "admin-address", "-l", "warn"],
            cpu=PROXY_CPU,
        )

        def ready(ed=ed):
            a = (ed / "admin-address").read_text().strip() if (ed / "admin-address").exists() else ""
            if not a:
                return False
            h, port = a.rsplit(":", 1)
            c = http.client.HTTPConnection(h, int(port), timeout=2)
            c.request("GET", "/ready")
            ok = c.getresponse().status == 200
            c.close()
            return ok

        wait_until(f"envoy {role} (/ready LIVE: SDS secrets received)", ready, procs=[p])
        pair.append(p)
    server, client = pair
    return client, server


# ---------------------------------------------------------------- HAProxy pair

def start_haproxy_pair(procs, d, ctx, log=False):
    out_port, in_port = PORTS["haproxy"]
    hd = d / "haproxy"
    hd.mkdir(exist_ok=True)
    pem = ctx["pem"]
    for role in ("client", "server"):
        (hd / f"{role}.pem").write_text(
            (pem[role] / "cert-chain.pem").read_text() + (pem[role] / "key.pem").read_text()
        )
    bundle = pem["server"] / "root-cert.pem"
    common = """global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
{log_global}defaults
    mode http
{log_defaults}    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
"""
    # haproxy-log: HAProxy's own access log (`option httplog`, a line per request) on
    # its standard output, which the bench sends to a file, as Warden's goes to one.
    common = common.format(
        log_global="    log stdout format raw local0\n" if log else "",
        log_defaults="    log global\n    option httplog\n" if log else "",
    )
    (hd / "server.cfg").write_text(common + f"""
frontend inbound
    bind {SERVER_IP}:{in_port} ssl crt {hd}/server.pem ca-file {bundle} verify required ssl-min-ver TLSv1.3
    default_backend app
backend app
    http-reuse always
    server app {SERVER_IP}:{APP_PORT}
""")
    # verify required + ca-file: the server's chain must lead to the Warden bundle. No
    # hostname/SAN check: the SVIDs have only a URI SAN, which verifyhost cannot match.
    (hd / "client.cfg").write_text(common + f"""
frontend outbound
    bind {CLIENT_IP}:{out_port}
    default_backend server
backend server
    http-reuse always
    server server {SERVER_IP}:{in_port} ssl crt {hd}/client.pem ca-file {bundle} verify required ssl-min-ver TLSv1.3
""")
    server = procs.start("haproxy-server", ["haproxy", "-db", "-f", hd / "server.cfg"], cpu=PROXY_CPU)
    client = procs.start("haproxy-client", ["haproxy", "-db", "-f", hd / "client.cfg"], cpu=PROXY_CPU)
    return client, server


# ---------------------------------------------------------------- Warden pair

WARDEN_YAML = f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  namespace: {NS}
spec:
  address: {CLIENT_IP}
  labels:
    app: client
  serviceAccount: client
  ports:
    http: {APP_PORT}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: server
  namespace: {NS}
spec:
  address: {SERVER_IP}
  labels:
    app: nginx
  serviceAccount: server
  ports:
    http: {APP_PORT}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: nginx
  namespace: {NS}
spec:
  hosts:
  - nginx.{NS}.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {APP_PORT}
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: nginx
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-client
  namespace: {NS}
spec:
  selector:
    matchLabels:
      app: nginx
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["{TD}/ns/{NS}/sa/client"]
    to:
    - operation:
        methods: ["GET"]
"""


def routes_yaml(n, endpoints):
    """n VirtualServices and DestinationRules (the first for the benchmarked host) and
    `endpoints` WorkloadEntries of a filler service."""
    docs = []
    for i in range(n):
        host = "nginx" if i == 0 else f"svc{i}"
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}, namespace: {NS}}}
spec:
  hosts: [{host}.{NS}.svc.cluster.local]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: {host}.{NS}.svc.cluster.local, subset: v2}}
  - route:
    - destination: {{host: {host}.{NS}.svc.cluster.local, subset: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}, namespace: {NS}}}
spec:
  host: {host}.{NS}.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{app: {host}}}}}
  - {{name: v2, labels: {{version: v2}}}}
""")
    if endpoints:
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: filler, namespace: {NS}}}
spec:
  hosts: [filler.{NS}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {APP_PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: filler}}}}
""")
        for i in range(endpoints):
            docs.append(f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: filler-{i}, namespace: {NS}}}
spec:
  address: 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}
  labels: {{app: filler}}
  serviceAccount: filler
""")
    return "---\n".join(docs)


def start_warden_pair(procs, d, ctx, telemetry=()):
    cd = d / "warden-config"
    cd.mkdir(exist_ok=True)
    (cd / "bench.yaml").write_text(WARDEN_YAML)
    if VIRTUAL_SERVICES or ENDPOINTS:
        started = time.monotonic()
        (cd / "routes.yaml").write_text(routes_yaml(VIRTUAL_SERVICES, ENDPOINTS))
        say(f"warden: {VIRTUAL_SERVICES} VirtualServices, {ENDPOINTS} extra endpoints "
            f"(written in {time.monotonic() - started:.1f} s)")
    out_port = PORTS["warden"][0]  # inbound: the default 15006, which peers also assume
    extra = []
    if "trace1" in telemetry or "trace100" in telemetry:
        procs.start("otlp-sink", [OTLP_SINK, OTLP_ADDR], cpu=LOAD_CPU)
        extra += ["--tracing-otlp-endpoint", f"http://{OTLP_ADDR}",
                  "--tracing-sampling", "1" if "trace1" in telemetry else "100"]
    proxy_bin = BIN_DIR / "warden-proxy"
    if "alt" in telemetry:
        if not ALT_PROXY:
            raise SystemExit("the alt pairs need ALT_PROXY=path/to/warden-proxy")
        proxy_bin = Path(ALT_PROXY)
    pair = {}
    for role in ("server", "client"):
        args = list(extra)
        if "log" in telemetry or "logtext" in telemetry:
            encoding = "TEXT" if "logtext" in telemetry else "JSON"
            args += ["--access-log-file", d / f"access-{role}.log", "--access-log-encoding", encoding]
        pair[role] = procs.start(
            f"warden-proxy-{role}",
            [proxy_bin, "run", "--config-dir", cd, "--workload", role, "--namespace", NS,
             "--sds-socket", ctx["socket"], "--trust-domain", TD,
             "--outbound-port", out_port, "--health-port", WARDEN_HEALTH_PORT, "--concurrency", "1",
             "--log-format", "json", *args],
            cpu=PROXY_CPU,
        )
    for role, ip in (("server", SERVER_IP), ("client", CLIENT_IP)):
        wait_until(f"warden-proxy {role} (GET http://{ip}:{WARDEN_HEALTH_PORT}/ready)",
                   lambda ip=ip: http_status(ip, WARDEN_HEALTH_PORT, path="/ready") == 200,
                   procs=[pair["client"], pair["server"]])
    return pair["client"], pair["server"]


PAIR_START = {"warden": start_warden_pair, "envoy": start_envoy_pair, "haproxy": start_haproxy_pair,
              "haproxy-log": lambda procs, d, ctx: start_haproxy_pair(procs, d, ctx, log=True)}
for _v, _t in WARDEN_VARIANTS.items():
    PAIR_START[_v] = lambda procs, d, ctx, _t=tuple(_t): start_warden_pair(procs, d, ctx, _t)


def target_of(pair):
    if pair == "direct":
        return SERVER_IP, APP_PORT
    return CLIENT_IP, PORTS[pair][0]


# ---------------------------------------------------------------- load

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out):
    def dur(s):
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
        if not m:
            raise BenchError(f"wrk: cannot parse duration {s!r}:\n{out}")
        return float(m.group(1)) * UNIT[m.group(2)]

    r = {}
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        if not m:
            raise BenchError(f"wrk: no {p}% latency in its output:\n{out}")
        r[f"p{p}_ms"] = dur(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if not m:
        raise BenchError(f"wrk: no request count in its output:\n{out}")
    r["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


def load(scenario, pair, seconds):
    host, port = target_of(pair)
    secs = max(1, int(round(seconds)))
    if scenario in ("saturation", "oneconn"):
        conns = SAT_CONNS if scenario == "saturation" else 1
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", "--latency",
                "-H", f"Host: {HOST}", f"http://{host}:{port}/"]
        if PIN:
            argv = ["taskset", "-c", LOAD_CPU] + argv
        r = run(argv, timeout=secs + 60)
        res = parse_wrk(r.stdout)
        res["tool"] = "wrk"
        res["raw"] = r.stdout
        return res
    if scenario == "rate":
        argv = [LOADGEN, "--addr", f"{host}:{port}", "--host", HOST, "--rate", RATE,
                "--conns", RATE_CONNS, "--duration", seconds]
        if PIN:
            argv = ["taskset", "-c", LOAD_CPU] + argv
        r = run(argv, timeout=seconds + 60)
        res = json.loads(r.stdout)
        res["tool"] = "loadgen"
        return res
    raise BenchError(f"unknown scenario {scenario!r} (known: saturation rate oneconn)")


# ---------------------------------------------------------------- one measurement

def measure(procs, d, ctx, scenario, pair):
    proxies = ()
    already = list(procs.live)
    try:
        if pair != "direct":
            proxies = PAIR_START[pair](procs, d, ctx)
            host, port = target_of(pair)
            wait_until(f"{pair} pair (GET through it answers 200)",
                       lambda: http_status(host, port) == 200, procs=list(proxies))
        host, port = target_of(pair)
        # The policy in force: a POST is not allowed (403) where a policy is enforced.
        post_status = http_status(host, port, "POST")
        if WARMUP > 0:
            load(scenario, pair, WARMUP)
        nginx = ctx["nginx"].pid
        before = [cpu_seconds(p.pid) for p in proxies]
        ours0 = cpu_seconds(nginx) + children_cpu_seconds()
        busy0 = system_busy_seconds()
        t = time.time()
        res = load(scenario, pair, DURATION)
        res["wall_s"] = time.time() - t
        busy1 = system_busy_seconds()
        after = [cpu_seconds(p.pid) for p in proxies]
        ours1 = cpu_seconds(nginx) + children_cpu_seconds()
        # CPU that neither the pair, nor nginx, nor the load generator used during the
        # run: other processes on the machine (noise), plus this driver and the idle
        # CA and agent.
        res["load_side_cpu_s"] = ours1 - ours0
        other = (busy1 - busy0) - (ours1 - ours0) - sum(a - b for a, b in zip(after, before))
        res["other_cpu_cores"] = max(0.0, other) / res["wall_s"]
        for p in proxies:
            check_alive(p)
        res["post_status"] = post_status
        n = res["requests"]
        if proxies:
            client, server = proxies
            res["cpu_s"] = {"client": after[0] - before[0], "server": after[1] - before[1]}
            res["cpu_us_per_req"] = {k: (v * 1e6 / n if n else None) for k, v in res["cpu_s"].items()}
            res["peak_rss_mib"] = {"client": peak_rss_mib(client.pid), "server": peak_rss_mib(server.pid)}
        return res
    finally:
        # The pair's processes, also those of a pair that failed half-way.
        for p in reversed([p for p in procs.live if p not in already]):
            procs.stop(p)


def measure_repeated(procs, d, ctx, scenario, pair):
    """REPEAT measurements; the median one (by req/s, or p50 at a fixed rate) with
    all of them under "runs"."""
    runs = [measure(procs, d, ctx, scenario, pair) for _ in range(REPEAT)]
    if REPEAT == 1:
        return runs[0]
    key = (lambda r: r["p50_ms"]) if scenario == "rate" else (lambda r: r["rps"] or 0)
    chosen = dict(sorted(runs, key=key)[len(runs) // 2])
    chosen["runs"] = [{k: v for k, v in r.items() if k != "raw"} for r in runs]
    return chosen


# ---------------------------------------------------------------- report

def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def table(scenario, rows):
    direct = rows.get("direct", {})
    warden = rows.get("warden", {})
    w_ok = "rps" in warden
    head = ["pair", "req/s", "p50 ms", "p90 ms", "p99 ms", "+p50 ms", "CPU µs/req c/s", "peak RSS MiB c/s",
            "Warden÷row req/s", "row÷Warden CPU", "POST"]
    lines = []
    for pair in PAIRS:
        r = rows.get(pair)
        if r is None:
            continue
        if "error" in r:
            what = "skipped" if r["error"].startswith("skipped") else "FAILED (see above)"
            lines.append([pair, what] + [""] * (len(head) - 2))
            continue
        cpu = r.get("cpu_us_per_req")
        rss = r.get("peak_rss_mib")
        added = r["p50_ms"] - direct["p50_ms"] if "p50_ms" in direct and pair != "direct" else None
        tot = lambda x: x["client"] + x["server"] if x else None
        # At a fixed rate every pair carries the same load: no throughput ratio there.
        thr_ratio = (warden["rps"] / r["rps"]
                     if w_ok and r.get("rps") and pair != "direct" and scenario != "rate" else None)
        cpu_ratio = (tot(cpu) / tot(warden["cpu_us_per_req"])
                     if w_ok and cpu and warden.get("cpu_us_per_req") else None)
        lines.append([
            pair, fmt(r.get("rps"), "{:,.0f}"), fmt(r["p50_ms"], "{:.3f}"), fmt(r["p90_ms"], "{:.3f}"),
            fmt(r["p99_ms"], "{:.3f}"), fmt(added, "{:+.3f}"),
            f"{cpu['client']:.1f} / {cpu['server']:.1f}" if cpu else "-",
            f"{rss['client']:.1f} / {rss['server']:.1f}" if rss else "-",
            fmt(thr_ratio, "{:.2f}x"), fmt(cpu_ratio, "{:.2f}x"), str(r.get("post_status", "-")),
        ])
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    out = [f"\n== {SCENARIO_TITLES.get(scenario, scenario)}"]
    for row in [head] + lines:
        out.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    notes = []
    for pair in PAIRS:
        r = rows.get(pair, {})
        if r.get("errors") or r.get("non_2xx"):
            notes.append(f"  ! {pair}: {r.get('errors', 0)} socket errors, {r.get('non_2xx', 0)} non-2xx responses")
        if (r.get("other_cpu_cores") or 0) > 0.15:
            notes.append(f"  ! {pair}: other processes kept {r['other_cpu_cores']:.2f} cores busy during the run (noise)")
        if r.get("tool") == "loadgen" and (r.get("send_lag_p99_ms") or 0) > 1.0:
            notes.append(f"  ! {pair}: the load generator sent late (p99 {r['send_lag_p99_ms']:.2f} ms)")
    return "\n".join(out + notes)


LEGEND = """
+p50: the row's p50 minus direct's p50 in the same scenario. CPU: utime+stime of the
client / server proxy process over the measured run, per request. Peak RSS: VmHWM.
Warden÷row req/s: Warden's throughput over the row's; row÷Warden CPU: the row's
client+server CPU per request over Warden's. POST: status of a POST through the pair
(403 = the ALLOW-GET-from-client policy is enforced; HAProxy has no RBAC)."""


def versions():
    v = {}
    for name, argv in (("wrk", ["wrk", "-v"]), ("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]),
                       ("envoy", [ENVOY, "--version"])):
        try:
            r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            v[name] = next((l.strip() for l in text if l.strip()), "")
        except (OSError, subprocess.TimeoutExpired) as e:
            v[name] = f"unavailable: {e}"
    return v


def main():
    missing = [str(p) for p in (BIN_DIR / "warden-ca", BIN_DIR / "warden-agent", BIN_DIR / "warden", LOADGEN)
               if not Path(p).exists()]
    if "envoy" in PAIRS and not (ENVOY and Path(ENVOY).exists()):
        missing.append(f"envoy ({ENVOY or '$ENVOY_BIN unset'})")
    for tool in ("wrk", "nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None and (tool != "haproxy" or "haproxy" in PAIRS):
            missing.append(tool)
    if missing:
        sys.exit("bench/proxy: missing: " + ", ".join(missing) + " (run bench/proxy.sh, which installs/builds them)")
    pairs = list(PAIRS)
    skipped = {}
    for w in [p for p in pairs if p == "warden" or p in WARDEN_VARIANTS]:
        if WARDEN_PROXY_SKIP or not (BIN_DIR / "warden-proxy").exists():
            skipped[w] = WARDEN_PROXY_SKIP or f"{BIN_DIR / 'warden-proxy'} not built"
    d = Path(tempfile.mkdtemp(prefix="warden-bench-proxy-"))
    logdir = d / "logs"
    logdir.mkdir()
    procs = Procs(logdir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {s: {} for s in SCENARIOS}
    failed = False
    try:
        load1 = os.getloadavg()[0]
        if load1 > 0.5:
            say(f"   ! load average {load1:.2f} before the start: other work on this machine will add noise")
        say(f"== setup in {d}: warden-ca, warden-agent ({CLIENT_ID}, {SERVER_ID}), nginx on {SERVER_IP}:{APP_PORT}")
        if PIN:
            say(f"   CPU {LOAD_CPU}: load generator, nginx, CA, agent; CPU {PROXY_CPU}: both proxies of the pair")
        else:
            say("   PIN=0: no CPU pinning")
        socket, pem = start_identities(procs, d)
        ctx = {"socket": socket, "pem": pem}
        ctx["nginx"] = start_nginx(procs, d)
        for pair, why in skipped.items():
            say(f"   skipping the Warden pair: {why}")
        for scenario in SCENARIOS:
            say(f"\n-- {SCENARIO_TITLES.get(scenario, scenario)}; warm-up {WARMUP:g} s, measured {DURATION:g} s")
            for pair in pairs:
                if pair in skipped:
                    results[scenario][pair] = {"error": f"skipped: {skipped[pair]}"}
                    continue
                say(f"   {pair} ...")
                try:
                    results[scenario][pair] = measure_repeated(procs, d, ctx, scenario, pair)
                    r = results[scenario][pair]
                    say(f"   {pair}: {r.get('rps') or 0:,.0f} req/s, p50 {r['p50_ms']:.3f} ms, "
                        f"POST -> {r['post_status']}, other load {r['other_cpu_cores']:.2f} cores")
                except (BenchError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                    failed = True
                    results[scenario][pair] = {"error": str(e)}
                    say(f"   {pair} FAILED: {e}")
        for scenario in SCENARIOS:
            say(table(scenario, results[scenario]))
        say(LEGEND)
    except BenchError as e:
        failed = True
        say(f"\nbench/proxy: {e}")
    finally:
        procs.stop_all()
        doc = {
            "started": started.isoformat(),
            "machine": {"cpus": NCPU, "kernel": platform.release(), "pin": PIN,
                        "load_cpu": LOAD_CPU if PIN else None, "proxy_cpu": PROXY_CPU if PIN else None},
            "config": {"duration_s": DURATION, "warmup_s": WARMUP, "rate": RATE, "rate_conns": RATE_CONNS,
                       "sat_conns": SAT_CONNS, "repeat": REPEAT, "pairs": PAIRS, "scenarios": SCENARIOS, "host": HOST,
                       "virtual_services": VIRTUAL_SERVICES, "endpoints": ENDPOINTS},
            "versions": versions(),
            "results": results,
            "workdir": str(d) if KEEP else None,
        }
        OUT.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        path = OUT / f"results-{stamp}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        shutil.copyfile(path, OUT / "latest.json")
        say(f"\nraw results: {path} (and {OUT / 'latest.json'})")
        if KEEP or failed:
            say(f"work dir and logs kept: {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
