"""The outbox relay: every row of `operations_reports` is published to the report bus on its own topic
(OperationsReports to `polytraders.reports.operations`, developer reports to `polytraders.reports.developer`).

A row is recorded as published (`report_publications`) only after its JetStream PubAck, and each message carries
`Nats-Msg-Id` = `report_id`, so a retry after a crash between the PubAck and that record is de-duplicated by the
server (within the stream's duplicate window). Rows go out oldest first; a backlog left by an outage drains on
the next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, ReportBusUnavailable, run_on_bus, ensure_stream
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.publishing.queries import record_publications, unpublished_reports

log = logging.getLogger(__name__)


class ReportPublishError(RuntimeError):
    """The bus refused a report (for example no stream captures its subject)."""


@dataclass
class RelayResult:
    published: int = 0
    already_on_bus: int = 0   # PubAck said duplicate: an earlier attempt had published it
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None


def publish_outbox(store: Store, config: BusConfig, *, page: int = 500, limit: int | None = None) -> RelayResult:
    """Publish unpublished outbox rows in pages until none is left (or ``limit`` rows were handled).

    Raises ReportBusUnavailable when the bus cannot be reached; rows published before that are recorded."""
    result = RelayResult()
    started = time.perf_counter()

    async def work(nc: Any) -> RelayResult:
        js = nc.jetstream(timeout=config.api_timeout_seconds)
        await ensure_stream(js, config)
        while limit is None or result.published + result.already_on_bus < limit:
            rows = unpublished_reports(store, page if limit is None else min(page, limit - result.published - result.already_on_bus))
            if not rows:
                break
            futures = [await js.publish_async(row["topic"], row["payload_json"].encode("utf-8"),
                                              headers={"Nats-Msg-Id": row["report_id"]}) for row in rows]
            acks = await asyncio.gather(*futures, return_exceptions=True)
            done, errors = [], []
            for row, ack in zip(rows, acks):
                if isinstance(ack, BaseException):
                    errors.append((row["report_id"], ack))
                    continue
                done.append({"report_id": row["report_id"], "subject": row["topic"], "stream": ack.stream,
                             "stream_seq": int(ack.seq), "duplicate": bool(ack.duplicate)})
            record_publications(store, done)  # after the PubAcks, never before
            result.published += sum(1 for d in done if not d["duplicate"])
            result.already_on_bus += sum(1 for d in done if d["duplicate"])
            if errors:
                result.failed += len(errors)
                report_id, error = errors[0]
                raise ReportPublishError(f"{len(errors)} report(s) not acknowledged by the bus, first {report_id}: "
                                         f"{type(error).__name__}: {error}") from error
        return result

    try:
        return run_on_bus(config, work)
    except ReportPublishError as exc:
        result.error = str(exc)
        if _looks_unreachable(exc):
            raise ReportBusUnavailable(str(exc)) from exc
        raise
    finally:
        result.seconds = time.perf_counter() - started


def _looks_unreachable(exc: ReportPublishError) -> bool:
    import nats.errors

    return isinstance(exc.__cause__, (nats.errors.ConnectionClosedError, nats.errors.TimeoutError, asyncio.TimeoutError))
