#!/usr/bin/env python3
"""An Istio-style CreateCertificate client that shares no code with Warden.

Uses Python's grpcio (gRPC C-core) for TLS, HTTP/2 and gRPC framing, openssl for the key
and CSR, and encodes/decodes the protobuf messages by hand from the field numbers of
Istio's security/v1alpha1/ca.proto and google/protobuf/struct.proto, so a wrong field
number or type on Warden's side fails here.

  istio_ca_client.py --addr localhost:PORT --root ROOT.pem (--token-file F | --cert C --key K)
      --out DIR [--impersonate SPIFFE_ID] [--cluster-id ID] [--ttl SECONDS] [--csr-bytes N]
      [--expect-code UNAUTHENTICATED]

--cert/--key authenticate with a client certificate (mutual TLS), as a renewing node.

--csr-bytes N sends N bytes of "A" instead of a CSR (an oversized request).

Prints one JSON line: {"ok": true, "chain_len": N} or {"ok": false, "code": ..., "details": ...,
"trailers": {...}} (the error's trailing metadata, e.g. grpc-retry-pushback-ms).
"""
import argparse
import json
import os
import subprocess
import sys

import grpc

from protowire import field_bytes, field_varint, fields

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def encode_request(csr_pem, ttl, impersonate):
    # IstioCertificateRequest: csr = 1 (string), validity_duration = 3 (int64), metadata = 4 (Struct)
    msg = field_bytes(1, csr_pem.encode()) + field_varint(3, ttl)
    if impersonate:
        # Struct { map<string, Value> fields = 1 }; map entry { key = 1, value = 2 };
        # Value { string_value = 3 }
        value = field_bytes(3, impersonate.encode())
        entry = field_bytes(1, b"ImpersonatedIdentity") + field_bytes(2, value)
        msg += field_bytes(4, field_bytes(1, entry))
    return msg


def decode_response(buf):
    # IstioCertificateResponse: cert_chain = 1 (repeated string)
    return [data.decode() for num, data in fields(buf) if num == 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--cert", help="client certificate chain (PEM) for mutual TLS")
    ap.add_argument("--key", help="its private key (PEM)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--impersonate")
    ap.add_argument("--ttl", type=int, default=3600)
    ap.add_argument("--csr-bytes", type=int)
    ap.add_argument("--expect-code")
    ap.add_argument("--cluster-id", help="sent as the clusterid metadata, as istio-agent does")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    key = os.path.join(a.out, "key.pem")
    if a.csr_bytes:
        csr = "A" * a.csr_bytes
    else:
        csr = subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-subj", "/O=interop"],
            check=True, capture_output=True, text=True,
        ).stdout
    client_key = open(a.key, "rb").read() if a.key else None
    client_chain = open(a.cert, "rb").read() if a.cert else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(a.root, "rb").read(),
        private_key=client_key,
        certificate_chain=client_chain,
    )
    metadata = []
    if a.token_file:
        metadata.append(("authorization", "Bearer " + open(a.token_file).read().strip()))
    if a.cluster_id:
        metadata.append(("clusterid", a.cluster_id))
    with grpc.secure_channel(a.addr, creds) as ch:
        call = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            raw = call(encode_request(csr, a.ttl, a.impersonate), metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            trailers = {k: v for k, v in (e.trailing_metadata() or []) if isinstance(v, str)}
            print(json.dumps({"ok": False, "code": e.code().name, "details": e.details(),
                              "trailers": trailers}))
            return 0 if a.expect_code == e.code().name else 1
    chain = decode_response(raw)
    with open(os.path.join(a.out, "cert-chain.pem"), "w") as f:
        f.write("".join(chain[:-1]))
    with open(os.path.join(a.out, "root-cert.pem"), "w") as f:
        f.write(chain[-1])
    print(json.dumps({"ok": True, "chain_len": len(chain)}))
    return 1 if a.expect_code else 0


if __name__ == "__main__":
    sys.exit(main())
