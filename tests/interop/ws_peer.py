"""WebSocket peers on the `websockets` library (no one here wrote it) for the proxy's
end-to-end tests.

    python ws_peer.py server ADDR:PORT
        echoes every message back, prefixed with "ws:"; logs each handshake's path.
    python ws_peer.py client PROXY_ADDR:PORT ws://HOST:PORT/PATH MESSAGE...
        connects through an HTTP proxy that routes by Host (the Warden outbound port),
        sends each message, prints {"ok": true, "replies": [...]} or {"ok": false, ...}.
"""
import json
import socket
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve


def log(**fields):
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def server(addr):
    host, port = addr.rsplit(":", 1)

    def echo(ws):
        log(message="request", app="websockets", path=ws.request.path,
            headers=[[k.lower(), v] for k, v in ws.request.headers.raw_items()])
        for msg in ws:
            ws.send("ws:" + msg if isinstance(msg, str) else b"ws:" + msg)

    with serve(echo, host, int(port)) as s:
        log(message="serving", addr=addr)
        s.serve_forever()


def client(proxy, uri, messages):
    host, port = proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        with connect(uri, sock=sock, open_timeout=10, close_timeout=2) as ws:
            replies = []
            for m in messages:
                ws.send(m)
                replies.append(ws.recv(timeout=10))
            print(json.dumps({"ok": True, "replies": replies}))
    except Exception as e:  # the test reads the refusal
        status = getattr(getattr(e, "response", None), "status_code", None)
        print(json.dumps({"ok": False, "error": type(e).__name__, "status": status, "detail": str(e)}))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4:])
