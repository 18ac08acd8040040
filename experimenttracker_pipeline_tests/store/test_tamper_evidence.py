"""Forgery and tampering on SQLite and PostgreSQL: what the database refuses (TRUNCATE, REPLACE, ON CONFLICT DO
UPDATE, changed declarations, a shrinking pairing count), and what the checks and the promotion gate detect when
a database superuser bypasses the triggers (a rewritten and re-hashed chain, removed trailing samples, changed
declaration flags, a rewritten approver)."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.settings import OPERATIONS_TOPIC, AnchorKey, anchor_key
from experimenttracker_pipeline.stages.publishing.relay import publish_outbox
from experimenttracker_pipeline.stages.governance.operations import assign_units, record_approval
from experimenttracker_pipeline.stages.promotion.queries import promotions
from experimenttracker_pipeline.stages.promotion.signoff import (
    PROMOTION_CHECKS_FAILING,
    SignoffError,
    failing_checks,
    promotion_state,
    promotion_violations,
    record_signoff,
)
from experimenttracker_pipeline.stages.declarations.queries import set_experiment_status
from experimenttracker_pipeline.stages.promotion.gate import PROMOTION_DECLARATION_TAMPERED
from experimenttracker_pipeline.stages.samples.anchoring import anchor_problem, make_head
from experimenttracker_pipeline.stages.samples.pairing import GENESIS_HASH, sample_hash, verify_chain
from experimenttracker_pipeline.stages.samples.queries import chain_anchors, iter_samples, pairing_state
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.samples.recording import (
    ImmutableSampleError,
    published_head_problem,
    verify_samples,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import APPEND_ONLY, metadata
from experimenttracker_pipeline_tests.support.nats import read_subject
from experimenttracker_pipeline_tests.support.pipeline import evaluate_once, shadow_experiment
from experimenttracker_pipeline_tests.support.tampering import superuser

EXP = "exp_t"


def winning_experiment(store, workdirs, n: int = 300, **decl):
    """A shadow experiment with ``n`` pairs (+5 bps), evaluated once: its chain head is anchored."""
    rng = np.random.default_rng(11)
    shadow_experiment(store, workdirs, rng.normal(5, 10, n), exp_id=EXP, **decl)
    verdict, _, promotion = evaluate_once(store, EXP)
    assert verdict.verdict["verdict"] == "variant_wins"
    assert promotion_violations(store, EXP) == []
    return verdict, promotion


def refused(store: Store, statement: str, match: str) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match):
        with store.begin() as conn:
            conn.execute(sa.text(statement))


# ---- 11: every sample rewritten and re-hashed ------------------------------------------------------------------

def _flip_every_edge_and_rehash(store) -> str:
    """What a superuser can do: negate every edge delta of EXP and recompute the whole hash chain; the new head."""
    rows = list(iter_samples(store, EXP))
    prev = GENESIS_HASH
    with superuser(store) as conn:
        for row in rows:
            row["edge_delta_bps"] = -row["edge_delta_bps"]
            row["prev_hash"], row["sample_hash"] = prev, sample_hash(row, prev)
            prev = row["sample_hash"]
            conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = :d, prev_hash = :p, sample_hash = :h "
                                 "WHERE experiment_id = :e AND sample_n = :n"),
                         {"d": row["edge_delta_bps"], "p": row["prev_hash"], "h": row["sample_hash"], "e": EXP,
                          "n": row["sample_n"]})
    return prev

def test_rewritten_and_rehashed_chain_fails_the_check(store, workdirs):
    verdict, _ = winning_experiment(store, workdirs, require_human_signoff=True)
    head = verdict.report["chain_head"]  # what EXPERIMENT_RESULT carries (and the bus publishes)
    (anchor,) = chain_anchors(store, EXP)
    assert head["sample_n"] == anchor["sample_n"] == 300 and head["anchor_hmac"] == anchor["anchor_hmac"]
    assert verify_samples(store, EXP) == (300, None)

    # Flip every edge delta and recompute every hash: the chain is consistent again...
    prev = _flip_every_edge_and_rehash(store)
    assert verify_chain(iter_samples(store, EXP)) is None
    # ...but no longer the one the evaluation anchored.
    checked, broken = verify_samples(store, EXP)
    assert checked == 300 and broken.sample_n == 300 and "no longer has the anchored hash" in broken.problem

    # Moving the anchor to the new head without the key does not verify either.
    with superuser(store) as conn:
        conn.execute(sa.text("UPDATE sample_chain_anchors SET sample_hash = :h"), {"h": prev})
    _, broken = verify_samples(store, EXP)
    assert "invalid HMAC" in broken.problem
    # Nor does a freshly made anchor under another key (an attacker's own).
    forged = make_head(AnchorKey(b"attacker-key-0123456789", "attacker"), EXP, 300, prev, anchor["declaration_sha256"])
    assert anchor_problem(anchor_key(), forged.to_row(), {300: prev}, 300, anchor["declaration_sha256"]).startswith(
        "the anchor at sample_n 300 was made with key")
    assert failing_checks(store, EXP) and promotions(store) == []
    # An evaluation reached by any path refuses the rewritten chain: no flipped verdict, no drift signal.
    with pytest.raises(ImmutableSampleError, match="not evaluated"):
        compute_intervals(store, EXP)
    assert store.scalar("SELECT COUNT(*) FROM experiment_evaluations") == 1
    assert store.scalar("SELECT COUNT(*) FROM strategy_registry_signals") == 0


def test_rewrite_with_the_anchors_deleted_is_caught_by_the_published_head(store, workdirs, nats_server, bus_config):
    """The limit of what the store can show by itself: a superuser who also deletes the anchor rows passes the
    chain check. The head already published in EXPERIMENT_RESULT on the report bus still exposes the rewrite."""
    verdict, _ = winning_experiment(store, workdirs)
    publish_outbox(store, bus_config)
    # Every subject: the stream's message count then bounds the read (no fetch left waiting for more).
    (message,) = [m for m in read_subject(nats_server.url, "polytraders.reports.>")
                  if m["payload"]["event_type"] == "EXPERIMENT_RESULT"]
    assert message["subject"] == OPERATIONS_TOPIC
    published = message["payload"]["chain_head"]
    assert published == verdict.report["chain_head"] and published["sample_n"] == 300
    assert published_head_problem(store, EXP, published) is None
    with superuser(store) as conn:
        conn.execute(sa.text("DELETE FROM sample_chain_anchors"))
    prev = _flip_every_edge_and_rehash(store)
    assert verify_samples(store, EXP) == (300, None)
    assert "no longer has the anchored hash" in published_head_problem(store, EXP, published)
    forged = {**published, "sample_hash": prev}  # a published head edited to match does not verify
    assert "invalid HMAC" in published_head_problem(store, EXP, forged)


# ---- 12: the last 50 samples deleted ---------------------------------------------------------------------------
def test_removed_trailing_samples_fail_the_check(store, workdirs):
    rng = np.random.default_rng(12)
    shadow_experiment(store, workdirs, rng.normal(5, 10, 300), exp_id=EXP)
    assert pairing_state(store, EXP)["samples"] == 300
    # Without trigger bypass the pairing count cannot shrink, nor its row go.
    refused(store, f"UPDATE experiment_pairing_state SET samples = 250 WHERE experiment_id = '{EXP}'", "never decreases")
    refused(store, "DELETE FROM experiment_pairing_state", "never decreases")

    def drop_tail(conn) -> None:
        ids = conn.execute(sa.text("SELECT variant_report_id, control_report_id FROM experiment_samples "
                                   "WHERE experiment_id = :e AND sample_n > 250"), {"e": EXP}).all()
        conn.execute(sa.text("DELETE FROM experiment_samples WHERE experiment_id = :e AND sample_n > 250"), {"e": EXP})
        for pair in ids:
            conn.execute(sa.text("DELETE FROM raw_reports WHERE report_id IN (:v, :c)"), {"v": pair[0], "c": pair[1]})

    # Before any evaluation: the pairing state's count reveals it.
    with superuser(store) as conn:
        drop_tail(conn)
    checked, broken = verify_samples(store, EXP)
    assert checked == 250 and broken.sample_n == 251
    assert "pairing state recorded 300 samples but the chain has 250" in broken.problem


def test_removed_trailing_samples_and_lowered_count_fail_on_the_anchor(store, workdirs):
    winning_experiment(store, workdirs)
    with superuser(store) as conn:
        conn.execute(sa.text("DELETE FROM experiment_samples WHERE experiment_id = :e AND sample_n > 250"), {"e": EXP})
        conn.execute(sa.text("UPDATE experiment_pairing_state SET samples = 250 WHERE experiment_id = :e"), {"e": EXP})
    checked, broken = verify_samples(store, EXP)
    assert checked == 250 and "anchored sample_n 300 but the chain has 250 samples" in broken.problem


# ---- 13: no sign-off or promotion while a check fails ----------------------------------------------------------
def test_signoff_and_promotion_refused_while_the_chain_check_fails(store, workdirs):
    verdict, promotion = winning_experiment(store, workdirs, require_human_signoff=True)
    assert promotion.state == "awaiting_signoff"
    with superuser(store) as conn:
        conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = 99 WHERE experiment_id = :e AND sample_n = 7"),
                     {"e": EXP})
    with pytest.raises(SignoffError, match="blocking checks fail: samples_hash_chain_intact: sample_n 7"):
        record_signoff(store, EXP, "alice", verdict.report["report_id"])
    assert promotions(store) == [] and store.scalar("SELECT COUNT(*) FROM signoffs") == 0


def test_auto_promotion_refused_while_the_chain_check_fails(store, workdirs):
    rng = np.random.default_rng(13)
    shadow_experiment(store, workdirs, rng.normal(5, 10, 300), exp_id=EXP, auto_promote_on_winning=True,
                      require_human_signoff=False)
    with superuser(store) as conn:
        conn.execute(sa.text("DELETE FROM experiment_samples WHERE experiment_id = :e AND sample_n > 290"), {"e": EXP})
    verdict, _, promotion = evaluate_once(store, EXP)
    assert verdict.verdict["verdict"] == "variant_wins"
    assert (promotion.state, promotion.reason_code) == ("blocked_by_checks", PROMOTION_CHECKS_FAILING)
    assert "pairing state recorded 300 samples" in promotion.detail and promotions(store) == []


# ---- 14: the declaration flags changed ----------------------------------------------------------------------
FLAGS = "UPDATE experiments SET require_human_signoff = false, auto_promote_on_winning = true"


def test_changed_declaration_is_refused_and_detected(store, workdirs):
    rng = np.random.default_rng(14)
    shadow_experiment(store, workdirs, rng.normal(5, 10, 300), exp_id=EXP, auto_promote_on_winning=False,
                      require_human_signoff=True)
    refused(store, FLAGS, "declaration columns are immutable")
    refused(store, "DELETE FROM experiments", "never deleted")
    set_experiment_status(store, EXP, "paused")  # the status is the one column that changes
    set_experiment_status(store, EXP, "active")

    with superuser(store) as conn:
        conn.execute(sa.text(FLAGS))
    verdict, _, promotion = evaluate_once(store, EXP)
    assert verdict.verdict["verdict"] == "variant_wins"
    assert (promotion.state, promotion.reason_code) == ("declaration_tampered", PROMOTION_DECLARATION_TAMPERED)
    assert "require_human_signoff is False but the stored declaration says True" in promotion.detail
    assert promotions(store) == []
    (violation,) = promotion_violations(store, EXP)
    assert violation.reason.startswith("declaration tampered")
    with pytest.raises(SignoffError, match="promotions_have_signoff: declaration tampered"):
        record_signoff(store, EXP, "alice", verdict.report["report_id"])


def test_consistently_rewritten_declaration_fails_on_the_anchor(store, workdirs):
    """Flags, declaration JSON and digest rewritten together agree with each other; the anchors made before
    still name the old digest."""
    winning_experiment(store, workdirs, require_human_signoff=True)
    row = store.rows(sa.text(f"SELECT declaration_json FROM experiments WHERE experiment_id = '{EXP}'"))[0]
    declared = json.loads(row["declaration_json"])
    declared.update(require_human_signoff=False, auto_promote_on_winning=True)
    text = json.dumps(declared, sort_keys=True)
    digest = hashlib.sha256(json.dumps(declared, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with superuser(store) as conn:
        conn.execute(sa.text(FLAGS + ", declaration_json = :j, declaration_sha256 = :d"), {"j": text, "d": digest})
    assert promotion_violations(store, EXP) == []  # self-consistent now
    _, broken = verify_samples(store, EXP)
    assert "declaration digest changed since the anchor" in broken.problem
    assert promotion_state(store, EXP, apply=True).state == "blocked_by_checks" and promotions(store) == []


# ---- 15: TRUNCATE, REPLACE, ON CONFLICT DO UPDATE; a rewritten approver ------------------------------------------
def signed_and_promoted(store, workdirs):
    verdict, _ = winning_experiment(store, workdirs, require_human_signoff=True)
    record_signoff(store, EXP, "alice", verdict.report["report_id"])
    assert promotion_state(store, EXP, apply=True).state == "promoted"
    assert promotion_violations(store, EXP) == []
    record_approval(store, EXP, "bob", "technical_lead")
    assign_units(store, EXP, ["unit-1", "unit-2"])
    return verdict


def _key(table: str) -> list[str]:
    return [c.name for c in metadata.tables[table].primary_key.columns]


def test_truncate_replace_and_upsert_are_refused(store, workdirs):
    signed_and_promoted(store, workdirs)
    guarded = APPEND_ONLY + ("experiments", "experiment_pairing_state")
    if store.dialect == "postgresql":
        for table in guarded:
            # A plain TRUNCATE of a referenced table is refused by its foreign keys already; CASCADE by the triggers.
            refused(store, f"TRUNCATE {table}", "append-only|immutable|never|referenced in a foreign key")
            refused(store, f"TRUNCATE {table} CASCADE", "append-only|immutable|never")
    else:
        assert store.scalar("PRAGMA recursive_triggers") == 1
        for table in APPEND_ONLY:
            refused(store, f"INSERT OR REPLACE INTO {table} SELECT * FROM {table} LIMIT 1", "append-only")
            refused(store, f"REPLACE INTO {table} SELECT * FROM {table} LIMIT 1", "append-only")
        refused(store, "INSERT OR REPLACE INTO experiments SELECT * FROM experiments LIMIT 1", "never deleted")
        # The limit the README states: a connection without the pragma (an sqlite3 shell) is not refused.
        raw = sqlite3.connect(sa.engine.make_url(store.url).database)
        raw.execute("INSERT OR REPLACE INTO signoffs SELECT * FROM signoffs LIMIT 1")
        raw.rollback()
        raw.close()
    for table in APPEND_ONLY:
        assert store.scalar(f"SELECT COUNT(*) FROM {table}") > 0, table
        column = next(c.name for c in metadata.tables[table].columns if c.name not in _key(table))
        refused(store, f"INSERT INTO {table} SELECT * FROM {table} WHERE true LIMIT 1 "
                       f"ON CONFLICT ({', '.join(_key(table))}) DO UPDATE SET {column} = excluded.{column}",
                "append-only")
    assert store.scalar("SELECT COUNT(*) FROM promotions") == 1 and store.scalar("SELECT approver FROM signoffs") == "alice"


def test_rewritten_approver_is_detected(store, workdirs):
    signed_and_promoted(store, workdirs)
    refused(store, "UPDATE signoffs SET approver = 'mallory'", "append-only")
    with superuser(store) as conn:
        conn.execute(sa.text("UPDATE signoffs SET approver = 'mallory'"))
    (violation,) = promotion_violations(store, EXP)
    assert "by 'mallory' does not match its HMAC" in violation.reason
    with superuser(store) as conn:  # removing the certificate as well does not help
        conn.execute(sa.text("UPDATE signoffs SET anchor_hmac = NULL"))
    (violation,) = promotion_violations(store, EXP)
    assert "carries no HMAC" in violation.reason
