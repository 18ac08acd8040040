"""The pipeline's operations, as plain functions over a `Store`: what the Dagster assets, sensors and the CLI call.

Each returns a result object whose fields become asset metadata, so the same numbers show in the UI, the CLI
and the tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experimenttracker_pipeline.governance_ops import record_contract
from experimenttracker_pipeline.lib.contract import ContractError, build_contract
from experimenttracker_pipeline.lib.declarations import DeclarationError, load_declarations
from experimenttracker_pipeline.lib.pairing import (
    ChainBreak, build_sample_rows, pair_limited_live, pair_shadow, sample_hash, verify_chain,
)
from experimenttracker_pipeline.lib.reports import Fill, bounded_raw_text, validate_line
from experimenttracker_pipeline.settings import DEVELOPER_TOPIC, OPERATIONS_TOPIC
from experimenttracker_pipeline.store import ImmutableSampleError, QuarantineRow, Store

log = logging.getLogger(__name__)

EXPERIMENT_STARTED = "EXPERIMENT_STARTED"
EXPERIMENT_LARGE_SPLIT_WARN = "EXPERIMENT_LARGE_SPLIT_WARN"
SAMPLE_RECORDED = "SAMPLE_RECORDED"


class ReportBusUnavailable(RuntimeError):
    """The report bus archive (landing folder) cannot be read."""


# ---- declarations ----------------------------------------------------------------------------------
@dataclass
class DeclarationSync:
    new: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[DeclarationError] = field(default_factory=list)
    emitted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def registered(self) -> list[str]:
        return sorted(self.new + self.unchanged)


def sync_declarations(store: Store, experiments_dir: Path, *, default_caliper_seconds: float = 60.0) -> DeclarationSync:
    """Register new declarations and emit EXPERIMENT_STARTED (and the large-split warning) once each."""
    loaded = load_declarations(experiments_dir, default_caliper_seconds=default_caliper_seconds)
    sync = DeclarationSync(rejected=list(loaded.errors))
    for decl in loaded.declarations:
        try:
            contract = build_contract(decl)  # issue 6: the experiment contract is validated on load
        except ContractError as exc:
            sync.rejected.extend(DeclarationError(issue.file or decl.source_file, issue.path, issue.message) for issue in exc.issues)
            continue
        outcome = store.register_experiment(decl)
        if outcome == "conflict":
            sync.rejected.append(DeclarationError(
                decl.source_file, "experiment_id",
                f"{decl.experiment_id!r} is already recorded with a different declaration; a started experiment "
                "cannot change: declare a new experiment_id"))
            continue
        (sync.new if outcome == "new" else sync.unchanged).append(decl.experiment_id)
        record_contract(store, contract)
        # Emitting is idempotent (dedupe key), so a crash between insert and emit is repaired on the next run.
        with store.begin() as conn:
            started = store.emit_report(
                conn, event_type=EXPERIMENT_STARTED, severity="INFO", dedupe_key=f"{EXPERIMENT_STARTED}:{decl.experiment_id}",
                experiment_id=decl.experiment_id, topic=OPERATIONS_TOPIC,
                payload={"experiment_id": decl.experiment_id, "variant_slug": decl.variant_slug,
                         "control_slug": decl.control_slug, "mode": decl.mode, "principal": decl.principal,
                         "subject": decl.subject, "traffic_split_pct": decl.traffic_split_pct,
                         "min_samples_for_decision": decl.min_samples_for_decision,
                         "started_at": decl.started_at.isoformat().replace("+00:00", "Z")})
            if started:
                sync.emitted.append(started)
            if decl.large_split:
                warn = store.emit_report(
                    conn, event_type=EXPERIMENT_LARGE_SPLIT_WARN, severity="WARN",
                    dedupe_key=f"{EXPERIMENT_LARGE_SPLIT_WARN}:{decl.experiment_id}", experiment_id=decl.experiment_id,
                    topic=OPERATIONS_TOPIC,
                    payload={"experiment_id": decl.experiment_id, "traffic_split_pct": decl.traffic_split_pct,
                             "message": "traffic_split_pct > 50%: high exposure to the variant; human sign-off required before promotion"})
                if warn:
                    sync.emitted.append(warn)
    for error in sync.rejected:
        log.warning("declaration rejected: %s", error)
    return sync


# ---- ingestion -------------------------------------------------------------------------------------
@dataclass
class IngestionResult:
    files_seen: int = 0
    files_read: int = 0
    lines_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: Counter = field(default_factory=Counter)
    rotated_files: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.lines_read == self.accepted + self.duplicates + self.quarantined


def landing_files(landing_dir: Path) -> list[Path]:
    if not landing_dir.is_dir():
        raise ReportBusUnavailable(f"report bus archive {landing_dir} is not a readable folder")
    try:
        return sorted(p for p in landing_dir.rglob("*.jsonl") if p.is_file())
    except OSError as exc:
        raise ReportBusUnavailable(f"report bus archive {landing_dir} cannot be listed: {exc}") from exc


def ingest_landing(store: Store, landing_dir: Path, *, chunk_lines: int = 50_000, run_id: str | None = None) -> IngestionResult:
    """Read every new complete line of every landing file once; appended lines are picked up next time.

    A trailing line without its newline is a write in progress: it is left for the next run.
    """
    result = IngestionResult()
    state = store.landing_state()
    for path in landing_files(landing_dir):
        result.files_seen += 1
        key = str(path.resolve())
        known = state.get(key, {"byte_offset": 0, "lines_read": 0})
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ReportBusUnavailable(f"cannot stat {path}: {exc}") from exc
        offset, line_no = known["byte_offset"], known["lines_read"]
        if size < offset:
            log.warning("landing file %s shrank (%d < %d bytes): reading it again from the start", path, size, offset)
            result.rotated_files.append(key)
            store.reset_landing_offset(key, line_no)
            offset = 0
        if size == offset:
            continue
        result.files_read += 1
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                while True:
                    lines: list[bytes] = []
                    chunk_start = offset
                    while len(lines) < chunk_lines:
                        line = handle.readline()
                        if not line.endswith(b"\n"):
                            break  # EOF, or a partial last line still being written
                        lines.append(line)
                        offset += len(line)
                    if not lines:
                        break
                    _ingest_chunk(store, result, key, lines, chunk_start, offset, line_no + 1, size, run_id)
                    line_no += len(lines)
        except OSError as exc:
            raise ReportBusUnavailable(f"cannot read {path}: {exc}") from exc
    return result


def _ingest_chunk(store: Store, result: IngestionResult, source: str, lines: list[bytes], start: int, end: int,
                  first_line: int, size: int, run_id: str | None) -> None:
    fills: list[tuple[int, Fill]] = []
    rejections: list[QuarantineRow] = []
    for index, raw in enumerate(lines):
        body = raw.rstrip(b"\n").rstrip(b"\r")
        outcome = validate_line(body)
        line_number = first_line + index
        if isinstance(outcome, Fill):
            fills.append((line_number, outcome))
        else:
            rejections.append(QuarantineRow(line_number, outcome.reason_code, outcome.detail, bounded_raw_text(body), outcome.report_id))
    account = store.ingest_batch(source_file=source, from_offset=start, to_offset=end, first_line=first_line,
                                 size_seen=size, fills=fills, rejections=rejections, run_id=run_id)
    result.lines_read += account.lines_read
    result.accepted += account.accepted
    result.duplicates += account.duplicates
    result.quarantined += account.quarantined
    for row in rejections:
        result.quarantine_reasons[row.reason_code] += 1
    conflicts = account.quarantined - len(rejections)
    if conflicts:
        result.quarantine_reasons["REPORT_CONFLICTING_REDELIVERY"] += conflicts


# ---- matched-pair samples --------------------------------------------------------------------------
@dataclass
class SamplingResult:
    experiment_id: str
    mode: str
    new_samples: int
    total_samples: int
    orphan_variant: int
    orphan_control: int
    first_new_n: int | None
    last_new_n: int | None
    batch_mean_edge_delta_bps: float | None


def record_samples(store: Store, experiment_id: str) -> SamplingResult:
    """Pair the experiment's unpaired fills and append the new pairs as samples (never renumbering old ones)."""
    exp = store.get_experiment_row(experiment_id)
    if exp is None:
        raise KeyError(f"experiment {experiment_id!r} is not registered; declare it in the experiments folder")
    with store.begin() as conn:
        store.lock_experiment(conn, experiment_id)
        tail_n, tail_hash = store.sample_tail(conn, experiment_id)
        if tail_n:
            _check_tail(store, conn, experiment_id, tail_n, tail_hash)
        variants, controls = store.unpaired_candidates(conn, exp)
        if exp["mode"] == "shadow_only":
            pairs = pair_shadow(variants, controls)
        else:
            pairs = pair_limited_live(variants, controls, caliper_ms=int(round(exp["caliper_seconds"] * 1000)))
        rows = build_sample_rows(experiment_id, pairs, first_n=tail_n + 1, prev_hash=tail_hash)
        store.append_samples(conn, rows)
        total = tail_n + len(rows)
        # The newest sample time so far: the previous state's, or a newer pair's (no scan of the samples).
        previous_last = store.last_sample_time_state(conn, experiment_id)
        last_at = max([t for t in [previous_last, *(r["recorded_at_ms"] for r in rows)] if t is not None], default=None)
        store.save_pairing_state(conn, experiment_id, total, len(variants) - len(pairs), len(controls) - len(pairs), last_at,
                                 appended=len(rows))
        batch_mean = sum(r["edge_delta_bps"] for r in rows) / len(rows) if rows else None
        if rows:
            last = rows[-1]
            store.emit_report(
                conn, event_type=SAMPLE_RECORDED, severity="DEBUG", report_kind="DeveloperReport", topic=DEVELOPER_TOPIC,
                dedupe_key=f"{SAMPLE_RECORDED}:{experiment_id}:{last['sample_n']}", experiment_id=experiment_id,
                payload={"experiment_id": experiment_id, "sample_n": last["sample_n"],
                         "first_sample_n": rows[0]["sample_n"], "samples_in_batch": len(rows),
                         "variant_fill_pusd": last["variant_fill_pusd"], "control_fill_pusd": last["control_fill_pusd"],
                         "edge_delta_bps": round(last["edge_delta_bps"], 6),
                         "batch_mean_edge_delta_bps": round(batch_mean, 6)})
    return SamplingResult(experiment_id, exp["mode"], len(rows), total, len(variants) - len(pairs), len(controls) - len(pairs),
                          rows[0]["sample_n"] if rows else None, rows[-1]["sample_n"] if rows else None, batch_mean)


