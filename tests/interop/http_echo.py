"""An HTTP/1.1-only application for the proxy's end-to-end tests, on Python's own
http.server (no one here wrote it): it answers every request with JSON describing the
request exactly as it arrived (method, raw request target, version, headers in order,
body length) and logs the same as one JSON line on stderr, so a test can check both
what reached the app and how many requests did.

    python http_echo.py ADDR:PORT [NAME [DELAY_MS]]

With DELAY_MS it answers each request that much later (a slow endpoint).

It speaks HTTP/1.1 with keep-alive and nothing else: an HTTP/2 request is a protocol
error to it, as to any HTTP/1.1-only server.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(**fields):
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "http.server"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        seen = {
            "message": "request",
            "app": NAME,
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": len(body),
        }
        log(**seen)
        if DELAY_MS:
            time.sleep(DELAY_MS / 1000)
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "keep-alive")
        self.send_header("Keep-Alive", "timeout=60")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = answer


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    NAME = sys.argv[2] if len(sys.argv) > 2 else "http.server"
    DELAY_MS = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    log(message="serving", addr=sys.argv[1])
    server.serve_forever()
