"""The HTTP server of `experimenttracker serve`: /metrics (Prometheus text format, or OpenMetrics when asked) and
/internal/health/experimenttracker (JSON; 200 green or amber, 503 red). Standard library + prometheus_client only:
no Dagster, so it starts in a fraction of a second and stays small."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client.exposition import choose_encoder

from experimenttracker_pipeline.observability.health import check_health
from experimenttracker_pipeline.observability.metrics import build_registry
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig
from experimenttracker_pipeline.store import Store

log = logging.getLogger(__name__)
HEALTH_PATH = "/internal/health/experimenttracker"


def make_server(store: Store, bus: BusConfig | None, host: str, port: int) -> ThreadingHTTPServer:
    """A ready-to-serve HTTP server (call ``serve_forever()``); port 0 picks a free port."""
    registry = build_registry(store, bus)

    class Handler(BaseHTTPRequestHandler):
        server_version = "experimenttracker"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry))
            elif path == HEALTH_PATH:
                health = check_health(store, bus)
                self._send(health.http_status, "application/json",
                           json.dumps(health.as_json(), indent=2, sort_keys=True).encode())
            elif path == "/":
                self._send(200, "text/plain; charset=utf-8", f"experimenttracker: /metrics {HEALTH_PATH}\n".encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(store: Store, bus: BusConfig | None, host: str, port: int, *, ready: Callable[[str], None] = print) -> None:
    """Serve until interrupted (SIGINT/SIGTERM end it cleanly)."""
    import signal

    server = make_server(store, bus, host, port)
    bound_host, bound_port = server.server_address[:2]
    def stop(*_) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ready(f"experimenttracker serve: http://{bound_host}:{bound_port}/metrics and "
          f"http://{bound_host}:{bound_port}{HEALTH_PATH}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