def _check_tail(store: Store, conn: Any, experiment_id: str, tail_n: int, tail_hash: str) -> None:
    """Refuse to extend a chain whose last row no longer matches its hash (tampering since the last run)."""
    row = store.get_sample(conn, experiment_id, tail_n)
    if sample_hash(row, row["prev_hash"]) != tail_hash:
        raise ImmutableSampleError(f"{experiment_id}: sample {tail_n} no longer matches its hash; refusing to append")


def verify_samples(store: Store, experiment_id: str) -> tuple[int, ChainBreak | None]:
    """Recompute the whole hash chain of one experiment; returns (rows checked, first break or None)."""
    count = 0

    def counted():
        nonlocal count
        for row in store.iter_samples(experiment_id):
            count += 1
            yield row

    broken = verify_chain(counted())
    return count, broken


# ---- stalls (spec sections 18, 19: REPORT_BUS_UNAVAILABLE) -----------------------------------------------
EXPERIMENT_STALLED = "EXPERIMENT_STALLED"
EXPERIMENT_RESUMED = "EXPERIMENT_RESUMED"


def apply_stall_changes(store: Store, changes: list, now_ms: int) -> list[dict[str, Any]]:
    """Open or close stall episodes; EXPERIMENT_STALLED once per episode (WARN), EXPERIMENT_RESUMED on recovery."""
    emitted = []
    for change in changes:
        if change.action == "stall":
            episode = store.open_stall(change.experiment_id, change.reason, change.detail, now_ms)
            if episode is None:
                continue
            event, severity = EXPERIMENT_STALLED, "WARN"
            payload = {"experiment_id": change.experiment_id, "reason": change.reason, "detail": change.detail,
                       "stall_id": episode["id"], "message": "Report bus unavailable or silent; sampling paused."}
            key = f"{EXPERIMENT_STALLED}:{change.experiment_id}:{episode['id']}"
        else:
            episode = store.resolve_stall(change.experiment_id, now_ms)
            if episode is None:
                continue
            event, severity = EXPERIMENT_RESUMED, "INFO"
            payload = {"experiment_id": change.experiment_id, "reason": change.reason, "detail": change.detail,
                       "stall_id": episode["id"], "stalled_for_ms": now_ms - episode["started_at_ms"]}
            key = f"{EXPERIMENT_RESUMED}:{change.experiment_id}:{episode['id']}"
        with store.begin() as conn:
            report = store.emit_report(conn, event_type=event, severity=severity, dedupe_key=key,
                                       experiment_id=change.experiment_id, topic=OPERATIONS_TOPIC, payload=payload)
        if report:
            emitted.append(report)
    return emitted
