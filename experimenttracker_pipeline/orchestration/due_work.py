"""What the sensors decide, as plain functions of cheap snapshots (file stats, counts, watermarks) and a JSON
cursor. No Dagster and no SQL here: `defs/sensors.py` feeds these and turns the answers into run requests.

Run keys encode intent (which file state, which experiment at which sample count), so a request is made once
however often a sensor ticks. A request whose work is still not done after `retry_after_ms`, with no run in
flight, is re-requested under a new key (`...:retry<k>`): an outage delays work, it never strands it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

REPORT_BUS_UNAVAILABLE = "REPORT_BUS_UNAVAILABLE"
NO_SAMPLES_IN_WINDOW = "NO_SAMPLES_IN_WINDOW"
PAUSED = "paused"  # an operator paused the experiment (`experimenttracker pause`): no pairing, evaluation or stalls


def digest(parts: Iterable[Any]) -> str:
    return hashlib.sha256(repr(sorted(parts)).encode()).hexdigest()[:16]


def folder_signature(folder: Path, suffixes: tuple[str, ...], *, recursive: bool = False) -> dict[str, int]:
    """path -> size for the files of a folder (stat only). Raises OSError when the folder cannot be read."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a readable folder")
    paths = folder.rglob("*") if recursive else folder.glob("*")
    return {str(p.resolve()): p.stat().st_size for p in paths if p.suffix in suffixes and p.is_file()}


def files_behind(signature: Mapping[str, int], offsets: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Landing files whose size differs from the byte offset ingestion has reached (new, grown or rotated)."""
    return {path: size for path, size in signature.items() if size != offsets.get(path, {}).get("byte_offset", 0)}


@dataclass
class Request:
    key: str
    target: str  # an experiment id, or "" for unpartitioned work
    detail: dict[str, Any] = field(default_factory=dict)


RUN_IN_FLIGHT, RUN_SUCCEEDED, RUN_FAILED, RUN_UNKNOWN = "in_flight", "succeeded", "failed", "unknown"


def keyed_request(cursor: dict[str, Any], base_key: str, now_ms: int, *, last_run_state: str, retry_after_ms: int) -> str | None:
    """The run key to request for ``base_key`` now, or None.

    First time: the base key itself. Afterwards nothing while the last run is in flight or succeeded; when it
    failed (or never appeared) and ``retry_after_ms`` has passed, ``base_key:retry<k>``. Dagster's run_key
    de-duplication makes each returned key launch at most once. ``cursor['requested']`` keeps
    base_key -> [attempt, requested_at_ms, run_key].
    """
    requested = cursor.setdefault("requested", {})
    previous = requested.get(base_key)
    if previous is None:
        requested[base_key] = [0, now_ms, base_key]
        return base_key
    attempt, at_ms, _ = previous
    if last_run_state in (RUN_IN_FLIGHT, RUN_SUCCEEDED) or now_ms - at_ms < retry_after_ms:
        return None
    key = f"{base_key}:retry{attempt + 1}"
    requested[base_key] = [attempt + 1, now_ms, key]
    return key


def last_key(cursor: Mapping[str, Any], base_key: str) -> str | None:
    entry = cursor.get("requested", {}).get(base_key)
    return entry[2] if entry else None


def prune_requested(cursor: dict[str, Any], keep: Iterable[str]) -> None:
    """Forget requests whose work is done or superseded, so the cursor stays small."""
    live = set(keep)
    cursor["requested"] = {k: v for k, v in cursor.get("requested", {}).items() if k in live}


def next_evaluation_count(last_requested: int, *, step_pct: float, step_n: int) -> int:
    """The sample count at which the next evaluation is due after one at ``last_requested``."""
    # round() first: 100 * 1.1 is 110.00000000000001 in binary floating point, which must not become 111.
    return max(last_requested + 1, math.ceil(round(last_requested * (1 + step_pct), 9)), last_requested + step_n)


def evaluation_requests(snapshot: Iterable[Mapping[str, Any]], cursor: dict[str, Any], *, step_pct: float = 0.1,
                        step_n: int = 1) -> list[Request]:
    """Experiments whose sample count first crossed min_samples_for_decision, or grew by the step since the
    last requested evaluation. Never twice for the same count: the key is experiment + count."""
    evaluated = cursor.setdefault("evaluated", {})
    out = []
    for row in snapshot:
        experiment_id, samples = row["experiment_id"], int(row["samples"] or 0)
        if row.get("status") == PAUSED or samples < int(row["min_samples_for_decision"]):
            continue
        last = evaluated.get(experiment_id)
        if last is not None and samples < next_evaluation_count(int(last), step_pct=step_pct, step_n=step_n):
            continue
        evaluated[experiment_id] = samples
        out.append(Request(f"evaluate:{experiment_id}:{samples}", experiment_id, {"samples": samples, "previous": last}))
    return out


def pairing_requests(snapshot: Iterable[Mapping[str, Any]], new_fills_by_slug: Mapping[str, int], newest_batch: int) -> list[Request]:
    """Experiments that new ingestion batches brought fills for (either arm): pair them."""
    out = []
    for row in snapshot:
        if row.get("status") == PAUSED:
            continue  # its fills stay stored and pair when it is resumed
        fills = new_fills_by_slug.get(row["variant_slug"], 0) + new_fills_by_slug.get(row["control_slug"], 0)
        if fills:
            out.append(Request(f"samples:{row['experiment_id']}:{newest_batch}", row["experiment_id"], {"new_fills": fills}))
    return out


@dataclass
class StallChange:
    experiment_id: str
    action: str  # "stall" | "resume"
    reason: str
    detail: str


def stall_changes(snapshot: Iterable[Mapping[str, Any]], open_stalls: Mapping[str, Mapping[str, Any]], *, now_ms: int,
                  window_ms: int, bus_error: str | None) -> list[StallChange]:
    """Experiments to mark stalled (bus unreadable, or no new samples for the window) and stalled ones that
    recovered (bus readable again, or samples appended since the stall began). One change per episode."""
    changes = []
    for row in snapshot:
        experiment_id = row["experiment_id"]
        if row["status"] not in ("active", "stalled"):
            continue
        last = row.get("last_appended_at_ms") or row.get("registered_at_ms") or now_ms
        stall = open_stalls.get(experiment_id)
        if stall is None:
            if bus_error is not None:
                changes.append(StallChange(experiment_id, "stall", REPORT_BUS_UNAVAILABLE, bus_error))
            elif now_ms - last > window_ms:
                changes.append(StallChange(experiment_id, "stall", NO_SAMPLES_IN_WINDOW,
                                           f"no new samples for {(now_ms - last) / 60000:.0f} min (window {window_ms / 60000:.0f} min)"))
        elif stall["reason"] == REPORT_BUS_UNAVAILABLE and bus_error is None:
            changes.append(StallChange(experiment_id, "resume", stall["reason"], "report bus readable again"))
        elif stall["reason"] == NO_SAMPLES_IN_WINDOW and (row.get("last_appended_at_ms") or 0) > stall["started_at_ms"]:
            changes.append(StallChange(experiment_id, "resume", stall["reason"], "samples are arriving again"))
    return changes
