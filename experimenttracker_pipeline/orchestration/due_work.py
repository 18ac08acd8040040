"""What is due, decided as plain functions of cheap snapshots (file stats, counts, the store's watermarks) and a
JSON cursor. No Dagster and no SQL here: `defs/sensors.py` and the CLI's `run` feed these and act on the answers.

Due work is read from the experiment store (landing offsets, registered declarations, each experiment's pairing
watermark and latest verdict), so the sensors never redo what the CLI did and vice versa. Run keys encode intent
(which file state, which experiments at which watermarks), so a request is made once however often a sensor
ticks. Work still not done after `retry_after_ms`, with no run in flight, is requested again under a new key: an
outage delays work, it never strands it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

REPORT_BUS_UNAVAILABLE = "REPORT_BUS_UNAVAILABLE"
NO_SAMPLES_IN_WINDOW = "NO_SAMPLES_IN_WINDOW"
PAUSED = "paused"  # an operator paused the experiment (`experimenttracker pause`): no pairing, evaluation or stalls
# A stored declaration that cannot be used (stages.declarations.queries.SET_ASIDE): never paired or evaluated.
SET_ASIDE = "rejected"


def digest(parts: Iterable[Any]) -> str:
    return hashlib.sha256(repr(sorted(parts)).encode()).hexdigest()[:16]


def folder_signature(folder: Path, suffixes: tuple[str, ...], *, recursive: bool = False) -> dict[str, int]:
    """path -> size for the files of a folder (stat only). Raises OSError when the folder cannot be read."""
    return {path: size for path, (size, _) in folder_stats(folder, suffixes, recursive=recursive).items()}


def folder_stats(folder: Path, suffixes: tuple[str, ...], *, recursive: bool = False) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime in ms) for the files of a folder. Raises OSError when the folder cannot be read."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a readable folder")
    paths = folder.rglob("*") if recursive else folder.glob("*")
    out = {}
    for p in paths:
        if p.suffix in suffixes and not p.is_symlink() and p.is_file():  # links are never read: never due
            stat = p.stat()
            out[str(p.resolve())] = (stat.st_size, stat.st_mtime_ns // 1_000_000)
    return out


def files_behind(signature: Mapping[str, int], offsets: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Landing files whose size differs from the byte offset ingestion has reached (new, grown or rotated)."""
    return {path: size for path, size in signature.items() if size != offsets.get(path, {}).get("byte_offset", 0)}


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


@dataclass(frozen=True)
class EvaluationRule:
    """When an experiment is due for evaluation, given its sample count and the latest verdict's.

    ``growth`` (the CLI's `run`): whenever the count grew past the latest verdict's, or there is no verdict yet.
    ``step`` (the sensors): from ``min_samples_for_decision`` on, then each time the count grew by ``step_pct``
    (and at least ``step_n`` samples) since the latest verdict.
    A pair count never decreases, so a count below the verdict's is a sandbox experiment's (its verdicts count
    usable logs, it has no pairs): never due from the snapshot. Its new logs are new control fills, which make
    pairing due, and the pass then decides on the log count.
    """

    kind: str = "growth"
    step_pct: float = 0.1
    step_n: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("growth", "step"):
            raise ValueError(f"unknown evaluation rule {self.kind!r}: growth or step")

    def due(self, samples: int, min_samples: int, evaluated_samples: int | None) -> bool:
        if self.kind == "growth":
            return evaluated_samples is None or samples > evaluated_samples
        if samples < min_samples:
            return False
        return evaluated_samples is None or samples >= next_evaluation_count(
            evaluated_samples, step_pct=self.step_pct, step_n=self.step_n)


def newest_batch_for(row: Mapping[str, Any], newest_batch_by_slug: Mapping[str, int]) -> int:
    """The newest ingestion batch that brought fills of either arm of an experiment (0: none yet)."""
    return max(newest_batch_by_slug.get(row["variant_slug"], 0), newest_batch_by_slug.get(row["control_slug"], 0))


def pairing_due(row: Mapping[str, Any], newest_batch_by_slug: Mapping[str, int]) -> bool:
    """A batch newer than the experiment's pairing watermark brought fills of its variant or control slug."""
    return newest_batch_for(row, newest_batch_by_slug) > int(row.get("paired_through_batch") or 0)


@dataclass(frozen=True)
class DueExperiment:
    """An experiment with work to do, and the store watermarks that made it due (its work key)."""

    experiment_id: str
    pair: bool
    evaluate: bool
    samples: int
    newest_batch: int

    @property
    def key(self) -> str:
        return f"{self.experiment_id}:b{self.newest_batch}:n{self.samples}"


