#!/usr/bin/env python3
"""A SPIFFE Workload API client that shares no code with Warden: py-spiffe's own
WorkloadApiClient (PyPI `spiffe`, on grpcio, i.e. gRPC C-core, which sends the socket
path as the HTTP/2 :authority).

  py_spiffe_client.py --out DIR --audience AUD [--socket unix:/path/to/socket]

Without --socket the client reads SPIFFE_ENDPOINT_SOCKET, as workloads do. Fetches the
X.509-SVID and the X.509 bundles, writes the chain and the bundle as PEM (svid.pem,
bundle.pem) for openssl, fetches a JWT-SVID for AUD, validates it with the fetched JWT
bundles (and checks another audience is refused), and asks the agent to validate it.
Prints one JSON line: {"ok": true, ...} or {"ok": false, "error_type": ..., "error": ...}.
"""
import argparse
import base64
import json
import os
import sys

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtSvid, WorkloadApiClient


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def run(a):
    os.makedirs(a.out, exist_ok=True)
    with WorkloadApiClient(a.socket, default_timeout=10) as client:
        svid = client.fetch_x509_svid()
        td = svid.spiffe_id.trust_domain
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(td)
        with open(os.path.join(a.out, "svid.pem"), "wb") as f:
            f.write(b"".join(c.public_bytes(Encoding.PEM) for c in svid.cert_chain))
        with open(os.path.join(a.out, "bundle.pem"), "wb") as f:
            f.write(b"".join(c.public_bytes(Encoding.PEM) for c in bundle.x509_authorities))

        # Every trust domain's roots (ours and the federated ones), one PEM file each.
        for b in bundles.bundles:
            with open(os.path.join(a.out, "bundle-%s.pem" % b.trust_domain), "wb") as f:
                f.write(b"".join(c.public_bytes(Encoding.PEM) for c in b.x509_authorities))

        jwt = client.fetch_jwt_svid({a.audience})
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
        validated = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {a.audience})
        try:
            JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {a.audience + "-other"})
            other_refused = False
        except Exception:  # noqa: BLE001 - any refusal will do
            other_refused = True
        by_agent = client.validate_jwt_svid(jwt.token, a.audience)

    return {
        "ok": True,
        "spiffe_id": str(svid.spiffe_id),
        "chain_len": len(svid.cert_chain),
        "bundle_trust_domains": sorted(str(b.trust_domain) for b in bundles.bundles),
        "bundle_len": len(bundle.x509_authorities),
        "jwt": {
            "spiffe_id": str(validated.spiffe_id),
            "audience": sorted(validated.audience),
            "claims": claims(jwt.token),
        },
        "jwt_key_ids": sorted(jwt_bundle.jwt_authorities.keys()),
        "jwt_key_ids_by_trust_domain": {
            str(b.trust_domain): sorted(b.jwt_authorities.keys()) for b in jwt_bundles.bundles
        },
        "jwt_other_audience_refused": other_refused,
        "jwt_validated_by_agent": str(by_agent.spiffe_id),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", help="unix:/path; default: $SPIFFE_ENDPOINT_SOCKET")
    ap.add_argument("--out", required=True)
    ap.add_argument("--audience", required=True)
    a = ap.parse_args()
    try:
        result = run(a)
    except Exception as e:  # noqa: BLE001 - reported to the Rust test as JSON
        cause = e.__cause__ or e.__context__
        print(json.dumps({
            "ok": False,
            "error_type": type(e).__name__,
            "error": str(e),
            "cause": repr(cause) if cause else None,
        }))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
