"""Store queries of the design stage: the control strategy's fill history and the paired deltas of earlier
experiments that compared against the same control.

Every aggregate is computed in SQL (count, sums about the mean, day span), so a proposal never loads fill rows.
Sums are taken about the mean found by a first pass: the variance stays exact for values far from zero.
"""

from __future__ import annotations

import json
import operator
from functools import reduce
from typing import Mapping, Sequence

import sqlalchemy as sa

from experimenttracker_pipeline.stages.design.history import DAY_MS, FillHistory, PairingHistory
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.design.allocation import EXPERIMENT_ALLOCATION_RECOMMENDED
from experimenttracker_pipeline.store.schema import experiment_samples, experiments, operations_reports, raw_reports

# Per-fill value of each metric whose control history can be read from the fills (a sample delta's variance is
# built from two fills of this metric). fill_size_ratio has no per-fill analogue.
_r = raw_reports.c
FILL_METRICS: dict[str, sa.ColumnElement] = {
    "edge_delta_bps": _r.edge_pusd / _r.notional_pusd * 10000.0,
    "slippage_delta_bps": _r.slippage_bps,
    "fill_quality_delta": _r.fill_quality,
}
_s = experiment_samples.c
SAMPLE_METRICS: dict[str, sa.ColumnElement] = {
    "edge_delta_bps": _s.edge_delta_bps,
    "slippage_delta_bps": _s.slippage_delta_bps,
    "fill_quality_delta": _s.fill_quality_delta,
}


def _scope(slug: str, metric: sa.ColumnElement, modes: Sequence[str], markets: Sequence[str] | None,
           since_ms: int | None, until_ms: int | None) -> list[sa.ColumnElement]:
    where = [_r.strategy_slug == slug, _r.mode.in_(list(modes)), metric.is_not(None)]
    if markets:
        where.append(_r.market_id.in_(list(markets)))
    if since_ms is not None:
        where.append(_r.recorded_at_ms >= since_ms)
    if until_ms is not None:
        where.append(_r.recorded_at_ms < until_ms)
    return where


def fill_history(store: Store, slug: str, metric: str = "edge_delta_bps", *, modes: Sequence[str] = ("live",),
                 markets: Sequence[str] | None = None, since_ms: int | None = None,
                 until_ms: int | None = None) -> FillHistory:
    """The history of ``metric`` over the fills of strategy ``slug`` (live fills by default) in ``markets``."""
    x = FILL_METRICS[metric]
    where = _scope(slug, x, modes, markets, since_ms, until_ms)
    day = _r.recorded_at_ms // DAY_MS  # integer (floor) division on both backends
    with store.begin() as conn:
        first = conn.execute(sa.select(sa.func.count(), sa.func.avg(x), sa.func.min(_r.recorded_at_ms),
                                       sa.func.max(_r.recorded_at_ms), sa.func.count(sa.distinct(_r.market_id)))
                             .where(*where)).one()
        n, mean, first_ms, last_ms, markets_n = int(first[0]), first[1], first[2], first[3], int(first[4])
        if n == 0:
            return FillHistory(0, None, 0.0, 0.0, None, None, 0, 0, 0)
        mean = float(mean)
        dev = x - mean
        second = conn.execute(sa.select(sa.func.sum(dev * dev), sa.func.sum(dev * dev * dev),
                                        sa.func.count(sa.distinct(day))).where(*where)).one()
    first_day, last_day = int(first_ms) // DAY_MS, int(last_ms) // DAY_MS
    return FillHistory(n, mean, float(second[0] or 0.0), float(second[1] or 0.0), int(first_ms), int(last_ms),
                       int(second[2]), last_day - first_day + 1, markets_n)


def pairing_history(store: Store, control_slug: str, metric: str = "edge_delta_bps", *,
                    mode: str | None = None, markets: Sequence[str] | None = None) -> list[PairingHistory]:
    """Per earlier experiment with this control (and ``mode``), the sums of its stored paired deltas."""
    d = SAMPLE_METRICS[metric]
    e = experiments.c
    where = [e.control_slug == control_slug, d.is_not(None)]
    if mode is not None:
        where.append(e.mode == mode)
    if markets:
        where.append(_s.market_id.in_(list(markets)))
    join = experiment_samples.join(experiments, e.experiment_id == _s.experiment_id)
    with store.begin() as conn:
        firsts = conn.execute(sa.select(e.experiment_id, e.mode, sa.func.count(), sa.func.avg(d))
                              .select_from(join).where(*where).group_by(e.experiment_id, e.mode)
                              .order_by(e.experiment_id)).all()
        out = []
        for experiment_id, exp_mode, n, mean in firsts:
            dev = d - float(mean)
            ss = conn.execute(sa.select(sa.func.sum(dev * dev)).select_from(join)
                              .where(*where, e.experiment_id == experiment_id)).scalar_one()
            out.append(PairingHistory(experiment_id, exp_mode, int(n), float(mean), float(ss or 0.0)))
    return out


def arm_outcomes(store: Store, slugs: Sequence[str], metric: str = "edge_delta_bps", *, since_ms: int,
                 experiment_id: str | None = None, modes: Sequence[str] = ("live",),
                 weights: Mapping[str, float] | None = None,
                 exclude_markets: Sequence[str] = ()) -> dict[str, tuple[int, float, float]]:
    """Per strategy slug: (n, mean, centred sum of squares) of ``metric`` over its fills of an experiment (recorded
    at or after ``since_ms``, with no ``experiment_id`` or this one). With ``weights`` (metric -> weight) each fill
    is scored by the weighted sum of its per-fill metrics instead (the goal surface's scalarisation); a fill
    missing one of them (e.g. no fill_quality) is left out, as are fills in ``exclude_markets``."""
    if weights:
        x = reduce(operator.add, [w * FILL_METRICS[m] for m, w in sorted(weights.items())])
    else:
        x = FILL_METRICS[metric]
    where = [_r.strategy_slug.in_(list(slugs)), _r.mode.in_(list(modes)), x.is_not(None),
             _r.recorded_at_ms >= since_ms]
    if experiment_id is not None:
        where.append(sa.or_(_r.experiment_id.is_(None), _r.experiment_id == experiment_id))
    if exclude_markets:
        where.append(_r.market_id.not_in(list(exclude_markets)))
    out: dict[str, tuple[int, float, float]] = {}
    with store.begin() as conn:
        firsts = conn.execute(sa.select(_r.strategy_slug, sa.func.count(), sa.func.avg(x)).where(*where)
                              .group_by(_r.strategy_slug)).all()
        for slug, n, mean in firsts:
            dev = x - float(mean)
            ss = conn.execute(sa.select(sa.func.sum(dev * dev)).where(*where, _r.strategy_slug == slug)).scalar_one()
            out[slug] = (int(n), float(mean), float(ss or 0.0))
    return out


def latest_allocation_report(store: Store, experiment_id: str) -> dict | None:
    """The payload of the experiment's newest EXPERIMENT_ALLOCATION_RECOMMENDED report, or None."""
    t = operations_reports.c
    payload = store.scalar(sa.select(t.payload_json).where(
        t.experiment_id == experiment_id, t.event_type == EXPERIMENT_ALLOCATION_RECOMMENDED)
        .order_by(t.created_at.desc(), t.report_id.desc()).limit(1))
    return json.loads(payload) if payload is not None else None
