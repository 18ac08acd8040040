"""A real HTTP StrategyRegistry for tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class RegistryServer:
    """A real HTTP StrategyRegistry on 127.0.0.1 that records what it receives; `fail` makes it answer 503."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append((self.headers["Idempotency-Key"], body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/signals"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class DrippingServer:
    """An HTTP server on 127.0.0.1 that reads each request, then sends its answer one byte every ``interval``
    seconds (a registry that is up but hopelessly slow: every single read succeeds within any read timeout)."""

    ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nX-Padding: " + b"." * 60 + b"\r\n\r\n"

    def __init__(self, interval: float = 2.0):
        import socket

        self.interval = interval
        self.requests = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/signals"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                for byte in self.ANSWER:
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up: what the test wants

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)
