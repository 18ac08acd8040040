"""The health check behind GET /internal/health/experimenttracker (spec section 27).

Checks, each `ok` true/false with a detail:
- `store`: the experiment store answers.
- `report_bus`: the bus consumer answers (only when EXPERIMENTTRACKER_BUS_URL is set; otherwise reported as
  not configured and ignored).
- `recent_samples`: at least one running (active or stalled) experiment had samples appended in the last hour
  (true when no experiment is running).
- `no_silent_experiment`: no running experiment has gone 2 hours without new samples (since registration when
  it never had any).
- `registry_deliveries`: no drift signal has been pending for more than 15 minutes.

State: `red` (HTTP 503) when the store, the configured bus, `no_silent_experiment` or `registry_deliveries` fails;
`green` (HTTP 200) when every check passes; `amber` (HTTP 200) when only `recent_samples` fails (every running
experiment has been quiet for 1-2 hours: not yet an incident).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from experimenttracker_pipeline.observability.readings import read_store
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, report_bus_error
from experimenttracker_pipeline.store import Store

RECENT_SAMPLES_SECONDS = 3600
SILENT_SECONDS = 2 * 3600
STUCK_SIGNAL_SECONDS = 15 * 60
GREEN, AMBER, RED = "green", "amber", "red"


@dataclass
class Health:
    state: str
    checks: dict[str, dict[str, Any]]

    @property
    def http_status(self) -> int:
        return 503 if self.state == RED else 200

    def as_json(self) -> dict[str, Any]:
        return {"service": "gov.experimenttracker", "state": self.state, "checks": self.checks}


def check_health(store: Store, bus: BusConfig | None = None, *, clock: Callable[[], float] = time.time) -> Health:
    """Run every check once and decide the state (see the module docstring)."""
    now = clock()
    checks: dict[str, dict[str, Any]] = {}
    try:
        readings = read_store(store)
        checks["store"] = {"ok": True, "detail": "experiment store reachable"}
    except Exception as exc:
        readings = None
        checks["store"] = {"ok": False, "detail": f"experiment store unreachable: {str(exc).splitlines()[0][:300]}"}
    if bus is None:
        checks["report_bus"] = {"ok": True, "configured": False, "detail": "no report bus configured"}
    else:
        error = report_bus_error(bus)
        checks["report_bus"] = {"ok": error is None, "configured": True,
                                "detail": error or f"stream {bus.stream}, consumer {bus.consumer} reachable"}
    if readings is not None:
        running = readings.running
        ages = {r["experiment_id"]: now - r["last_ms"] / 1000 for r in running if r["last_ms"] is not None}
        fresh = [e for e, age in ages.items() if age <= RECENT_SAMPLES_SECONDS]
        checks["recent_samples"] = {
            "ok": not running or bool(fresh), "running_experiments": len(running), "sampled_last_hour": len(fresh),
            "detail": ("no running experiments" if not running else
                       f"{len(fresh)} of {len(running)} running experiments got samples in the last hour")}
        silent = sorted(e for e, age in ages.items() if age > SILENT_SECONDS)
        checks["no_silent_experiment"] = {
            "ok": not silent, "silent_experiments": silent[:20], "silent_count": len(silent),
            "detail": (f"{len(silent)} running experiments without samples for over 2 hours" if silent
                       else "every running experiment had samples within 2 hours")}
        oldest = readings.oldest_pending_signal_at
        pending_for = (datetime.fromtimestamp(now, timezone.utc) - oldest).total_seconds() if oldest else 0.0
        checks["registry_deliveries"] = {
            "ok": pending_for <= STUCK_SIGNAL_SECONDS, "pending": readings.signals_by_status.get("pending", 0),
            "failing": readings.signals_failing, "oldest_pending_seconds": round(pending_for, 1),
            "detail": (f"a drift signal has been pending for {pending_for / 60:.0f} min" if pending_for > STUCK_SIGNAL_SECONDS
                       else "no drift signal stuck")}
    red = any(not checks[name]["ok"] for name in ("store", "report_bus", "no_silent_experiment", "registry_deliveries")
              if name in checks)
    state = RED if red else (GREEN if checks["recent_samples"]["ok"] else AMBER)
    return Health(state, checks)
