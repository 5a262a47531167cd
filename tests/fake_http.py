"""A tiny HTTP/1.1 server on 127.0.0.1 (port 0) for the tests that download: it records every request
with its headers and hands it to an `app(handler)` function written by the test (the fake Hugging Face
Hub, Kaggle and archive hosts of tests/e2e/test_fetch.py and test_entrypoint.py). No real network."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request and hands it to `app`."""

    def __init__(self, app):
        self.app = app
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                server.app(self)

            # POST, PUT and HEAD (the fake Hub's write API, webhooks): the same, the app reads any body.
            do_POST = do_PUT = do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(handler, status: int, body: bytes = b"", headers: dict | None = None):
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def error(handler, status: int, message: str):
    reply(handler, status, json.dumps({"error": message}).encode(),
          {"Content-Type": "application/json", "X-Error-Message": message})


def send_file(handler, data: bytes):
    """200 with the data, or 206 with its tail for a `Range: bytes=N-` request (a resumed download)."""
    rng = handler.headers.get("Range")
    if rng:
        start = int(rng.removeprefix("bytes=").split("-")[0])
        reply(handler, 206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
    else:
        reply(handler, 200, data)
