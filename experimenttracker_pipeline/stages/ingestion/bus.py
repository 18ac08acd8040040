"""Ingest fill reports from the report bus: a NATS JetStream stream read through a durable pull consumer.

Each message carries the JSON of one landing line and goes through the same validation, quarantine codes,
de-duplication and accounting (`source` = the stream name, `line` = the stream sequence). A message is acked only
after the transaction that stores it (or its quarantine row) and its stream sequence has committed, so a crash
between commit and ack redelivers a message that is then counted as a duplicate: never stored twice, never lost.
Reports on the shared topic that are not fills (other bots' reports, this bot's own EXPERIMENT_* reports) are
counted as ignored, not quarantined. When the store is down nothing is acked and the messages wait on the bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.ingestion.landing import ReportBusUnavailable
from experimenttracker_pipeline.stages.ingestion.validation import (
    REPORT_DUPLICATE_KEY,
    REPORT_EMPTY_LINE,
    REPORT_INVALID_ENCODING,
    REPORT_INVALID_JSON,
    REPORT_LINE_TOO_LONG,
    REPORT_NOT_OBJECT,
    REPORT_UNPROCESSABLE,
    Fill,
    bounded_raw_text,
    validate_line,
)
from experimenttracker_pipeline.store import Store, StoreUnavailable
from experimenttracker_pipeline.stages.ingestion.queries import BusBatchAccount, QuarantineRow, ingest_bus_batch

log = logging.getLogger(__name__)

# How long the stream remembers a Nats-Msg-Id (publishes of the same report id inside it are de-duplicated).
DUPLICATE_WINDOW_SECONDS = 900.0
# Messages whose kind cannot be read reliably: quarantined, never "ignored" (with a key given twice, whether it is
# a fill depends on which value a parser keeps).
_NOT_A_REPORT = {REPORT_EMPTY_LINE, REPORT_LINE_TOO_LONG, REPORT_INVALID_ENCODING, REPORT_INVALID_JSON, REPORT_NOT_OBJECT,
                 REPORT_DUPLICATE_KEY}

T = TypeVar("T")


@dataclass(frozen=True)
class BusConfig:
    """Where the report bus is and how this bot reads it (from `Settings`)."""

    url: str
    stream: str = "REPORTS"
    subjects: tuple[str, ...] = ("polytraders.reports.>",)
    consumer: str = "experimenttracker"
    batch_size: int = 1000
    max_per_run: int = 50_000
    ack_wait_seconds: float = 60.0
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    connect_timeout_seconds: float = 2.0

    @property
    def api_timeout_seconds(self) -> float:
        """JetStream API calls once connected: a loaded server may take seconds; reaching it is bounded by connect."""
        return max(self.connect_timeout_seconds, 5.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> "BusConfig | None":
        """The bus settings, or None when EXPERIMENTTRACKER_BUS_URL is unset (no bus)."""
        if not settings.bus_url:
            return None
        return cls(url=settings.bus_url, stream=settings.bus_stream, subjects=settings.bus_subjects,
                   consumer=settings.bus_consumer, batch_size=settings.bus_batch_size,
                   max_per_run=settings.bus_max_per_run, ack_wait_seconds=settings.bus_ack_wait_seconds,
                   creds_file=settings.bus_creds_file, tls_ca_file=settings.bus_tls_ca_file,
                   connect_timeout_seconds=settings.bus_connect_timeout_seconds)


@dataclass(frozen=True)
class BusBacklog:
    """The durable consumer's position (one cheap `consumer_info` call)."""

    pending: int          # messages in the stream not yet delivered to the consumer
    ack_pending: int      # delivered, not yet acked (in flight, or waiting for redelivery after ack_wait)
    redelivered: int
    delivered_seq: int    # last stream sequence delivered
    ack_floor_seq: int    # every stream sequence up to here is acked
    stream_last_seq: int

    @property
    def outstanding(self) -> int:
        return self.pending + self.ack_pending


@dataclass
class BusIngestionResult:
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    ignored: int = 0
    redelivered: int = 0
    batches: int = 0
    quarantine_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        return self.messages == self.accepted + self.duplicates + self.quarantined + self.ignored

    def add(self, account: BusBatchAccount) -> None:
        self.messages += account.messages
        self.accepted += account.accepted
        self.duplicates += account.duplicates
        self.quarantined += account.quarantined
        self.ignored += account.ignored
        self.redelivered += account.redelivered
        self.batches += 1
        self.quarantine_reasons.update(account.quarantine_reasons)


