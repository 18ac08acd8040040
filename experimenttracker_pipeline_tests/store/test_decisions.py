"""The decision stage on SQLite and PostgreSQL: spec section 26 acceptance tests, report de-duplication, drift
signals through a real HTTP registry (outage, retry, idempotency), sign-offs and the promotion gate."""

import json

import numpy as np
import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.stages.causal_effects.estimation import compute_causal
from experimenttracker_pipeline.stages.declarations.registration import (
    sync_declarations,
)
from experimenttracker_pipeline.stages.drift.registry import HttpStrategyRegistry
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.promotion.signoff import (
    SignoffError,
    promotion_state,
    promotion_violations,
    record_signoff,
)
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.promotion.queries import insert_promotion, promotions
from experimenttracker_pipeline.stages.samples.queries import sample_count
from experimenttracker_pipeline_tests.support.pipeline import evaluate_once as _evaluate
from experimenttracker_pipeline_tests.support.pipeline import shadow_experiment as _experiment


def test_no_winner_before_min_samples(store, workdirs):
    """Spec 26: samples=50, min_samples=100 -> EXPERIMENT_INSUFFICIENT_SAMPLES (even with a large effect)."""
    _experiment(store, workdirs, np.full(50, 8.0) + np.linspace(-1, 1, 50), min_samples_for_decision=100)
    verdict, drift, _ = _evaluate(store)
    assert verdict.verdict["verdict"] == "insufficient_samples"
    assert verdict.report["event_type"] == "EXPERIMENT_INSUFFICIENT_SAMPLES"
    assert not drift.signalled_now and signals(store) == []


def test_drift_signal_when_variant_underperforms(store, workdirs):
    """Spec 26: edge_delta=-5, sigma=2 -> drift signal sent to the StrategyRegistry (once)."""
    rng = np.random.default_rng(5)
    _experiment(store, workdirs, rng.normal(-5, 2, 120), min_samples_for_decision=100)
    verdict, drift, _ = _evaluate(store)
    assert verdict.verdict["verdict"] == "control_wins" and verdict.verdict["drift_signalled"]
    assert drift.signalled_now and drift.delivered == 1
    (signal,) = signals(store, "exp_a")
    payload = json.loads(signal["payload_json"])
    assert payload["variant_slug"] == "v-slug" and payload["signal_type"] == "DRIFT_SIGNAL"
    assert payload["edge_delta_bps"] == pytest.approx(-5, abs=0.6) and payload["drift_z"] < -2
    _evaluate(store)  # another look: no second signal
    assert len(signals(store, "exp_a")) == 1


def test_fixed_horizon_experiment_uses_the_spec_two_sigma_rule(store, workdirs):
    rng = np.random.default_rng(11)
    deltas = rng.normal(0, 20, 100)
    deltas = (deltas - deltas.mean()) / deltas.std(ddof=1) * 20 - 5  # mean -5, sd 20 -> SE 2, z = -2.5
    _experiment(store, workdirs, deltas, ci_method="fixed_horizon", min_samples_for_decision=100, planned_max_samples=100)
    verdict, drift, _ = _evaluate(store)
    assert verdict.verdict["drift_rule"].startswith("fixed") or "2" in verdict.verdict["drift_rule"]
    assert verdict.verdict["drift_z"] == pytest.approx(-2.5, abs=1e-6) and drift.signalled_now


def test_full_lifecycle_and_report_shape(store, workdirs):
    """Spec 26 integration: start -> samples -> EXPERIMENT_RESULT -> (no) drift; report in the section 13 shape."""
    rng = np.random.default_rng(1)
    _experiment(store, workdirs, rng.normal(4, 10, 400))
    verdict, drift, promotion = _evaluate(store)
    report = verdict.report
    assert report["event_type"] == "EXPERIMENT_RESULT" and report["verdict"] == "variant_wins"
    for key in ("report_id", "bot_id", "event_type", "experiment_id", "variant_slug", "control_slug", "samples",
                "edge_delta_bps", "ci_95_low", "ci_95_high", "verdict", "report_kind", "topic"):
        assert key in report, key
    assert report["bot_id"] == "gov.experimenttracker" and report["topic"] == "polytraders.reports.operations"
    assert report["report_kind"] == "OperationsReport" and report["samples"] == 400
    assert report["ci_method"] == "always_valid" and report["fixed_ci_95_low"] > report["ci_95_low"]
    assert report["plain_english"].startswith("The new strategy version performed better")
    assert not drift.signalled_now
    assert promotion.state == "awaiting_signoff"
    # Re-evaluating the same evidence never duplicates the report.
    again, _, _ = _evaluate(store)
    assert again.report is None
    assert len(store.reports("exp_a", "EXPERIMENT_RESULT")) == 1
    assert [r["event_type"] for r in store.reports("exp_a")].count("EXPERIMENT_STARTED") == 1


