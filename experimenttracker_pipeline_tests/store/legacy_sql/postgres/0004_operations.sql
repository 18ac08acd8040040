-- Continuous operation: what the sensors read (cheap watermarks, never sample rows) and stall episodes.

-- Which strategy slugs each ingestion chunk brought, so the pairing sensor knows which experiments to pair
-- without scanning raw_reports. Written in the chunk's transaction; ids grow in commit order because
-- ingestion is serialised by an advisory lock.
CREATE TABLE ingestion_batch_slugs (
    batch_id      BIGINT NOT NULL REFERENCES ingestion_batches (id),
    strategy_slug TEXT NOT NULL,
    fills         BIGINT NOT NULL,
    PRIMARY KEY (batch_id, strategy_slug)
);

-- Wall-clock time at which new samples were last appended (recorded_at is the fills' event time).
ALTER TABLE experiment_pairing_state ADD COLUMN last_appended_at_ms BIGINT;

-- A stall episode: from the moment an experiment stops receiving samples (or the bus cannot be read) to its
-- recovery. EXPERIMENT_STALLED is emitted once per episode.
CREATE TABLE experiment_stalls (
    id            BIGSERIAL PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments (experiment_id),
    reason        TEXT NOT NULL,
    detail        TEXT,
    started_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT
);
CREATE UNIQUE INDEX experiment_stalls_open ON experiment_stalls (experiment_id) WHERE resolved_at_ms IS NULL;
ALTER TABLE experiments ADD COLUMN registered_at_ms BIGINT;
