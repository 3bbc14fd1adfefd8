"""Regenerates the seed corpora of the issue-17 second-part targets: join_token,
create_certificate, xfcc, http1_head, admin_api, sds_request and workload_api.
Protobuf is encoded by hand (the few fields the targets read); certificates and CSRs
come from Python's `cryptography`; JWT-SVIDs are signed with
policy/tests/data/jwt/rsa-2048.pem (openssl), the key behind FUZZ_JWKS.
Usage: python3 fuzz/make_seeds.py   (writes fuzz/corpus/<target>/)"""
import base64, datetime, json, os, struct, subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = os.path.join(HERE, "../policy/tests/data/jwt/rsa-2048.pem")


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= 4096, (target, name, len(data))
    open(os.path.join(d, name), "wb").write(data)


# --- protobuf, by hand -------------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field, n):
    return varint(field << 3) + varint(n)


def value(v):
    """google.protobuf.Value"""
    if v is None:
        return vi(1, 0)
    if isinstance(v, bool):
        return vi(4, int(v))
    if isinstance(v, (int, float)):
        return varint(2 << 3 | 1) + struct.pack("<d", float(v))
    if isinstance(v, str):
        return ld(3, v)
    if isinstance(v, dict):
        return ld(5, pb_struct(v))
    if isinstance(v, list):
        return ld(6, b"".join(ld(1, value(x)) for x in v))
    raise TypeError(v)


def pb_struct(d):
    return b"".join(ld(1, ld(1, k) + ld(2, value(v))) for k, v in d.items())


# --- certificates and CSRs ---------------------------------------------------------
def csr_pem(spiffe_id, extra_dns=None):
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.UniformResourceIdentifier(spiffe_id)]
    if extra_dns:
        sans.append(x509.DNSName(extra_dns))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def cert_der(subject, uris=(), dns=()):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, v) for oid, v in subject])
    now = datetime.datetime(2025, 1, 1)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway client CA")]))
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
    )
    sans = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# --- JWTs --------------------------------------------------------------------------
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, kid="fuzz-rsa", alg="RS256"):
    h = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    if alg == "none":
        return h + "." + p + "."
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=(h + "." + p).encode(),
                         capture_output=True, check=True).stdout
    return h + "." + p + "." + b64(sig)


TD = "spiffe://cluster.local"
HTTPBIN = TD + "/ns/default/sa/httpbin"
SLEEP = TD + "/ns/default/sa/sleep"
WEB = TD + "/ns/default/sa/web"
DB = TD + "/ns/default/sa/db"
ADMIN = TD + "/ns/default/sa/admin"

# --- join_token --------------------------------------------------------------------
tok = "wjt_" + "3f" * 32
for name, v in {
    "join-token": "Bearer " + tok,
    "join-token-lowercase-scheme-blanks": "bearer   " + tok + " \t",
    "jwt": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    "empty-token": "Bearer    ",
    "basic": "Basic dXNlcjpwYXNz",
    "upper-case-scheme": "BEARER " + tok,
    "upper-case-prefix": "Bearer WJT_" + "ab" * 32,
    "tab-after-scheme": "Bearer\t" + tok,
    "prefix-only": "Bearer wjt_",
    "nul": "Bearer wjt_\x00" + "00" * 31,
    "percent-nul": "Bearer wjt_%00%0a",
    "utf8": "Bearer wjt_\u00e9t\u00e9",
    "oversized": "Bearer wjt_" + "a" * 3500,
}.items():
    write("join_token", name, v)

# --- create_certificate ------------------------------------------------------------
own = open(os.path.join(HERE, "corpus/csr/ec-p256-spiffe.pem")).read()
sleep_csr = csr_pem(SLEEP)


def ccr(csr=own, validity=None, metadata=None):
    m = ld(1, csr)
    if validity is not None:
        m += vi(3, validity)
    if metadata is not None:
        m += ld(4, pb_struct(metadata))
    return m


