-- Spine part 1: experiments, report ingestion, quarantine, immutable matched-pair samples, outbox.
CREATE TABLE experiments (
    experiment_id            TEXT PRIMARY KEY,
    principal                TEXT NOT NULL,
    subject                  TEXT NOT NULL,
    variant_slug             TEXT NOT NULL,
    control_slug             TEXT NOT NULL,
    mode                     TEXT NOT NULL CHECK (mode IN ('shadow_only', 'limited_live')),
    traffic_split_pct        REAL NOT NULL CHECK (traffic_split_pct > 0 AND traffic_split_pct <= 100),
    min_samples_for_decision INTEGER NOT NULL CHECK (min_samples_for_decision >= 2),
    auto_promote_on_winning  BOOLEAN NOT NULL,
    require_human_signoff    BOOLEAN NOT NULL,
    started_at_ms            BIGINT NOT NULL,
    caliper_seconds          REAL NOT NULL,
    declaration_sha256       TEXT NOT NULL,
    declaration_json         TEXT NOT NULL,
    source_file              TEXT NOT NULL,
    status                   TEXT NOT NULL DEFAULT 'active',
    created_at               TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE landing_files (
    path          TEXT PRIMARY KEY,
    byte_offset   BIGINT NOT NULL DEFAULT 0,
    lines_read    BIGINT NOT NULL DEFAULT 0,
    size_seen     BIGINT NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE raw_reports (
    report_id             TEXT PRIMARY KEY,
    report_kind           TEXT NOT NULL,
    event_type            TEXT NOT NULL,
    topic                 TEXT NOT NULL,
    bot_id                TEXT NOT NULL,
    strategy_slug         TEXT NOT NULL,
    mode                  TEXT NOT NULL,
    pair_key              TEXT NOT NULL,
    market_id             TEXT NOT NULL,
    size_pusd             REAL NOT NULL,
    notional_pusd         REAL NOT NULL,
    edge_pusd             REAL NOT NULL,
    slippage_bps          REAL NOT NULL,
    recorded_at_ms        BIGINT NOT NULL,
    experiment_id         TEXT,
    fill_quality          REAL,
    assignment_propensity REAL,
    covariates_json       TEXT,
    content_sha256        TEXT NOT NULL,
    source_file           TEXT NOT NULL,
    source_line           BIGINT NOT NULL,
    ingested_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX raw_reports_slug_time ON raw_reports (strategy_slug, recorded_at_ms);

CREATE TABLE quarantined_reports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source_file   TEXT NOT NULL,
    line_number   BIGINT NOT NULL,
    report_id     TEXT,
    reason_code   TEXT NOT NULL,
    detail        TEXT NOT NULL,
    raw_text      TEXT NOT NULL,
    quarantined_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source_file, line_number)
);
CREATE INDEX quarantined_reports_reason ON quarantined_reports (reason_code);

-- One row per file chunk, written in the same transaction as the chunk's data, so the accounting can
-- never disagree with what was stored: lines_read = accepted + duplicates + quarantined.
CREATE TABLE ingestion_batches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT,
    source_file   TEXT NOT NULL,
    from_offset   BIGINT NOT NULL,
    to_offset     BIGINT NOT NULL,
    first_line    BIGINT NOT NULL,
    lines_read    BIGINT NOT NULL,
    accepted      BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    quarantined   BIGINT NOT NULL,
    finished_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (lines_read = accepted + duplicates + quarantined)
);

-- Latest pairing state per experiment: what sensors and `status` read instead of counting sample rows.
CREATE TABLE experiment_pairing_state (
    experiment_id     TEXT PRIMARY KEY REFERENCES experiments (experiment_id),
    samples           BIGINT NOT NULL,
    orphan_variant    BIGINT NOT NULL,
    orphan_control    BIGINT NOT NULL,
    last_sample_at_ms BIGINT,
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE experiment_samples (
    experiment_id         TEXT NOT NULL REFERENCES experiments (experiment_id),
    sample_n              BIGINT NOT NULL CHECK (sample_n >= 1),
    variant_report_id     TEXT NOT NULL REFERENCES raw_reports (report_id),
    control_report_id     TEXT NOT NULL REFERENCES raw_reports (report_id),
    pair_key              TEXT NOT NULL,
    market_id             TEXT NOT NULL,
    variant_fill_pusd     REAL NOT NULL,
    control_fill_pusd     REAL NOT NULL,
    variant_notional_pusd REAL NOT NULL,
    control_notional_pusd REAL NOT NULL,
    variant_edge_pusd     REAL NOT NULL,
    control_edge_pusd     REAL NOT NULL,
    edge_delta_bps        REAL NOT NULL,
    slippage_delta_bps    REAL NOT NULL,
    fill_quality_delta    REAL,
    assignment_propensity REAL,
    covariates_json       TEXT,
    recorded_at_ms        BIGINT NOT NULL,
    recorded_at           TEXT NOT NULL,
    prev_hash             TEXT NOT NULL,
    sample_hash           TEXT NOT NULL,
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (experiment_id, sample_n),
    UNIQUE (experiment_id, variant_report_id),
    UNIQUE (experiment_id, control_report_id)
);

-- Samples are append-only (spec section 23): the database itself refuses UPDATE and DELETE.
-- (SQLite has no TRUNCATE; DELETE without WHERE is caught by the DELETE trigger.)
CREATE TRIGGER experiment_samples_no_update BEFORE UPDATE ON experiment_samples
BEGIN
    SELECT RAISE(ABORT, 'experiment_samples is append-only: UPDATE rejected');
END;
CREATE TRIGGER experiment_samples_no_delete BEFORE DELETE ON experiment_samples
BEGIN
    SELECT RAISE(ABORT, 'experiment_samples is append-only: DELETE rejected');
END;

CREATE TABLE operations_reports (
    report_id     TEXT PRIMARY KEY,
    dedupe_key    TEXT NOT NULL UNIQUE,
    bot_id        TEXT NOT NULL,
    report_kind   TEXT NOT NULL,
    topic         TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    severity      TEXT NOT NULL,
    experiment_id TEXT,
    payload_json  TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX operations_reports_experiment ON operations_reports (experiment_id, event_type);