def test_signoff_approves_that_report_only(store, workdirs):
    rng = np.random.default_rng(2)
    _experiment(store, workdirs, rng.normal(5, 10, 300), auto_promote_on_winning=True, require_human_signoff=True)
    verdict, _, promotion = _evaluate(store)
    first_report = verdict.report["report_id"]
    assert promotion.state == "awaiting_signoff" and promotions(store) == []
    # More data arrives and the verdict is re-reported (sample count grew materially): a new report.
    _experiment(store, workdirs, rng.normal(5, 10, 300), start=300)
    verdict2, _, _ = _evaluate(store)
    assert verdict2.report is not None and verdict2.report["report_id"] != first_report
    # Signing off the OLD report does not approve the new verdict.
    record_signoff(store, "exp_a", "alice", first_report)
    assert promotion_state(store, "exp_a", apply=True).state == "awaiting_signoff"
    assert promotions(store) == []
    record_signoff(store, "exp_a", "bob", verdict2.report["report_id"])
    result = promotion_state(store, "exp_a", apply=True)
    assert result.state == "promoted" and result.promoted_now
    (promotion_row,) = promotions(store)
    assert promotion_row["report_id"] == verdict2.report["report_id"] and promotion_row["signoff_id"] is not None
    assert promotion_violations(store) == []
    with pytest.raises(SignoffError):
        record_signoff(store, "exp_a", "carol", "ops_nope")


def test_auto_promote_without_signoff_requirement(store, workdirs):
    rng = np.random.default_rng(3)
    _experiment(store, workdirs, rng.normal(5, 10, 300), auto_promote_on_winning=True, require_human_signoff=False)
    _, _, promotion = _evaluate(store)
    assert promotion.state == "promoted"


def test_large_split_requires_signoff_even_without_the_flag(store, workdirs):
    rng = np.random.default_rng(4)
    _experiment(store, workdirs, rng.normal(5, 10, 300), auto_promote_on_winning=True, require_human_signoff=False,
                traffic_split_pct=60)
    _, _, promotion = _evaluate(store)
    assert promotion.state == "awaiting_signoff" and promotions(store) == []


def test_promotion_without_signoff_is_a_violation(store, workdirs):
    rng = np.random.default_rng(6)
    _experiment(store, workdirs, rng.normal(5, 10, 300))
    verdict, _, _ = _evaluate(store)
    with store.begin() as conn:  # someone bypasses the gate
        insert_promotion(conn, {"experiment_id": "exp_a", "report_id": verdict.report["report_id"],
                                      "variant_slug": "v-slug", "verdict": "variant_wins", "signoff_id": None})
    (violation,) = promotion_violations(store)
    assert violation.experiment_id == "exp_a"
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with store.begin() as conn:
            conn.execute(sa.text("DELETE FROM promotions"))


def test_registry_outage_delays_but_never_loses_or_duplicates(store, workdirs, registry_server):
    rng = np.random.default_rng(7)
    _experiment(store, workdirs, rng.normal(-6, 8, 200))
    registry = HttpStrategyRegistry(registry_server.url, timeout_ms=2000, max_attempts=2, backoff_seconds=0.01)
    registry_server.fail = True
    _, drift, _ = _evaluate(store, registry=registry)
    assert drift.signalled_now and drift.pending == 1 and registry_server.received == []
    (signal,) = signals(store, "exp_a")
    assert signal["delivery_status"] == "pending" and signal["attempts"] == 1 and "503" in signal["last_error"]
    registry_server.fail = False
    _, drift2, _ = _evaluate(store, registry=registry)
    assert (drift2.signalled_now, drift2.delivered, drift2.pending) == (False, 1, 0)
    _evaluate(store, registry=registry)
    assert len(registry_server.received) == 1
    key, body = registry_server.received[0]
    assert key.startswith("exp_a:drift:") and body["idempotency_key"] == key and body["variant_slug"] == "v-slug"


def test_unreachable_registry_times_out_cleanly(store, workdirs):
    rng = np.random.default_rng(8)
    _experiment(store, workdirs, rng.normal(-6, 8, 200))
    registry = HttpStrategyRegistry("http://127.0.0.1:9/none", timeout_ms=500, max_attempts=2, backoff_seconds=0.01)
    _, drift, _ = _evaluate(store, registry=registry)
    assert drift.pending == 1 and signals(store, "exp_a")[0]["delivery_status"] == "pending"


