"""StrategyRegistry clients: where drift signals are delivered.

Signals are first written to the `strategy_registry_signals` outbox (once per experiment); delivery then marks
them delivered. A registry outage leaves them pending, to be retried by the next evaluation or sensor tick,
so a signal is delayed but never lost, and the idempotency key lets the registry drop a repeated POST.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Protocol


class RegistryUnavailable(RuntimeError):
    """The registry did not accept the signal (timeout, connection error, non-2xx answer)."""


class StrategyRegistry(Protocol):
    def send_drift_signal(self, payload: Mapping[str, Any], idempotency_key: str) -> None:
        """Deliver one signal; raise RegistryUnavailable when it was not accepted."""


class TableStrategyRegistry:
    """The default: the `strategy_registry_signals` table *is* the registry's inbox (the registry reads it)."""

    def send_drift_signal(self, payload: Mapping[str, Any], idempotency_key: str) -> None:
        return None


class _Deadline:
    """A total time limit for one HTTP call. Socket timeouts bound each read, so a server that sends one byte
    every 2 s could hold a call for minutes; when this deadline passes, the call's sockets are shut down, which
    ends whatever read or write (TLS handshake included) is blocked on them."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib (proxies, redirects and TLS as usual) with every connection's socket handed to ``deadline``."""

    def tracked(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Connection(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, **kwargs)
                create = self._create_connection
                self._create_connection = lambda *a, **k: deadline.track(create(*a, **k))

        return Connection

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(tracked(http.client.HTTPConnection), req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            options: dict[str, Any] = {"context": self._context}
            if hasattr(self, "_check_hostname"):  # Python < 3.12
                options["check_hostname"] = self._check_hostname
            return self.do_open(tracked(http.client.HTTPSConnection), req, **options)

    return urllib.request.build_opener(HttpHandler(), HttpsHandler())


@dataclass
class HttpStrategyRegistry:
    """POSTs JSON to ``url`` with an ``Idempotency-Key`` header; retries with exponential backoff. Each POST has a
    total deadline of ``timeout_ms`` (connect, send and the whole answer), not a per-read timeout."""

    url: str
    timeout_ms: int = 5000  # spec section 21: per-call timeout
    max_attempts: int = 3
    backoff_seconds: float = 0.5

    def send_drift_signal(self, payload: Mapping[str, Any], idempotency_key: str) -> None:
        body = json.dumps(payload, sort_keys=True).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Idempotency-Key": idempotency_key})
            deadline = _Deadline(self.timeout_ms / 1000)
            try:
                with deadline, _opener(deadline).open(request, timeout=self.timeout_ms / 1000) as response:
                    status = response.status  # status line and headers; the body is not needed
                if 200 <= status < 300:
                    return
                last_error = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 409, 429):
                    break  # the registry rejected this payload: retrying the same bytes will not help
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if deadline.expired:
                last_error = f"no complete answer within {self.timeout_ms} ms (the deadline of one call)"
        raise RegistryUnavailable(f"{self.url}: {last_error}")


def registry_for(url: str | None, *, timeout_ms: int = 5000, max_attempts: int = 3, backoff_seconds: float = 0.5) -> StrategyRegistry:
    return HttpStrategyRegistry(url, timeout_ms, max_attempts, backoff_seconds) if url else TableStrategyRegistry()
