"""The protobuf wire format by hand, shared by the interop clients (admin_client.py,
istio_ca_client.py) so they need no generated code: varints, length-delimited and
varint fields, and a reader of a message's fields."""


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


def field_bytes(num, data):  # wire type 2
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, value):  # wire type 0
    return varint(num << 3 | 0) + varint(value)


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
    """(field number, bytes) of the length-delimited fields of a message; varint
    fields are skipped."""
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