# ---- connection -------------------------------------------------------------------------------------------
async def connect(config: BusConfig, *, reconnect_attempts: int = 2) -> Any:
    """A NATS connection, or ReportBusUnavailable. A small positive attempt count makes an unreachable server fail
    in seconds (nats-py treats 0 or less as unlimited)."""
    import nats

    options: dict[str, Any] = {
        "servers": [s.strip() for s in config.url.split(",")],
        "connect_timeout": config.connect_timeout_seconds,
        "max_reconnect_attempts": max(1, reconnect_attempts),
        "reconnect_time_wait": 0.5,
        "error_cb": _quiet,
        "name": f"experimenttracker:{config.consumer}",
    }
    if config.creds_file is not None:
        options["user_credentials"] = str(config.creds_file)
    if config.tls_ca_file is not None or any(s.strip().startswith(("tls://", "wss://")) for s in config.url.split(",")):
        options["tls"] = ssl.create_default_context(cafile=str(config.tls_ca_file) if config.tls_ca_file else None)
    try:
        return await nats.connect(**options)
    except Exception as exc:  # NoServersError, OSError, TimeoutError, auth errors: all mean "cannot read the bus"
        raise ReportBusUnavailable(f"report bus {config.url} unreachable: {_describe(exc)}") from exc


async def _quiet(exc: Exception) -> None:
    # Without an error callback nats-py logs a traceback for every failed reconnect attempt.
    log.debug("report bus connection: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":") if str(exc) else type(exc).__name__


async def ensure_stream(js: Any, config: BusConfig) -> Any:
    """The stream's info; the stream is created with the configured subjects when it does not exist, and used as
    it is when it does."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(config.stream)
    except NotFoundError:
        log.info("creating JetStream stream %s for %s", config.stream, ", ".join(config.subjects))
        return await js.add_stream(StreamConfig(name=config.stream, subjects=list(config.subjects),
                                                storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_SECONDS))


async def ensure_consumer(js: Any, config: BusConfig) -> Any:
    """Create (or update) the durable pull consumer and return its info.

    Explicit acks; no delivery limit, because a server that gives up on a message after N deliveries drops it
    silently. A message that cannot be processed is quarantined by this module instead.
    """
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    # One filter subject when one is configured (NATS 2.9 has no multi-subject filters); otherwise the whole stream.
    filter_subject = config.subjects[0] if len(config.subjects) == 1 else None
    return await js.add_consumer(config.stream, ConsumerConfig(
        durable_name=config.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=config.ack_wait_seconds, max_deliver=-1, max_ack_pending=max(1000, 4 * config.batch_size),
        filter_subject=filter_subject))


def run_on_bus(config: BusConfig, work: Callable[[Any], Awaitable[T]], *, reconnect_attempts: int = 2) -> T:
    """Connect, run ``work(nc)``, close; every bus-side failure becomes ReportBusUnavailable."""

    async def main() -> T:
        nc = await connect(config, reconnect_attempts=reconnect_attempts)
        try:
            return await work(nc)
        finally:
            try:
                await asyncio.wait_for(nc.close(), timeout=config.connect_timeout_seconds + 1)
            except Exception:  # closing a broken connection must not hide the real outcome
                pass

    try:
        return asyncio.run(main())
    except (ReportBusUnavailable, StoreUnavailable):
        raise
    except Exception as exc:
        if _is_bus_error(exc):
            raise ReportBusUnavailable(f"report bus {config.url}: {_describe(exc)}") from exc
        raise


def _is_bus_error(exc: BaseException) -> bool:
    import nats.errors
    import nats.js.errors

    return isinstance(exc, (nats.errors.Error, asyncio.TimeoutError, OSError)) and not isinstance(
        exc, nats.js.errors.BadRequestError)


async def _backlog(js: Any, config: BusConfig) -> BusBacklog:
    stream = await ensure_stream(js, config)
    info = await ensure_consumer(js, config)
    return BusBacklog(pending=int(info.num_pending or 0), ack_pending=int(info.num_ack_pending or 0),
                      redelivered=int(info.num_redelivered or 0),
                      delivered_seq=int(info.delivered.stream_seq or 0) if info.delivered else 0,
                      ack_floor_seq=int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
                      stream_last_seq=int(stream.state.last_seq or 0))


def consumer_backlog(config: BusConfig) -> BusBacklog:
    """The consumer's pending counts (what the bus sensor and the metrics read). Raises ReportBusUnavailable."""

    async def work(nc: Any) -> BusBacklog:
        return await _backlog(nc.jetstream(timeout=config.api_timeout_seconds), config)

    return run_on_bus(config, work, reconnect_attempts=1)


def report_bus_error(config: BusConfig | None) -> str | None:
    """None when the bus answers (or none is configured), else why it cannot be read."""
    if config is None:
        return None
    try:
        consumer_backlog(config)
    except ReportBusUnavailable as exc:
        return str(exc)
    return None


# ---- consumption ------------------------------------------------------------------------------------------
def classify(stream_seq: int, body: bytes) -> Fill | QuarantineRow | None:
    """A validated fill, a quarantine row (line number = stream sequence), or None for a report that is not a fill."""
    if body.endswith(b"\n"):
        body = body[:-1].rstrip(b"\r")
    try:
        outcome = validate_line(body)
    except Exception as exc:  # validation must not stop the bus: the message is quarantined with the error
        return QuarantineRow(stream_seq, REPORT_UNPROCESSABLE, _storable(f"validation failed: {_describe(exc)}"),
                             bounded_raw_text(body), None)
    if isinstance(outcome, Fill):
        return outcome
    if outcome.reason_code not in _NOT_A_REPORT and _is_other_report(body):
        return None
    return QuarantineRow(stream_seq, outcome.reason_code, outcome.detail, bounded_raw_text(body),
                         _storable_or_none(outcome.report_id))


def _is_other_report(body: bytes) -> bool:
    """A report of another kind or event type (any bot's), which this bot does not ingest."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    event_type, kind = obj.get("event_type"), obj.get("report_kind")
    return (isinstance(event_type, str) and event_type != "FILL") or (isinstance(kind, str) and kind != "OperationsReport")


def _storable(text: str) -> str:
    # Lone surrogates (valid JSON escapes) cannot be encoded for any database driver.
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _storable_or_none(text: str | None) -> str | None:
    if text is None:
        return None
    return text if _storable(text) == text else None


def store_deliveries(store: Store, stream: str, deliveries: list[tuple[int, Fill | QuarantineRow | None]],
                     raw: dict[int, bytes], run_id: str | None) -> list[BusBatchAccount]:
    """Store one fetched batch in one transaction. If that fails for a reason other than an unreachable store
    (a message the database refuses), store the messages one by one and quarantine each one that still fails
    as REPORT_UNPROCESSABLE, so one poison message never blocks the others."""
    try:
        return [ingest_bus_batch(store, stream=stream, deliveries=deliveries, run_id=run_id)]
    except StoreUnavailable:
        raise
    except Exception as exc:
        log.warning("bus batch of %d messages could not be stored (%s); storing them one by one", len(deliveries), _describe(exc))
    accounts = []
    for seq, item in deliveries:
        try:
            accounts.append(ingest_bus_batch(store, stream=stream, deliveries=[(seq, item)], run_id=run_id))
        except StoreUnavailable:
            raise
        except Exception as exc:
            report_id = item.report_id if isinstance(item, (Fill, QuarantineRow)) else None
            row = QuarantineRow(seq, REPORT_UNPROCESSABLE, _storable(f"could not be stored: {_describe(exc)}")[:1000],
                                bounded_raw_text(raw.get(seq, b"")), _storable_or_none(report_id))
            log.warning("bus message %s:%d quarantined as %s: %s", stream, seq, REPORT_UNPROCESSABLE, row.detail)
            accounts.append(ingest_bus_batch(store, stream=stream, deliveries=[(seq, row)], run_id=run_id))
    return accounts


def ingest_bus(store: Store, config: BusConfig, *, max_messages: int | None = None, run_id: str | None = None,
               fetch_timeout: float = 1.0) -> BusIngestionResult:
    """Pull, store and ack messages in batches of ``config.batch_size`` until none is waiting or ``max_messages``
    were handled. ``max_messages=None`` drains what was outstanding when the call started (so a steady inflow
    cannot keep it running). Raises ReportBusUnavailable (nothing stored is lost: unacked messages are
    redelivered) or StoreUnavailable (nothing is acked; the messages wait on the bus)."""
    started = time.perf_counter()
    result = BusIngestionResult()

    async def work(nc: Any) -> BusIngestionResult:
        js = nc.jetstream(timeout=config.api_timeout_seconds)
        backlog = await _backlog(js, config)
        limit = max_messages if max_messages is not None else max(backlog.outstanding, 1)
        subscription = await js.pull_subscribe_bind(durable=config.consumer, stream=config.stream)
        import nats.errors

        store.ping()  # an unreachable store: fetch nothing, so nothing is delivered in vain
        fetched = 0
        in_flight: tuple[asyncio.Task, list] | None = None  # the previous batch, being stored

        async def settle() -> None:
            # Only after the commit: a crash before these acks redelivers messages the ledger already knows.
            task, messages = in_flight
            for account in await task:
                result.add(account)
            for message in messages:
                await message.ack()

        try:
            while fetched < limit:
                want = min(config.batch_size, limit - fetched)
                try:
                    messages = await subscription.fetch(batch=want, timeout=fetch_timeout)
                except asyncio.TimeoutError:
                    # nothing waiting: nats-py raises its TimeoutError (a subclass), or asyncio's own when the timer
                    # fires inside its pull request; neither means the bus is unreachable
                    break
                fetched += len(messages)
                deliveries, raw = [], {}
                for message in messages:
                    seq = int(message.metadata.sequence.stream)
                    raw[seq] = message.data
                    deliveries.append((seq, classify(seq, message.data)))
                if in_flight is not None:
                    await settle()
                # Store this batch in a worker thread while the next one is fetched and validated: the database
                # round trips overlap with the bus and with validation. One batch in flight keeps commits in order.
                in_flight = (asyncio.create_task(asyncio.to_thread(
                    store_deliveries, store, config.stream, deliveries, raw, run_id)), messages)
            if in_flight is not None:
                await settle()
                in_flight = None
        finally:
            if in_flight is not None:  # an error elsewhere: let the store finish, ack nothing more
                await asyncio.gather(in_flight[0], return_exceptions=True)
        await nc.flush(timeout=config.api_timeout_seconds)
        return result

    try:
        return run_on_bus(config, work)
    finally:
        result.seconds = time.perf_counter() - started