def due_experiments(snapshot: Iterable[Mapping[str, Any]], newest_batch_by_slug: Mapping[str, int], rule: EvaluationRule,
                    *, only: Iterable[str] | None = None) -> list[DueExperiment]:
    """Every experiment with new fills to pair or a sample count the rule says to evaluate, from the store's
    watermarks alone (`samples.queries.sensor_snapshot`, `ingestion.queries.newest_batch_by_slug`): what the CLI did, the daemon
    does not do again. An experiment that will be paired is listed too when it might cross the rule after
    pairing: the pass decides again after pairing."""
    wanted = set(only) if only is not None else None
    out = []
    for row in snapshot:
        if row.get("status") in (PAUSED, SET_ASIDE) or (wanted is not None and row["experiment_id"] not in wanted
                                                        and row.get("parent_experiment_id") not in wanted):
            continue  # a paused experiment's fills stay stored and pair when it is resumed
        if row.get("has_comparisons"):
            continue  # an A/B/n experiment is paired and evaluated as its comparisons (their own rows)
        samples = int(row["samples"] or 0)
        evaluated = row.get("evaluated_samples")
        pair = pairing_due(row, newest_batch_by_slug)
        evaluate = rule.due(samples, int(row["min_samples_for_decision"]), None if evaluated is None else int(evaluated))
        if pair or evaluate:
            out.append(DueExperiment(row["experiment_id"], pair, evaluate, samples, newest_batch_for(row, newest_batch_by_slug)))
    return out


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive lists of at most ``size``."""
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def split_over_steps(experiment_ids: list[str], steps: int) -> list[list[str]]:
    """Consecutive, near-equal slices of ``experiment_ids``, one per step (some empty when there are few)."""
    ids = list(dict.fromkeys(experiment_ids))
    base, extra = divmod(len(ids), steps)
    out, start = [], 0
    for index in range(steps):
        size = base + (index < extra)
        out.append(ids[start:start + size])
        start += size
    return out


@dataclass(frozen=True)
class PassRequest:
    run_key: str
    experiment_ids: list[str]
    retried: list[str]  # experiments requested again after an earlier run left them due


def plan_pass_requests(due: Sequence[DueExperiment], cursor: dict[str, Any], now_ms: int, *,
                       run_state: Callable[[str], str], retry_after_ms: int, run_size: int) -> list[PassRequest]:
    """Batch every due experiment into runs of at most ``run_size`` experiments.

    ``cursor['requested']`` keeps experiment -> [work key, attempt, requested_at_ms, run_key]. An experiment whose
    last run is still in flight is left alone (never two runs on one experiment). One that is still due with the
    same work key after its run finished was not done by that run (it failed there): it is requested again after
    ``retry_after_ms``. New work (a new key) is requested at once. Experiments no longer due are forgotten. The
    run key is a digest of the batch's work keys and attempts, so Dagster launches each batch once.
    """
    requested = cursor.setdefault("requested", {})
    due_ids = {item.experiment_id for item in due}
    for experiment_id in [e for e in requested if e not in due_ids]:
        if run_state(requested[experiment_id][3]) != RUN_IN_FLIGHT:
            del requested[experiment_id]
    chosen: list[tuple[DueExperiment, int]] = []
    for item in due:
        previous = requested.get(item.experiment_id)
        attempt = 0
        if previous is not None:
            previous_key, previous_attempt, at_ms, run_key = previous
            if run_state(run_key) == RUN_IN_FLIGHT:
                continue
            if previous_key == item.key:
                if now_ms - at_ms < retry_after_ms:
                    continue
                attempt = previous_attempt + 1
        chosen.append((item, attempt))
    out = []
    for batch in chunks(chosen, run_size):
        run_key = "pass:" + digest((item.key, attempt) for item, attempt in batch)
        for item, attempt in batch:
            requested[item.experiment_id] = [item.key, attempt, now_ms, run_key]
        out.append(PassRequest(run_key, [item.experiment_id for item, _ in batch],
                               [item.experiment_id for item, attempt in batch if attempt]))
    return out


def partition_keys(snapshot: Iterable[Mapping[str, Any]]) -> list[str]:
    """The partition keys of the stored experiments: one per unit of evaluation (an experiment with one treatment,
    or each treatment comparison ``<experiment_id>/<variant_id>`` of an A/B/n experiment)."""
    return [r["experiment_id"] for r in snapshot if not r.get("has_comparisons")]


def partition_changes(partitions: Sequence[str], stored: Iterable[str]) -> tuple[list[str], list[str]]:
    """(partitions to add, partitions to delete): every stored experiment has its partition, and a partition no
    declared experiment backs (a key typed into the UI, say) is removed. Read the partitions *before* the stored
    experiments: registration stores an experiment before it adds its partition."""
    stored_set = set(stored)
    known = set(partitions)
    return sorted(stored_set - known), sorted(known - stored_set)


def declarations_due(files: Mapping[str, tuple[int, int]], registered: Mapping[str, int | None]) -> dict[str, tuple[int, int]]:
    """Declaration files the store has not registered, or changed since they were registered.

    ``files``: path -> (size, mtime_ms); ``registered``: source file -> registered_at_ms (None for old rows).
    A file that fails validation stays due; the caller keys its request by the files' state, so it is tried
    once per state, not once per tick."""
    out = {}
    for path, (size, mtime_ms) in files.items():
        if path not in registered:
            out[path] = (size, mtime_ms)
        elif registered[path] is not None and mtime_ms > int(registered[path]):
            out[path] = (size, mtime_ms)
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
        if row["status"] not in ("active", "stalled") or row.get("has_comparisons"):
            continue  # an A/B/n experiment stalls per comparison
        last = row.get("last_appended_at_ms") or row.get("registered_at_ms") or now_ms
        stall = open_stalls.get(experiment_id)
        if stall is None:
            if bus_error is not None:
                changes.append(StallChange(experiment_id, "stall", REPORT_BUS_UNAVAILABLE, bus_error))
            elif now_ms - last > window_ms and not row.get("sandbox"):  # a sandbox experiment never has samples
                changes.append(StallChange(experiment_id, "stall", NO_SAMPLES_IN_WINDOW,
                                           f"no new samples for {(now_ms - last) / 60000:.0f} min (window {window_ms / 60000:.0f} min)"))
        elif stall["reason"] == REPORT_BUS_UNAVAILABLE and bus_error is None:
            changes.append(StallChange(experiment_id, "resume", stall["reason"], "report bus readable again"))
        elif stall["reason"] == NO_SAMPLES_IN_WINDOW and (row.get("last_appended_at_ms") or 0) > stall["started_at_ms"]:
            changes.append(StallChange(experiment_id, "resume", stall["reason"], "samples are arriving again"))
    return changes