def test_srm_blocks_limited_live_verdict(store, workdirs):
    (workdirs["experiments"] / "ll.yaml").write_text(declaration("exp_ll", mode="limited_live", traffic_split_pct=10))
    sync_declarations(store, workdirs["experiments"])
    rng = np.random.default_rng(9)
    records = []
    for i in range(400):  # half the traffic went to the variant although 10% was declared
        t = i * 1000
        records.append(fill(f"v{i}", "v-slug", "live", f"p{i}", t=t, market=f"m{i % 5}", edge=float(rng.normal(0.05, 0.1))))
        records.append(fill(f"c{i}", "c-slug", "live", f"q{i}", t=t + 300, market=f"m{i % 5}", edge=float(rng.normal(0.0, 0.1))))
    write_jsonl(workdirs["landing"] / "ll.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, "exp_ll")
    verdict, drift, promotion = _evaluate(store, "exp_ll")
    assert verdict.verdict["verdict"] == "srm_blocked" and verdict.report["event_type"] == "EXPERIMENT_SRM_DETECTED"
    assert promotion.state == "blocked_by_governance"  # online and unapproved, besides the SRM block


# ---- goal surface, stop rules and governance in the verdict stage ----------------------------------------------
def _pairs_with_slippage(store, workdirs, deltas, slippage_delta, exp_id="exp_g", **decl):
    (workdirs["experiments"] / f"{exp_id}.yaml").write_text(declaration(exp_id, **decl))
    sync = sync_declarations(store, workdirs["experiments"])
    assert not sync.rejected, sync.rejected
    records = []
    for i, delta in enumerate(deltas):
        key = f"{exp_id}:{i}"
        records.append(fill(f"{exp_id}-c{i}", "c-slug", "live", key, edge=1.0, t=i * 1000, slippage_bps=2.0))
        records.append(fill(f"{exp_id}-v{i}", "v-slug", "shadow", key, edge=1.0 + float(delta) / 100.0, t=i * 1000 + 1,
                            slippage_bps=2.0 + slippage_delta + (i % 7 - 3) * 0.1))
    write_jsonl(workdirs["landing"] / f"{exp_id}.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, exp_id)


def test_hard_guardrail_breach_blocks_a_winner(store, workdirs):
    rng = np.random.default_rng(21)
    surface = {"objectives": {"primary": [{"name": "edge_delta_bps", "weight_bp": 10000}]},
               "constraints": {"hard": ["slippage_delta_bps <= 1"]}}
    _pairs_with_slippage(store, workdirs, rng.normal(6, 8, 300), slippage_delta=4.0, eval_surface=surface,
                         require_human_signoff=False, auto_promote_on_winning=True)
    verdict, _, promotion = _evaluate(store, "exp_g")
    assert verdict.verdict["verdict"] == "guardrail_violated"
    assert "EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=1" in verdict.verdict["reason_codes"]
    assert promotion.state == "not_promotable" and promotions(store) == []
    assert len(store.reports("exp_g", "EVAL_STOP_HARM")) == 1  # harm overrides statistics: a stop rule fired
    _evaluate(store, "exp_g")
    assert len(store.reports("exp_g", "EVAL_STOP_HARM")) == 1


def test_guardrail_that_holds_keeps_the_winner(store, workdirs):
    rng = np.random.default_rng(22)
    surface = {"constraints": {"hard": ["slippage_delta_bps <= 3"]}}
    _pairs_with_slippage(store, workdirs, rng.normal(6, 8, 300), slippage_delta=0.0, eval_surface=surface)
    verdict, _, promotion = _evaluate(store, "exp_g")
    assert verdict.verdict["verdict"] == "variant_wins" and promotion.state == "awaiting_signoff"


def test_unapproved_online_experiment_is_flagged_and_never_promoted(store, workdirs):
    from experimenttracker_pipeline.stages.governance import (
        operations as governance_ops,
    )

    (workdirs["experiments"] / "ll.yaml").write_text(declaration("exp_on", mode="limited_live", require_human_signoff=False,
                                                                 auto_promote_on_winning=True))
    sync_declarations(store, workdirs["experiments"])
    rng = np.random.default_rng(23)
    records = []
    for i in range(600):
        t = i * 1000
        market = f"m{i % 7}"
        if i % 10 == 0:
            records.append(fill(f"v{i}", "v-slug", "live", f"p{i}", t=t, market=market, edge=float(rng.normal(0.08, 0.05)),
                                assignment_propensity=0.1))
        records.append(fill(f"c{i}", "c-slug", "live", f"q{i}", t=t + 200, market=market, edge=float(rng.normal(0.0, 0.05)),
                            assignment_propensity=0.1))
    write_jsonl(workdirs["landing"] / "on.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, "exp_on")
    assert sample_count(store, "exp_on") > 0  # samples are recorded even though it is unapproved
    verdict, _, promotion = _evaluate(store, "exp_on")
    assert promotion.state == "blocked_by_governance" and promotions(store) == []
    assert len(store.reports("exp_on", "EXPERIMENT_UNAPPROVED")) == 1
    _evaluate(store, "exp_on")
    assert len(store.reports("exp_on", "EXPERIMENT_UNAPPROVED")) == 1  # flagged once per contract digest
    status = governance_ops.governance_status(store, "exp_on")
    for i, role in enumerate(status.missing_roles):
        governance_ops.record_approval(store, "exp_on", f"reviewer{i}", role)
    verdict, _, promotion = _evaluate(store, "exp_on")
    assert verdict.verdict["governance"]["approved"] is True
    assert promotion.state != "blocked_by_governance"


def test_invalid_contract_is_rejected_on_load(store, workdirs):
    (workdirs["experiments"] / "bad.yaml").write_text(declaration("exp_bad", principal="tbd"))
    (workdirs["experiments"] / "ok.yaml").write_text(declaration("exp_ok"))
    sync = sync_declarations(store, workdirs["experiments"])
    assert sync.new == ["exp_ok"]
    (error,) = sync.rejected
    assert error.field == "principal" and "bad.yaml" in str(error)


def test_confounded_limited_live_is_judged_on_aipw_not_the_naive_difference(store, workdirs):
    """Deep markets are routed to the variant more often and also have higher edge: the naive difference of
    means says the variant helps; the true effect is -4 bps and the verdict must say so."""
    (workdirs["experiments"] / "ll.yaml").write_text(declaration("exp_conf", mode="limited_live", traffic_split_pct=30,
                                                                 min_samples_for_decision=50))
    sync_declarations(store, workdirs["experiments"])
    rng = np.random.default_rng(31)
    records = []
    for i in range(3000):
        deep = i % 2 == 0
        propensity = 0.5 if deep else 0.1
        treated = rng.random() < propensity
        edge_bps = (20.0 if deep else 0.0) + (-4.0 if treated else 0.0) + rng.normal(0, 3)
        slug = "v-slug" if treated else "c-slug"
        records.append(fill(f"f{i}", slug, "live", f"p{i}", t=i * 500, market=f"m{i % 10}", edge=edge_bps / 100.0,
                            assignment_propensity=propensity, covariates={"liquidity": "deep" if deep else "thin"}))
    write_jsonl(workdirs["landing"] / "conf.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, "exp_conf")
    verdict, drift, _ = _evaluate(store, "exp_conf")
    causal = json.loads(latest_causal(store, "exp_conf")["result_json"])
    assert causal["naive_diff_bps"] > 0  # the biased comparison has the wrong sign
    assert causal["aipw"]["ci_95_low"] < -4 < causal["aipw"]["ci_95_high"]
    assert verdict.verdict["basis"].startswith("aipw")
    assert verdict.verdict["verdict"] == "control_wins" and drift.signalled_now


def test_declared_instrument_gives_a_2sls_estimate(store, workdirs):
    """Partial compliance: the router's random draw (declared as the instrument) moves routing; 2SLS recovers the
    true effect although an unobserved market state confounds routing and edge."""
    (workdirs["experiments"] / "iv.yaml").write_text(declaration("exp_iv", mode="limited_live", traffic_split_pct=45,
                                                                 instrument="router_draw", min_samples_for_decision=50))
    sync = sync_declarations(store, workdirs["experiments"])
    assert sync.new == ["exp_iv"], sync.rejected
    rng = np.random.default_rng(41)
    records = []
    for i in range(4000):
        draw = int(rng.random() < 0.5)
        hidden = rng.normal()
        treated = rng.random() < 0.2 + 0.5 * draw + 0.2 * (hidden > 0)
        edge_bps = 10 + (-3.0 if treated else 0.0) + 4 * hidden + rng.normal(0, 2)
        records.append(fill(f"iv{i}", "v-slug" if treated else "c-slug", "live", f"p{i}", t=i * 500, market=f"m{i % 10}",
                            edge=edge_bps / 100.0, covariates={"router_draw": draw, "desk": "a" if i % 2 else "b"}))
    write_jsonl(workdirs["landing"] / "iv.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, "exp_iv")
    compute_causal(store, "exp_iv")
    iv = json.loads(latest_causal(store, "exp_iv")["result_json"])["iv"]
    assert iv["ci_95_low"] < -3 < iv["ci_95_high"] and not iv["weak_instrument"] and iv["first_stage_f"] > 10


def test_report_keeps_tiny_p_values(store, workdirs):
    rng = np.random.default_rng(51)
    _experiment(store, workdirs, rng.normal(8, 5, 400))
    verdict, _, _ = _evaluate(store)
    assert 0 < verdict.report["fixed_p_value"] < 1e-10 and 0 < verdict.report["p_value"] < 1e-3
