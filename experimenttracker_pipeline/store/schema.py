"""The experiment tables, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

Every query in the pipeline is written against these `Table`s; the Alembic revisions under ``sql/alembic``
create and change them. Types map per dialect so that both databases get the column types they had when the
schema was written by hand: DOUBLE PRECISION / REAL, TIMESTAMPTZ / ISO-8601 TEXT, BIGSERIAL / INTEGER PRIMARY KEY
AUTOINCREMENT. Constraint names follow PostgreSQL's own defaults, so a store created before the Alembic baseline
and one created by it are the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles

metadata = sa.MetaData(naming_convention={
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
})

# Column types: one name in the schema, the dialect's own type in the database.
Float64 = sa.Double().with_variant(sqlite.REAL(), "sqlite")
Timestamp = sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")  # SQLite keeps ISO-8601 text
SerialId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # BIGSERIAL / INTEGER PRIMARY KEY AUTOINCREMENT


class utc_now(sa.sql.expression.FunctionElement):
    """The database's current time as a column default: now() on PostgreSQL, ISO-8601 UTC text on SQLite."""

    type = Timestamp
    inherit_cache = True


@compiles(utc_now)
def _utc_now_postgresql(element, compiler, **kw):  # noqa: ARG001 - the compiler hook's signature
    return "now()"


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(element, compiler, **kw):  # noqa: ARG001
    return "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"


def _id() -> sa.Column:
    return sa.Column("id", SerialId, primary_key=True, autoincrement=True)


def _at(name: str) -> sa.Column:
    return sa.Column(name, Timestamp, nullable=False, server_default=utc_now())


def _experiment_fk(nullable: bool = False) -> sa.Column:
    return sa.Column("experiment_id", sa.Text, sa.ForeignKey("experiments.experiment_id"), nullable=nullable)


_SERIAL = {"sqlite_autoincrement": True}

