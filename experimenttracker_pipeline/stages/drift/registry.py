"""StrategyRegistry clients: where drift signals are delivered.

Signals are first written to the `strategy_registry_signals` outbox (once per experiment); delivery then marks
them delivered. A registry outage leaves them pending, to be retried by the next evaluation or sensor tick,
so a signal is delayed but never lost, and the idempotency key lets the registry drop a repeated POST.
"""

from __future__ import annotations

import json
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


@dataclass
class HttpStrategyRegistry:
    """POSTs JSON to ``url`` with an ``Idempotency-Key`` header; retries with exponential backoff."""

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
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_ms / 1000) as response:
                    if 200 <= response.status < 300:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 409, 429):
                    break  # the registry rejected this payload: retrying the same bytes will not help
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise RegistryUnavailable(f"{self.url}: {last_error}")


def registry_for(url: str | None, *, timeout_ms: int = 5000, max_attempts: int = 3, backoff_seconds: float = 0.5) -> StrategyRegistry:
    return HttpStrategyRegistry(url, timeout_ms, max_attempts, backoff_seconds) if url else TableStrategyRegistry()
