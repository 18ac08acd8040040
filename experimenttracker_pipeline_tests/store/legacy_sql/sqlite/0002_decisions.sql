-- Spine part 2: evaluations (one row per look), causal estimates, verdicts, drift signals, sign-offs, promotions.

-- Every evaluation of an experiment (a "look"): the statistics behind it, append-only. Group-sequential
-- information fractions are read from the sample counts of earlier looks.
CREATE TABLE experiment_evaluations (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id     TEXT NOT NULL REFERENCES experiments (experiment_id),
    samples           BIGINT NOT NULL,
    verdict           TEXT NOT NULL,
    ci_method         TEXT NOT NULL,
    ci_95_low         REAL,
    ci_95_high        REAL,
    fixed_ci_95_low   REAL,
    fixed_ci_95_high  REAL,
    edge_delta_bps    REAL,
    p_value           REAL,
    power             REAL,
    drift_signalled   BOOLEAN NOT NULL,
    evaluation_json   TEXT NOT NULL,
    evaluated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX experiment_evaluations_latest ON experiment_evaluations (experiment_id, id);

CREATE TABLE causal_estimates (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL REFERENCES experiments (experiment_id),
    samples       BIGINT NOT NULL,
    fills         BIGINT NOT NULL,
    result_json   TEXT NOT NULL,
    computed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX causal_estimates_latest ON causal_estimates (experiment_id, id);

-- The final verdict of each evaluation: statistics + causal estimates + guardrails, and the report it emitted
-- (NULL when the evidence had not changed materially since the last report).
CREATE TABLE experiment_verdicts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id     TEXT NOT NULL REFERENCES experiments (experiment_id),
    evaluation_id     BIGINT NOT NULL REFERENCES experiment_evaluations (id),
    causal_id         BIGINT REFERENCES causal_estimates (id),
    samples           BIGINT NOT NULL,
    verdict           TEXT NOT NULL,
    basis             TEXT NOT NULL,
    ci_95_low         REAL,
    ci_95_high        REAL,
    edge_delta_bps    REAL,
    drift             BOOLEAN NOT NULL,
    report_id         TEXT REFERENCES operations_reports (report_id),
    verdict_json      TEXT NOT NULL,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX experiment_verdicts_latest ON experiment_verdicts (experiment_id, id);

-- Drift signals to the StrategyRegistry, with their delivery state (an outbox: an outage delays, never loses).
CREATE TABLE strategy_registry_signals (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    experiment_id    TEXT NOT NULL REFERENCES experiments (experiment_id),
    variant_slug     TEXT NOT NULL,
    signal_type      TEXT NOT NULL,
    verdict_id       BIGINT NOT NULL REFERENCES experiment_verdicts (id),
    payload_json     TEXT NOT NULL,
    delivery_status  TEXT NOT NULL DEFAULT 'pending' CHECK (delivery_status IN ('pending', 'delivered')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at     TEXT,
    UNIQUE (experiment_id, signal_type)
);

-- Human sign-offs: who approved which verdict report, append-only.
CREATE TABLE signoffs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id   TEXT NOT NULL REFERENCES experiments (experiment_id),
    report_id       TEXT NOT NULL REFERENCES operations_reports (report_id),
    verdict         TEXT NOT NULL,
    approver        TEXT NOT NULL CHECK (length(approver) > 0),
    note            TEXT,
    signed_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (experiment_id, report_id, approver)
);

CREATE TABLE promotions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id   TEXT NOT NULL REFERENCES experiments (experiment_id),
    report_id       TEXT NOT NULL REFERENCES operations_reports (report_id),
    variant_slug    TEXT NOT NULL,
    verdict         TEXT NOT NULL,
    signoff_id      BIGINT REFERENCES signoffs (id),
    promoted_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (experiment_id, report_id)
);

CREATE TRIGGER signoffs_no_update BEFORE UPDATE ON signoffs
BEGIN
    SELECT RAISE(ABORT, 'signoffs is append-only: UPDATE rejected');
END;
CREATE TRIGGER signoffs_no_delete BEFORE DELETE ON signoffs
BEGIN
    SELECT RAISE(ABORT, 'signoffs is append-only: DELETE rejected');
END;
CREATE TRIGGER promotions_no_update BEFORE UPDATE ON promotions
BEGIN
    SELECT RAISE(ABORT, 'promotions is append-only: UPDATE rejected');
END;
CREATE TRIGGER promotions_no_delete BEFORE DELETE ON promotions
BEGIN
    SELECT RAISE(ABORT, 'promotions is append-only: DELETE rejected');
END;
CREATE TRIGGER experiment_evaluations_no_update BEFORE UPDATE ON experiment_evaluations
BEGIN
    SELECT RAISE(ABORT, 'experiment_evaluations is append-only: UPDATE rejected');
END;
CREATE TRIGGER experiment_evaluations_no_delete BEFORE DELETE ON experiment_evaluations
BEGIN
    SELECT RAISE(ABORT, 'experiment_evaluations is append-only: DELETE rejected');
END;
CREATE TRIGGER experiment_verdicts_no_update BEFORE UPDATE ON experiment_verdicts
BEGIN
    SELECT RAISE(ABORT, 'experiment_verdicts is append-only: UPDATE rejected');
END;
CREATE TRIGGER experiment_verdicts_no_delete BEFORE DELETE ON experiment_verdicts
BEGIN
    SELECT RAISE(ABORT, 'experiment_verdicts is append-only: DELETE rejected');
END;