for name, v in {
    "own-identity": ccr(validity=3600),
    "default-validity-empty-metadata": ccr(metadata={}),
    "impersonation": ccr(csr=sleep_csr, metadata={"ImpersonatedIdentity": SLEEP}),
    "impersonation-of-itself": ccr(metadata={"ImpersonatedIdentity": HTTPBIN}),
    "impersonation-not-a-string": ccr(metadata={"ImpersonatedIdentity": 7}),
    "impersonation-null": ccr(metadata={"ImpersonatedIdentity": None}),
    "impersonation-foreign-td": ccr(csr=sleep_csr, metadata={"ImpersonatedIdentity": "spiffe://other.td/ns/x/sa/y"}),
    "cert-signer": ccr(metadata={"CertSigner": "external-ca"}),
    "cert-signer-empty": ccr(metadata={"CertSigner": "", "ClusterID": "Kubernetes"}),
    "validity-max-i64": ccr(validity=(1 << 63) - 1),
    "validity-min-i64": ccr(validity=-(1 << 63)),
    "validity-90-days-and-1s": ccr(validity=90 * 86400 + 1),
    "csr-of-another-identity": ccr(csr=sleep_csr),
    "csr-extra-dns-san": ccr(csr=csr_pem(HTTPBIN, extra_dns="httpbin.default.svc")),
    "csr-two-blocks": ccr(csr=own + own),
    "csr-garbage": ccr(csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\x00====\n-----END CERTIFICATE REQUEST-----\n"),
    "csr-empty": ccr(csr=""),
}.items():
    write("create_certificate", name, v)

# --- xfcc: even first byte, a client certificate; odd, forwarded XFCC lines ---------
C, O = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME
for name, der in {
    "cert-spiffe": cert_der([(C, "client"), (O, "example")], uris=[TD + "/ns/default/sa/client"]),
    "cert-dns-only": cert_der([(C, "shop.example.com")], dns=["shop.example.com", "www.shop.example.com"]),
    "cert-no-san": cert_der([(C, "plain")]),
    "cert-quoted-subject": cert_der([(C, 'a "quoted" name'), (O, "x, y; z=1")], uris=["https://example.com/a"]),
    "cert-backslash-subject": cert_der([(C, "ends with a backslash\\")], dns=["a.example"]),
    "cert-utf8-subject": cert_der([(C, "Jos\u00e9")], uris=[TD + "/ns/a/sa/b"]),
    "cert-dns-with-comma": cert_der([(C, "c")], dns=["a.example,By=" + TD + "/ns/x/sa/admin"]),
    "cert-uri-with-semicolon": cert_der([(C, "c")], uris=[TD + "/ns/a/sa/b;URI=" + TD + "/ns/x/sa/admin"]),
}.items():
    write("xfcc", name, b"\x00" + der)
write("xfcc", "not-a-certificate", b"\x00\x30\x82\xff\xff\x00")
for name, lines in {
    "forwarded-one": ["By=" + TD + "/ns/foo/sa/httpbin;Hash=abc;Subject=\"\";URI=" + TD + "/ns/bar/sa/sleep"],
    "forwarded-two-lines-and-empty": ["By=spiffe://a/x;URI=spiffe://b/y", "", "Hash=01;DNS=c.example"],
    "forwarded-quoted": ['Subject="CN=a, O=\\"b\\";c";URI=spiffe://a/b'],
    "forwarded-open-quote": ['Subject="CN=never closed;URI=spiffe://evil/x'],
    "forwarded-obs-text": ["By=spiffe://a/\xff\xfe;Hash=00"],
}.items():
    write("xfcc", name, b"\x01" + "\n".join(lines).encode("latin-1"))

# --- http1_head: first byte = settings (bits 0-1 normalization, 2 TLS, 3 HTTP/1.0,
# 4 inbound XFCC element, 5 HTTP/2 upstream), then the client's bytes ---------------
H = "Host: httpbin.foo:8000\r\n"
for name, (flags, raw) in {
    "get": (0x01, "GET /api/v1/items?x=1&y=%2F HTTP/1.1\r\n" + H + "User-Agent: curl/8\r\nAccept: */*\r\n\r\n"),
    "dot-segments-decode-merge": (0x03, "GET //a/./b/../%2e%2E/c%2F%2fd;x=1/..;/e?q=%2F#frag HTTP/1.1\r\n" + H + "\r\n"),
    "absolute-form-h2-upstream": (0x21, "GET http://httpbin.foo:8000/a/../b?c HTTP/1.1\r\nHost: other.example\r\n\r\n"),
    "connection-nominated": (0x01, "GET / HTTP/1.1\r\n" + H + "Connection: keep-alive, X-Secret, te, host\r\nX-Secret: 1\r\nTE: trailers, deflate\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n"),
    "websocket": (0x11, "GET /ws HTTP/1.1\r\n" + H + "Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
    "h2c-upgrade": (0x01, "GET / HTTP/1.1\r\n" + H + "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    "other-upgrade": (0x01, "GET / HTTP/1.1\r\n" + H + "Upgrade: spdy/3\r\nConnection: upgrade\r\n\r\n"),
    "chunked-post-pipelined": (0x05, "POST /upload HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n" + H + "\r\n"),
    "gzip-chunked": (0x01, "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    "control-headers-and-xfcc": (0x15, "GET / HTTP/1.1\r\n" + H + "X-Envoy-Internal: true\r\nx-envoy-retry-on: 5xx\r\nx-envoy-original-url: /admin\r\nX-Forwarded-Proto: https\r\nx-forwarded-client-cert: By=spiffe://evil/x;URI=spiffe://evil/y\r\nx-forwarded-client-cert: \r\n\r\n"),
    "http10-no-host": (0x09, "GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n"),
    "http10-refused": (0x01, "GET /old HTTP/1.0\r\n\r\n"),
    "nul-in-path": (0x01, "GET /a%00b HTTP/1.1\r\n" + H + "\r\n"),
    "obs-text-host": (0x01, "GET / HTTP/1.1\r\nHost: httpbin.foo\xff\r\n\r\n"),
    "two-hosts": (0x01, "GET / HTTP/1.1\r\n" + H + H + "\r\n"),
    "host-two-colons-h2-upstream": (0x21, "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"),
    "lower-case-method": (0x01, "get / HTTP/1.1\r\n" + H + "\r\n"),
    "connect": (0x01, "CONNECT httpbin.foo:443 HTTP/1.1\r\nHost: httpbin.foo:443\r\n\r\n"),
    "asterisk": (0x01, "OPTIONS * HTTP/1.1\r\n" + H + "\r\n"),
    "oversized-header": (0x02, "GET / HTTP/1.1\r\n" + H + "X-Big: " + "A" * 3500 + "\r\n\r\n"),
}.items():
    write("http1_head", name, bytes([flags]) + raw.encode("latin-1"))

# --- admin_api: one connection to the admin port --------------------------------------
def req(method, target):
    return f"{method} {target} HTTP/1.1\r\nHost: 10.0.0.5:15000\r\n\r\n"


for name, raw in {
    "index-and-stats": req("GET", "/") + req("HEAD", "/stats?format=prometheus") + req("GET", "/stats"),
    "config-dump-certs-ready": req("GET", "/config_dump?include_eds") + req("GET", "/certs") + req("GET", "/healthz/ready"),
    "set-debug": req("POST", "/logging?level=debug"),
    "set-filter-encoded": req("POST", "/logging?x=1&level=warden_proxy%3Ddebug%2Cinfo+&level=trace"),
    "set-empty": req("POST", "/logging?level=") + req("POST", "/logging"),
    "set-invalid-utf8": req("POST", "/logging?level=%ff%fe"),
    "set-percent-sign": req("POST", "/logging?level=%+1%-f%zz%4"),
    "set-field-regex": req("POST", "/logging?level=%5B%7Bx%3D%5Cw%7B40%7D%7D%5D%3Dtrace"),
    "set-bad-filter": req("POST", "/logging?level=warden_proxy%3Dloud"),
    "wrong-methods": req("DELETE", "/logging") + req("PUT", "/stats") + req("POST", "/certs") + req("GET", "/nope") + req("GET", "/logging/../logging"),
}.items():
    write("admin_api", name, raw)

# --- sds_request: length-delimited DiscoveryRequests of one stream ---------------------
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
node = ld(1, "sidecar~10.0.0.5~httpbin-1.default~default.svc.cluster.local") + ld(2, "httpbin.default") + ld(
    3, pb_struct({"ISTIO_VERSION": "1.24.0", "CLUSTER_ID": "Kubernetes", "LABELS": {"app": "httpbin"}}))


def dreq(names=(), nonce="", type_url=SECRET, error=None, with_node=False):
    m = b""
    if with_node:
        m += ld(2, node)
    m += b"".join(ld(3, n) for n in names)
    if type_url:
        m += ld(4, type_url)
    if nonce:
        m += ld(5, nonce)
    if error is not None:
        m += ld(6, vi(1, 13) + ld(2, error))
    return varint(len(m)) + m


for name, msgs in {
    "watch-ack-add": [dreq(["default", "ROOTCA"], with_node=True), dreq(["default", "ROOTCA"], "nonce-1"),
                      dreq(["default", "ROOTCA", WEB], "nonce-1")],
    "nack": [dreq(["default"], with_node=True), dreq(["default"], "nonce-1", error="bad certificate")],
    "stale-then-reconnect": [dreq(["ROOTCA"]), dreq(["ROOTCA"], "nonce-0"), dreq(["ROOTCA", "default"])],
    "other-identities": [dreq([ADMIN, DB, WEB, TD + "/ns/default/sa/web/", TD.upper() + "/ns/default/sa/admin"])],
    "odd-names": [dreq(["file-cert:/etc/certs/cert.pem~/etc/certs/key.pem", "default\x00", "", "rootca", "spiffe://"])],
    "no-type-url-then-wrong": [dreq(["default"], type_url=""), dreq(["default"], "nonce-1", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")],
    "fetch-shape": [dreq(["default", "default", "ROOTCA"], with_node=True)],
    "long-name": [dreq(["spiffe://cluster.local/" + "a" * 2000])],
}.items():
    write("sds_request", name, b"".join(msgs))

# --- workload_api: metadata lines, empty line, call byte, request -----------------
HDR = "workload.spiffe.io: true\ncontent-type: application/grpc\n\n"
svid_claims = {"sub": WEB, "aud": ["db"], "exp": 4102444800, "iat": 1700000000}
partner = dict(svid_claims, sub="spiffe://partner.example/ns/x/sa/y")
for name, (hdr, call, msg) in {
    "fetch-all": (HDR, 0, ld(1, "db")),
    "fetch-own-id": (HDR, 0, ld(1, "db") + ld(1, "spiffe://other/aud") + ld(2, WEB)),
    "fetch-other-id": (HDR, 0, ld(1, "db") + ld(2, ADMIN)),
    "fetch-bad-id": (HDR, 0, ld(1, "db") + ld(2, TD + "/ns/%2e%2e/sa/web")),
    "fetch-empty-audience": (HDR, 0, ld(1, "")),
    "fetch-no-audience": (HDR, 0, ld(2, WEB)),
    "no-header": ("content-type: application/grpc\n\n", 0, ld(1, "db")),
    "header-upper-case-value": ("workload.spiffe.io: True\n\n", 0, ld(1, "db")),
    "header-twice": ("workload.spiffe.io: true\nworkload.spiffe.io: true\n\n", 0, ld(1, "db")),
    "validate-local": (HDR, 1, ld(1, "db") + ld(2, jwt(svid_claims))),
    "validate-partner": (HDR, 1, ld(1, "db") + ld(2, jwt(partner, kid="partner-rsa"))),
    "validate-cross-domain-key": (HDR, 1, ld(1, "db") + ld(2, jwt(svid_claims, kid="partner-rsa"))),
    "validate-wrong-audience": (HDR, 1, ld(1, "web") + ld(2, jwt(svid_claims))),
    "validate-expired": (HDR, 1, ld(1, "db") + ld(2, jwt(dict(svid_claims, exp=1600000000)))),
    "validate-alg-none": (HDR, 1, ld(1, "db") + ld(2, jwt(svid_claims, alg="none"))),
    "validate-garbage": (HDR, 1, ld(1, "db") + ld(2, "not.a\x00.jwt")),
}.items():
    write("workload_api", name, hdr.encode() + bytes([call]) + msg)
