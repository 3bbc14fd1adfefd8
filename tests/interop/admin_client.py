#!/usr/bin/env python3
"""A client of the CA's admin API on its unix socket that shares no code with Warden:
Python's grpcio (gRPC C-core, which sends the socket path as the HTTP/2 :authority),
with messages encoded by hand from the field numbers of proto/proto/admin.proto.

  admin_client.py --socket PATH [--oversize BYTES --expect-code CODE]

Calls ListEntries (the socket's file mode is the only authentication) and prints
{"ok": true, "spiffe_ids": [...]}. With --oversize, sends a ListEntriesRequest whose
parent_id is BYTES long and prints {"ok": false, "code": ..., "details": ...}.
"""
import argparse
import json
import sys

import grpc

from protowire import fields, varint

METHOD = "/warden.admin.v1.Admin/ListEntries"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--oversize", type=int)
    ap.add_argument("--expect-code")
    a = ap.parse_args()
    request = b""
    if a.oversize:
        # ListEntriesRequest.parent_id = 1 (string)
        request = varint(1 << 3 | 2) + varint(a.oversize) + b"x" * a.oversize
    with grpc.insecure_channel("unix:" + a.socket) as ch:
        call = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            raw = call(request, timeout=10)
        except grpc.RpcError as e:
            print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}))
            return 0 if a.expect_code == e.code().name else 1
    # ListEntriesResponse.entries = 1 (Entry); Entry.spiffe_id = 3 (string)
    ids = [v.decode() for _, entry in fields(raw) for n, v in fields(entry) if n == 3]
    print(json.dumps({"ok": True, "spiffe_ids": ids}))
    return 1 if a.expect_code else 0


if __name__ == "__main__":
    sys.exit(main())
