-- Issue 6 governance: recorded experiment contracts, approvals pinned to a contract digest, and the assignment log.

-- Each distinct contract of an experiment, as canonical JSON (si/jcs-strict/v1) with its sha256: digest.
-- Approvals and assignments reference the contract they were made under.
CREATE TABLE experiment_contracts (
    id               BIGSERIAL PRIMARY KEY,
    experiment_id    TEXT NOT NULL REFERENCES experiments (experiment_id),
    contract_digest  TEXT NOT NULL CHECK (contract_digest LIKE 'sha256:%' AND length(contract_digest) = 71),
    contract_json    TEXT NOT NULL,
    risk_level       TEXT NOT NULL CHECK (risk_level IN ('low', 'medium', 'high')),
    required_roles   TEXT NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, contract_digest)
);

-- Who approved which contract, in which role, when: append-only. A changed contract needs new approvals.
CREATE TABLE approvals (
    id               BIGSERIAL PRIMARY KEY,
    experiment_id    TEXT NOT NULL,
    contract_digest  TEXT NOT NULL,
    approver         TEXT NOT NULL CHECK (length(approver) > 0),
    role             TEXT NOT NULL CHECK (length(role) > 0),
    approved_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    note             TEXT,
    UNIQUE (experiment_id, contract_digest, role, approver),
    FOREIGN KEY (experiment_id, contract_digest) REFERENCES experiment_contracts (experiment_id, contract_digest)
);

-- Deterministic variant assignments handed to the trading side: append-only log.
CREATE TABLE assignments (
    id               BIGSERIAL PRIMARY KEY,
    experiment_id    TEXT NOT NULL,
    contract_digest  TEXT NOT NULL,
    unit_id          TEXT NOT NULL CHECK (length(unit_id) > 0),
    variant          TEXT NOT NULL,
    bucket           INTEGER NOT NULL CHECK (bucket >= 0 AND bucket < 10000),
    reason           TEXT NOT NULL CHECK (reason IN ('assigned', 'eth_forced_control')),
    detail           TEXT,
    assigned_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (experiment_id, contract_digest) REFERENCES experiment_contracts (experiment_id, contract_digest)
);
CREATE INDEX assignments_unit ON assignments (experiment_id, unit_id);

CREATE TRIGGER experiment_contracts_append_only BEFORE UPDATE OR DELETE ON experiment_contracts
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER experiment_contracts_no_truncate BEFORE TRUNCATE ON experiment_contracts
    FOR EACH STATEMENT EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER approvals_append_only BEFORE UPDATE OR DELETE ON approvals
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER approvals_no_truncate BEFORE TRUNCATE ON approvals
    FOR EACH STATEMENT EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER assignments_append_only BEFORE UPDATE OR DELETE ON assignments
    FOR EACH ROW EXECUTE FUNCTION experimenttracker_append_only();
CREATE TRIGGER assignments_no_truncate BEFORE TRUNCATE ON assignments
    FOR EACH STATEMENT EXECUTE FUNCTION experimenttracker_append_only();
