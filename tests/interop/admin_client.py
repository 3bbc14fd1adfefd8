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

METHOD = "/warden.admin.v1.Admin/ListEntries"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def fields(buf):
    """(field number, bytes) of the length-delimited fields of a message."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 2:
            length, i = read_varint(buf, i)
            yield num, buf[i : i + length]
            i += length
        elif wt == 0:
            _, i = read_varint(buf, i)
        else:
            raise ValueError(f"unexpected wire type {wt} for field {num}")


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
