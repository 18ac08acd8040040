"""Store queries of the causal effects stage: the rows the estimators read, and the estimates they produce."""

from __future__ import annotations

import json
from typing import Any, Mapping

import sqlalchemy as sa

from experimenttracker_pipeline.stages.ingestion.queries import tagged_for
from experimenttracker_pipeline.stages.intervals.queries import live_fills_of
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import causal_estimates, experiment_samples, raw_reports


def experiment_fills(store: Store, exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Live fills of both arms (limited-live causal analysis): treatment flag, outcome in bps, propensity, covariates."""
    r = raw_reports.c
    return store.rows(sa.select(
        r.report_id, sa.case((r.strategy_slug == exp["variant_slug"], 1), else_=0).label("treatment"),
        (r.edge_pusd / r.notional_pusd * 10000.0).label("outcome_bps"), r.assignment_propensity.label("propensity"),
        r.covariates_json, r.market_id, r.recorded_at_ms).where(*live_fills_of(exp)).order_by(r.recorded_at_ms, r.report_id))


def logged_fills(store: Store, exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The logging (control) strategy's live fills since the experiment started, with their logged propensities
    (a sandbox experiment's logs): outcome in bps of notional, as for every other causal estimate."""
    r = raw_reports.c
    return store.rows(sa.select(
        r.report_id, (r.edge_pusd / r.notional_pusd * 10000.0).label("outcome_bps"), r.behavior_propensity,
        r.candidate_propensities_json, r.covariates_json, r.recorded_at_ms)
        .where(*live_fills_of(exp), r.strategy_slug == exp["control_slug"]).order_by(r.recorded_at_ms, r.report_id))


def usable_log_count(store: Store, exp: Mapping[str, Any], policy: str) -> int:
    """How many of those logs carry a behavior propensity and ``policy``'s probability. The stored JSON is
    canonical with policy names in [a-z0-9_-], so ``"policy":`` occurs in it exactly when the key does."""
    r = raw_reports.c
    return int(store.scalar(sa.select(sa.func.count()).select_from(raw_reports).where(
        *live_fills_of(exp), r.strategy_slug == exp["control_slug"], r.behavior_propensity.is_not(None),
        r.candidate_propensities_json.contains(f'"{policy}":', autoescape=True))))


def arm_fills(store: Store, exp: Mapping[str, Any], slugs: list[str]) -> list[dict[str, Any]]:
    """Live fills of every arm of a limited-live experiment since it started (adaptive allocation's analysis):
    slug, outcome in bps, logged propensity, market, time; in recorded order."""
    r = raw_reports.c
    return store.rows(sa.select(
        r.strategy_slug, (r.edge_pusd / r.notional_pusd * 10000.0).label("outcome_bps"),
        r.assignment_propensity.label("propensity"), r.market_id, r.recorded_at_ms)
        .where(r.mode == "live", r.strategy_slug.in_(slugs), r.recorded_at_ms >= exp["started_at_ms"], tagged_for(exp))
        .order_by(r.recorded_at_ms, r.report_id))


def sample_deltas_with_covariates(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """The paired deltas of a shadow experiment with the covariates of each pair, in sample order."""
    s = experiment_samples.c
    return store.rows(sa.select(s.edge_delta_bps, s.covariates_json).where(s.experiment_id == experiment_id).order_by(s.sample_n))


def insert_causal(store: Store, experiment_id: str, samples: int, fills: int, result: Mapping[str, Any]) -> int:
    with store.begin() as conn:
        return conn.execute(causal_estimates.insert().values(
            experiment_id=experiment_id, samples=samples, fills=fills, result_json=json.dumps(result, sort_keys=True))
            .returning(causal_estimates.c.id)).scalar_one()


def latest_causal(store: Store, experiment_id: str) -> dict[str, Any] | None:
    return store.latest_row(causal_estimates, experiment_id)


def latest_causal_all(store: Store) -> dict[str, dict[str, Any]]:
    """The newest causal estimates of every experiment (what `status` shows)."""
    return store.latest_rows(causal_estimates)