# ---- declarations, ingestion, samples, outbox ---------------------------------------------------------------
experiments = sa.Table(
    "experiments", metadata,
    sa.Column("experiment_id", sa.Text, primary_key=True),
    sa.Column("principal", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("variant_slug", sa.Text, nullable=False),
    sa.Column("control_slug", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("traffic_split_pct", Float64, nullable=False),
    sa.Column("min_samples_for_decision", sa.Integer, nullable=False),
    sa.Column("auto_promote_on_winning", sa.Boolean, nullable=False),
    sa.Column("require_human_signoff", sa.Boolean, nullable=False),
    sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    sa.Column("caliper_seconds", Float64, nullable=False),
    sa.Column("declaration_sha256", sa.Text, nullable=False),
    sa.Column("declaration_json", sa.Text, nullable=False),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    _at("created_at"),
    sa.Column("registered_at_ms", sa.BigInteger),
    # A treatment comparison of an A/B/n experiment (one treatment against the shared control, with its own
    # samples, verdict, drift signal and promotion): the experiment it belongs to and the treatment's variant id.
    # NULL on experiments themselves. Its experiment_id is "<experiment_id>/<variant_id>".
    sa.Column("parent_experiment_id", sa.Text),
    sa.Column("variant_id", sa.Text),
    sa.CheckConstraint("mode IN ('shadow_only', 'limited_live')", name="experiments_mode_check"),
    sa.CheckConstraint("traffic_split_pct > 0 AND traffic_split_pct <= 100", name="experiments_traffic_split_pct_check"),
    sa.CheckConstraint("min_samples_for_decision >= 2", name="experiments_min_samples_for_decision_check"),
    sa.Index("experiments_parent", "parent_experiment_id"),
)

landing_files = sa.Table(
    "landing_files", metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("byte_offset", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("lines_read", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("size_seen", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    _at("updated_at"),
    # Which file the offset belongs to: "device:inode", and the sha256 of its first fingerprint_bytes bytes and of
    # the bytes just before byte_offset (all already read), so a file renamed, replaced or rewritten under the same
    # name is recognised. NULL: not yet known (a row from before these columns).
    sa.Column("file_identity", sa.Text),
    sa.Column("fingerprint", sa.Text),
    sa.Column("fingerprint_bytes", sa.BigInteger, nullable=False, server_default=sa.text("0")),
)

raw_reports = sa.Table(
    "raw_reports", metadata,
    sa.Column("report_id", sa.Text, primary_key=True),
    sa.Column("report_kind", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("bot_id", sa.Text, nullable=False),
    sa.Column("strategy_slug", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("pair_key", sa.Text, nullable=False),
    sa.Column("market_id", sa.Text, nullable=False),
    sa.Column("size_pusd", Float64, nullable=False),
    sa.Column("notional_pusd", Float64, nullable=False),
    sa.Column("edge_pusd", Float64, nullable=False),
    sa.Column("slippage_bps", Float64, nullable=False),
    sa.Column("recorded_at_ms", sa.BigInteger, nullable=False),
    sa.Column("experiment_id", sa.Text),
    sa.Column("fill_quality", Float64),
    sa.Column("assignment_propensity", Float64),
    sa.Column("covariates_json", sa.Text),
    sa.Column("content_sha256", sa.Text, nullable=False),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("source_line", sa.BigInteger, nullable=False),
    _at("ingested_at"),
    # Off-policy logs (revision 0006): P(logging policy took the logged action), and per candidate policy the
    # probability it would have, as canonical JSON. NULL on every other fill.
    sa.Column("behavior_propensity", Float64),
    sa.Column("candidate_propensities_json", sa.Text),
    sa.Index("raw_reports_slug_time", "strategy_slug", "recorded_at_ms"),
)

quarantined_reports = sa.Table(
    "quarantined_reports", metadata,
    _id(),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("line_number", sa.BigInteger, nullable=False),
    sa.Column("report_id", sa.Text),
    sa.Column("reason_code", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("raw_text", sa.Text, nullable=False),
    _at("quarantined_at"),
    sa.UniqueConstraint("source_file", "line_number"),
    sa.Index("quarantined_reports_reason", "reason_code"),
    **_SERIAL,
)

# One row per file chunk, written in the chunk's transaction: lines_read = accepted + duplicates + quarantined.
ingestion_batches = sa.Table(
    "ingestion_batches", metadata,
    _id(),
    sa.Column("run_id", sa.Text),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("from_offset", sa.BigInteger, nullable=False),
    sa.Column("to_offset", sa.BigInteger, nullable=False),
    sa.Column("first_line", sa.BigInteger, nullable=False),
    sa.Column("lines_read", sa.BigInteger, nullable=False),
    sa.Column("accepted", sa.BigInteger, nullable=False),
    sa.Column("duplicates", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    _at("finished_at"),
    # Bus messages of the shared topic that are not fills: counted, never quarantined (messages = lines_read + ignored).
    sa.Column("ignored", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.CheckConstraint("lines_read = accepted + duplicates + quarantined", name="ingestion_batches_check"),
    sa.CheckConstraint("ignored >= 0", name="ingestion_batches_ignored_check"),
    **_SERIAL,
)

# One row per report-bus message, written in the transaction that stores the message (or its quarantine row), so
# a message redelivered after that commit (a crash before its ack) is recognised and counted as a duplicate.
bus_messages = sa.Table(
    "bus_messages", metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("stream_seq", sa.BigInteger, primary_key=True),
    sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("ingestion_batches.id"), nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.CheckConstraint("outcome IN ('accepted', 'duplicate', 'quarantined', 'ignored')", name="bus_messages_outcome_check"),
)

# Which strategy slugs each ingestion chunk brought: the pairing sensor reads this, never raw_reports.
ingestion_batch_slugs = sa.Table(
    "ingestion_batch_slugs", metadata,
    sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("ingestion_batches.id"), primary_key=True),
    sa.Column("strategy_slug", sa.Text, primary_key=True),
    sa.Column("fills", sa.BigInteger, nullable=False),
    # The pass sensor and `run` look up the newest batch per strategy slug.
    sa.Index("ingestion_batch_slugs_slug", "strategy_slug", "batch_id"),
)

# Latest pairing state per experiment: what sensors and `status` read instead of counting sample rows.
experiment_pairing_state = sa.Table(
    "experiment_pairing_state", metadata,
    sa.Column("experiment_id", sa.Text, sa.ForeignKey("experiments.experiment_id"), primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("orphan_variant", sa.BigInteger, nullable=False),
    sa.Column("orphan_control", sa.BigInteger, nullable=False),
    sa.Column("last_sample_at_ms", sa.BigInteger),
    _at("updated_at"),
    sa.Column("last_appended_at_ms", sa.BigInteger),  # wall-clock time of the last append
    # The newest ingestion batch the last pairing could see: pairing is due again only when a later batch brought
    # fills of the variant or control slug. NULL: not paired since this column exists (due once).
    sa.Column("paired_through_batch", sa.BigInteger),
)

# Matched pairs, hash-chained and append-only (triggers refuse UPDATE, DELETE and TRUNCATE).
experiment_samples = sa.Table(
    "experiment_samples", metadata,
    sa.Column("experiment_id", sa.Text, sa.ForeignKey("experiments.experiment_id"), primary_key=True),
    sa.Column("sample_n", sa.BigInteger, primary_key=True),
    sa.Column("variant_report_id", sa.Text, sa.ForeignKey("raw_reports.report_id"), nullable=False),
    sa.Column("control_report_id", sa.Text, sa.ForeignKey("raw_reports.report_id"), nullable=False),
    sa.Column("pair_key", sa.Text, nullable=False),
    sa.Column("market_id", sa.Text, nullable=False),
    sa.Column("variant_fill_pusd", Float64, nullable=False),
    sa.Column("control_fill_pusd", Float64, nullable=False),
    sa.Column("variant_notional_pusd", Float64, nullable=False),
    sa.Column("control_notional_pusd", Float64, nullable=False),
    sa.Column("variant_edge_pusd", Float64, nullable=False),
    sa.Column("control_edge_pusd", Float64, nullable=False),
    sa.Column("edge_delta_bps", Float64, nullable=False),
    sa.Column("slippage_delta_bps", Float64, nullable=False),
    sa.Column("fill_quality_delta", Float64),
    sa.Column("assignment_propensity", Float64),
    sa.Column("covariates_json", sa.Text),
    sa.Column("recorded_at_ms", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("sample_hash", sa.Text, nullable=False),
    _at("created_at"),
    sa.CheckConstraint("sample_n >= 1", name="experiment_samples_sample_n_check"),
    sa.UniqueConstraint("experiment_id", "variant_report_id"),
    sa.UniqueConstraint("experiment_id", "control_report_id"),
)
# The evaluation aggregates read one experiment's samples: a covering index gives PostgreSQL an index-only scan
# even when many experiments' samples interleave on disk. SQLite's primary key already serves them.
sa.Index("experiment_samples_metrics", experiment_samples.c.experiment_id,
         postgresql_include=["edge_delta_bps", "slippage_delta_bps", "fill_quality_delta", "variant_fill_pusd",
                             "control_fill_pusd", "recorded_at_ms"]).ddl_if(dialect="postgresql")

# The chain head each evaluation used, anchored by an HMAC whose key the store does not hold (append-only): a
# rewritten or truncated chain no longer contains the anchored (sample_n, sample_hash).
sample_chain_anchors = sa.Table(
    "sample_chain_anchors", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("sample_n", sa.BigInteger, nullable=False),
    sa.Column("sample_hash", sa.Text, nullable=False),
    sa.Column("declaration_sha256", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("anchor_hmac", sa.Text, nullable=False),
    _at("anchored_at"),
    sa.CheckConstraint("sample_n >= 1", name="sample_chain_anchors_sample_n_check"),
    sa.UniqueConstraint("experiment_id", "sample_n", "key_id"),
    **_SERIAL,
)

operations_reports = sa.Table(
    "operations_reports", metadata,
    sa.Column("report_id", sa.Text, primary_key=True),
    sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
    sa.Column("bot_id", sa.Text, nullable=False),
    sa.Column("report_kind", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("experiment_id", sa.Text),
    sa.Column("payload_json", sa.Text, nullable=False),
    _at("created_at"),
    sa.Index("operations_reports_experiment", "experiment_id", "event_type"),
)

# Outbox rows the relay published, recorded only after the JetStream PubAck (append-only).
report_publications = sa.Table(
    "report_publications", metadata,
    sa.Column("report_id", sa.Text, sa.ForeignKey("operations_reports.report_id"), primary_key=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("stream_seq", sa.BigInteger, nullable=False),
    sa.Column("duplicate", sa.Boolean, nullable=False),
    _at("published_at"),
)

# Running totals of stage durations (what the metrics endpoint reads: one small row per stage).
stage_durations = sa.Table(
    "stage_durations", metadata,
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("runs", sa.BigInteger, nullable=False),
    sa.Column("total_seconds", Float64, nullable=False),
    sa.Column("last_seconds", Float64, nullable=False),
    sa.Column("last_at_ms", sa.BigInteger, nullable=False),
)

# ---- evaluations, causal estimates, verdicts, drift signals, sign-offs, promotions ---------------------------
# Every look at an experiment, append-only; group-sequential information fractions come from earlier looks.
experiment_evaluations = sa.Table(
    "experiment_evaluations", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("ci_method", sa.Text, nullable=False),
    sa.Column("ci_95_low", Float64),
    sa.Column("ci_95_high", Float64),
    sa.Column("fixed_ci_95_low", Float64),
    sa.Column("fixed_ci_95_high", Float64),
    sa.Column("edge_delta_bps", Float64),
    sa.Column("p_value", Float64),
    sa.Column("power", Float64),
    sa.Column("drift_signalled", sa.Boolean, nullable=False),
    sa.Column("evaluation_json", sa.Text, nullable=False),
    _at("evaluated_at"),
    sa.Index("experiment_evaluations_latest", "experiment_id", "id"),
    **_SERIAL,
)

causal_estimates = sa.Table(
    "causal_estimates", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("fills", sa.BigInteger, nullable=False),
    sa.Column("result_json", sa.Text, nullable=False),
    _at("computed_at"),
    sa.Index("causal_estimates_latest", "experiment_id", "id"),
    **_SERIAL,
)

# The final verdict of each evaluation and the report it emitted (NULL when the evidence had not changed).
experiment_verdicts = sa.Table(
    "experiment_verdicts", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("evaluation_id", sa.BigInteger, sa.ForeignKey("experiment_evaluations.id"), nullable=False),
    sa.Column("causal_id", sa.BigInteger, sa.ForeignKey("causal_estimates.id")),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("basis", sa.Text, nullable=False),
    sa.Column("ci_95_low", Float64),
    sa.Column("ci_95_high", Float64),
    sa.Column("edge_delta_bps", Float64),
    sa.Column("drift", sa.Boolean, nullable=False),
    sa.Column("report_id", sa.Text, sa.ForeignKey("operations_reports.report_id")),
    sa.Column("verdict_json", sa.Text, nullable=False),
    _at("created_at"),
    sa.Index("experiment_verdicts_latest", "experiment_id", "id"),
    **_SERIAL,
)

# Drift signals to the StrategyRegistry with their delivery state (an outbox: an outage delays, never loses).
strategy_registry_signals = sa.Table(
    "strategy_registry_signals", metadata,
    _id(),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    _experiment_fk(),
    sa.Column("variant_slug", sa.Text, nullable=False),
    sa.Column("signal_type", sa.Text, nullable=False),
    sa.Column("verdict_id", sa.BigInteger, sa.ForeignKey("experiment_verdicts.id"), nullable=False),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.Column("delivery_status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    _at("created_at"),
    sa.Column("delivered_at", Timestamp),
    sa.CheckConstraint("delivery_status IN ('pending', 'delivered')", name="strategy_registry_signals_delivery_status_check"),
    sa.UniqueConstraint("experiment_id", "signal_type"),
    **_SERIAL,
)

# Human sign-offs of verdict reports, append-only.
signoffs = sa.Table(
    "signoffs", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("report_id", sa.Text, sa.ForeignKey("operations_reports.report_id"), nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("approver", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    _at("signed_at"),
    # "<key id>:<HMAC>" over (experiment, report, verdict, approver, note) with the anchor key: a rewritten approver
    # no longer verifies. NULL on sign-offs recorded before tamper evidence existed.
    sa.Column("anchor_hmac", sa.Text),
    sa.CheckConstraint("length(approver) > 0", name="signoffs_approver_check"),
    sa.UniqueConstraint("experiment_id", "report_id", "approver"),
    **_SERIAL,
)

promotions = sa.Table(
    "promotions", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("report_id", sa.Text, sa.ForeignKey("operations_reports.report_id"), nullable=False),
    sa.Column("variant_slug", sa.Text, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("signoff_id", sa.BigInteger, sa.ForeignKey("signoffs.id")),
    _at("promoted_at"),
    sa.UniqueConstraint("experiment_id", "report_id"),
    **_SERIAL,
)

# ---- governance: contracts, approvals pinned to a contract digest, the assignment log -----------------------
# Each distinct contract of an experiment as canonical JSON (si/jcs-strict/v1) with its sha256: digest.
experiment_contracts = sa.Table(
    "experiment_contracts", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("contract_digest", sa.Text, nullable=False),
    sa.Column("contract_json", sa.Text, nullable=False),
    sa.Column("risk_level", sa.Text, nullable=False),
    sa.Column("required_roles", sa.Text, nullable=False),
    _at("recorded_at"),
    sa.CheckConstraint("contract_digest LIKE 'sha256:%' AND length(contract_digest) = 71",
                       name="experiment_contracts_contract_digest_check"),
    sa.CheckConstraint("risk_level IN ('low', 'medium', 'high')", name="experiment_contracts_risk_level_check"),
    sa.UniqueConstraint("experiment_id", "contract_digest"),
    **_SERIAL,
)

_CONTRACT_FK = (("experiment_id", "contract_digest"),
                ("experiment_contracts.experiment_id", "experiment_contracts.contract_digest"))

# Who approved which contract, in which role, when: append-only. A changed contract needs new approvals.
approvals = sa.Table(
    "approvals", metadata,
    _id(),
    sa.Column("experiment_id", sa.Text, nullable=False),
    sa.Column("contract_digest", sa.Text, nullable=False),
    sa.Column("approver", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    _at("approved_at"),
    sa.Column("note", sa.Text),
    sa.CheckConstraint("length(approver) > 0", name="approvals_approver_check"),
    sa.CheckConstraint("length(role) > 0", name="approvals_role_check"),
    sa.UniqueConstraint("experiment_id", "contract_digest", "role", "approver"),
    sa.ForeignKeyConstraint(*_CONTRACT_FK),
    **_SERIAL,
)

# Deterministic variant assignments handed to the trading side: append-only log.
assignments = sa.Table(
    "assignments", metadata,
    _id(),
    sa.Column("experiment_id", sa.Text, nullable=False),
    sa.Column("contract_digest", sa.Text, nullable=False),
    sa.Column("unit_id", sa.Text, nullable=False),
    sa.Column("variant", sa.Text, nullable=False),
    sa.Column("bucket", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text),
    _at("assigned_at"),
    sa.CheckConstraint("length(unit_id) > 0", name="assignments_unit_id_check"),
    sa.CheckConstraint("bucket >= 0 AND bucket < 10000", name="assignments_bucket_check"),
    sa.CheckConstraint("reason IN ('assigned', 'eth_forced_control')", name="assignments_reason_check"),
    sa.ForeignKeyConstraint(*_CONTRACT_FK),
    sa.Index("assignments_unit", "experiment_id", "unit_id"),
    **_SERIAL,
)

# ---- continuous operation: stall episodes -----------------------------------------------------------------
# From the moment an experiment stops receiving samples (or the bus cannot be read) to its recovery; at most
# one open episode per experiment, so EXPERIMENT_STALLED is emitted once per episode.
experiment_stalls = sa.Table(
    "experiment_stalls", metadata,
    _id(),
    _experiment_fk(),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    sa.Column("resolved_at_ms", sa.BigInteger),
    **_SERIAL,
)
sa.Index("experiment_stalls_open", experiment_stalls.c.experiment_id, unique=True,
         postgresql_where=experiment_stalls.c.resolved_at_ms.is_(None),
         sqlite_where=experiment_stalls.c.resolved_at_ms.is_(None))

# Tables whose rows the database itself refuses to change (UPDATE, DELETE, and TRUNCATE on PostgreSQL): the
# triggers are dialect-specific, so the Alembic revisions create them from this list.
APPEND_ONLY = ("experiment_samples", "experiment_evaluations", "experiment_verdicts", "signoffs", "promotions",
               "experiment_contracts", "approvals", "assignments", "sample_chain_anchors")

# The columns of `experiments` that record the declaration: the database refuses to change them (only `status`
# changes), and the promotion gate compares them with the stored declaration and its digest.
DECLARATION_COLUMNS = ("experiment_id", "principal", "subject", "variant_slug", "control_slug", "mode",
                       "traffic_split_pct", "min_samples_for_decision", "auto_promote_on_winning",
                       "require_human_signoff", "started_at_ms", "caliper_seconds", "declaration_sha256",
                       "declaration_json", "source_file", "created_at", "registered_at_ms",
                       "parent_experiment_id", "variant_id")

