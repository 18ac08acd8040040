"""Prometheus metrics of the tracker, computed at scrape time from the store by a custom collector, so every
process serving them agrees and nothing is lost on restart.

The four metrics of spec section 15 keep their exact names, types and labels; the rest are what on-call needs
(README "Metrics" lists them all)."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from experimenttracker_pipeline.observability.readings import read_store
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, ReportBusUnavailable, consumer_backlog
from experimenttracker_pipeline.store import Store

log = logging.getLogger(__name__)
PREFIX = "polytraders_gov_experimenttracker_"


class StoreCollector(Collector):
    """Reads the store (and the bus consumer, when configured) once per scrape. A failing source is reported as
    `..._store_up 0` / `..._bus_up 0`; the scrape itself never fails."""

    def __init__(self, store: Store, bus: BusConfig | None = None, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.bus = bus
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # no store query when the collector is registered

    def collect(self) -> Iterable[Metric]:
        yield from self._store_metrics()
        if self.bus is not None:
            yield from self._bus_metrics()

    def _store_metrics(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(PREFIX + "store_up", "1 when the experiment store answered this scrape, else 0")
        try:
            r = read_store(self.store)
        except Exception as exc:  # an unreachable or broken store must show as a value, not a failed scrape
            log.warning("metrics: experiment store unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now_ms = self.clock() * 1000

        # ---- spec section 15 --------------------------------------------------------------------------------
        experiments = CounterMetricFamily(PREFIX + "experiments", "Experiments that reached each verdict (distinct "
                                          "experiments in the append-only verdict history)", labels=["verdict"])
        for verdict, n in sorted(r.experiments_by_verdict.items()):
            experiments.add_metric([verdict], n)
        yield experiments
        samples = CounterMetricFamily(PREFIX + "samples", "Matched-pair samples recorded, per active or stalled "
                                      "experiment", labels=["experiment_id"])
        for row in r.running:
            samples.add_metric([row["experiment_id"]], row["samples"])
        yield samples
        edge = GaugeMetricFamily(PREFIX + "edge_delta_bps", "Edge delta between variant and control (bps) at the "
                                 "experiment's latest evaluation", labels=["experiment_id"])
        for experiment_id, value in sorted(r.edge_delta_bps.items()):
            edge.add_metric([experiment_id], value)
        yield edge
        drift = CounterMetricFamily(PREFIX + "drift_signals", "Drift signals sent to the StrategyRegistry",
                                    labels=["slug"])
        for slug, n in sorted(r.drift_signals_by_slug.items()):
            drift.add_metric([slug], n)
        yield drift

        # ---- on-call -----------------------------------------------------------------------------------------
        by_status = GaugeMetricFamily(PREFIX + "experiments_by_status", "Declared experiments by status",
                                      labels=["status"])
        for status, n in sorted(r.experiments_by_status.items()):
            by_status.add_metric([status], n)
        yield by_status
        yield GaugeMetricFamily(PREFIX + "stalled_experiments", "Experiments currently stalled (bus unavailable or "
                                "no samples within the stall window)", value=r.experiments_by_status.get("stalled", 0))
        age = GaugeMetricFamily(PREFIX + "last_sample_age_seconds", "Seconds since samples were last appended "
                                "(since registration when none yet), per active or stalled experiment",
                                labels=["experiment_id"])
        for row in r.running:
            if row["last_ms"] is not None:
                age.add_metric([row["experiment_id"]], max(0.0, (now_ms - row["last_ms"]) / 1000))
        yield age
        quarantined = CounterMetricFamily(PREFIX + "quarantined_reports", "Report lines and messages quarantined, "
                                          "by reason code", labels=["reason_code"])
        for code, n in sorted(r.quarantined_by_reason.items()):
            quarantined.add_metric([code], n)
        yield quarantined
        ingested = CounterMetricFamily(PREFIX + "ingested_reports", "Report lines and bus messages ingested, by "
                                       "outcome (accepted, duplicate, quarantined, ignored)", labels=["outcome"])
        for outcome, n in r.ingested_by_outcome.items():
            ingested.add_metric([outcome], n)
        yield ingested
        signals = GaugeMetricFamily(PREFIX + "registry_signals", "Drift signals in the registry outbox by delivery "
                                    "status", labels=["status"])
        for status in ("pending", "delivered"):
            signals.add_metric([status], r.signals_by_status.get(status, 0))
        yield signals
        yield GaugeMetricFamily(PREFIX + "registry_signals_failing", "Pending drift signals whose delivery has failed "
                                "at least once", value=r.signals_failing)
        yield GaugeMetricFamily(PREFIX + "outbox_unpublished_reports", "Emitted reports not yet published to the "
                                "report bus", value=r.unpublished_reports)
        durations = SummaryMetricFamily(PREFIX + "stage_duration_seconds", "Wall time of pipeline stages "
                                        "(ingestion runs, evaluations)", labels=["stage"])
        last = GaugeMetricFamily(PREFIX + "stage_last_duration_seconds", "Wall time of the latest run of each stage",
                                 labels=["stage"])
        for stage, d in sorted(r.stage_durations.items()):
            durations.add_metric([stage], count_value=d["runs"], sum_value=d["total_seconds"])
            last.add_metric([stage], d["last_seconds"])
        yield durations
        yield last

    def _bus_metrics(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(PREFIX + "bus_up", "1 when the report bus consumer answered this scrape, else 0")
        try:
            backlog = consumer_backlog(self.bus)
        except ReportBusUnavailable as exc:
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = [self.bus.stream, self.bus.consumer]
        pending = GaugeMetricFamily(PREFIX + "bus_consumer_pending_messages", "Messages on the report bus not yet "
                                    "delivered to this bot's consumer (lag)", labels=["stream", "consumer"])
        pending.add_metric(labels, backlog.pending)
        yield pending
        ack_pending = GaugeMetricFamily(PREFIX + "bus_consumer_ack_pending_messages", "Messages delivered and not yet "
                                        "acknowledged", labels=["stream", "consumer"])
        ack_pending.add_metric(labels, backlog.ack_pending)
        yield ack_pending


def build_registry(store: Store, bus: BusConfig | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, bus))
    return registry
