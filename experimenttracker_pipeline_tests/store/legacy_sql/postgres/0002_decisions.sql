-- Spine part 2: evaluations (one row per look), causal estimates, verdicts, drift signals, sign-offs, promotions.

-- Every evaluation of an experiment (a "look"): the statistics behind it, append-only. Group-sequential
-- information fractions are read from the sample counts of earlier looks.
CREATE TABLE experiment_evaluations (
    id                BIGSERIAL PRIMARY KEY,
    experiment_id     TEXT NOT NULL REFERENCES experiments (experiment_id),
    samples           BIGINT NOT NULL,
    verdict           TEXT NOT NULL,
    ci_method         TEXT NOT NULL,
    ci_95_low         DOUBLE PRECISION,
    ci_95_high        DOUBLE PRECISION,
    fixed_ci_95_low   DOUBLE PRECISION,
    fixed_ci_95_high  DOUBLE PRECISION,
    edge_delta_bps    DOUBLE PRECISION,
    p_value           DOUBLE PRECISION,
    power             DOUBLE PRECISION,
    drift_signalled   BOOLEAN NOT NULL,
    evaluation_json   TEXT NOT NULL,
    evaluated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX experiment_evaluations_latest ON experiment_evaluations (experiment_id, id);

CREATE TABLE causal_estimates (
    id            BIGSERIAL PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments (experiment_id),
    samples       BIGINT NOT NULL,
    fills         BIGINT NOT NULL,
    result_json   TEXT NOT NULL,
    computed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX causal_estimates_latest ON causal_estimates (experiment_id, id);

-- The final verdict of each evaluation: statistics + causal estimates + guardrails, and the report it emitted
-- (NULL when the evidence had not changed materially since the last report).
CREATE TABLE experiment_verdicts (
    id                BIGSERIAL PRIMARY KEY,
    experiment_id     TEXT NOT NULL REFERENCES experiments (experiment_id),
    evaluation_id     BIGINT NOT NULL REFERENCES experiment_evaluations (id),
    causal_id         BIGINT REFERENCES causal_estimates (id),
    samples           BIGINT NOT NULL,
    verdict           TEXT NOT NULL,
    basis             TEXT NOT NULL,
    ci_95_low         DOUBLE PRECISION,
    ci_95_high        DOUBLE PRECISION,
    edge_delta_bps    DOUBLE PRECISION,
    drift             BOOLEAN NOT NULL,
    report_id         TEXT REFERENCES operations_reports (report_id),
    verdict_json      TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX experiment_verdicts_latest ON experiment_verdicts (experiment_id, id);

-- Drift signals to the StrategyRegistry, with their delivery state (an outbox: an outage delays, never loses).
CREATE TABLE strategy_registry_signals (
    id               BIGSERIAL PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    experiment_id    TEXT NOT NULL REFERENCES experiments (experiment_id),
    variant_slug     TEXT NOT NULL,
    signal_type      TEXT NOT NULL,
    verdict_id       BIGINT NOT NULL REFERENCES experiment_verdicts (id),
    payload_json     TEXT NOT NULL,
    delivery_status  TEXT NOT NULL DEFAULT 'pending' CHECK (delivery_status IN ('pending', 'delivered')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    UNIQUE (experiment_id, signal_type)
);

-- Human sign-offs: who approved which verdict report, append-only.
CREATE TABLE signoffs (
    id              BIGSERIAL PRIMARY KEY,
    experiment_id   TEXT NOT NULL REFERENCES experiments (experiment_id),
    report_id       TEXT NOT NULL REFERENCES operations_reports (report_id),
    verdict         TEXT NOT NULL,
    approver        TEXT NOT NULL CHECK (length(approver) > 0),
    note            TEXT,
    signed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, report_id, approver)
);

CREATE TABLE promotions (
    id              BIGSERIAL PRIMARY KEY,
    experiment_id   TEXT NOT NULL REFERENCES experiments (experiment_id),
    report_id       TEXT NOT NULL REFERENCES operations_reports (report_id),
    variant_slug    TEXT NOT NULL,
    verdict         TEXT NOT NULL,
    signoff_id      BIGINT REFERENCES signoffs (id),
    promoted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, report_id)
);

CREATE FUNCTION experimenttracker_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER signoffs_append_only BEFORE UPDATE OR DELETE ON signoffs
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER promotions_append_only BEFORE UPDATE OR DELETE ON promotions
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER experiment_verdicts_append_only BEFORE UPDATE OR DELETE ON experiment_verdicts
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER experiment_evaluations_append_only BEFORE UPDATE OR DELETE ON experiment_evaluations
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
