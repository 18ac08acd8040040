-- The report bus (NATS JetStream) as a report source, reports published to the bus, and stage timings.

-- One row per stream message, written in the transaction that stores the message (or its quarantine row), so a
-- message redelivered after that commit (a crash before its ack) is recognised and counted as a duplicate.
CREATE TABLE bus_messages (
    stream      TEXT NOT NULL,
    stream_seq  BIGINT NOT NULL,
    batch_id    BIGINT NOT NULL REFERENCES ingestion_batches (id),
    outcome     TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'quarantined', 'ignored')),
    PRIMARY KEY (stream, stream_seq)
);

-- Messages of the shared topic that are not fills (other bots' reports, this bot's own EXPERIMENT_* reports):
-- counted, never quarantined. A bus batch's messages = lines_read + ignored.
ALTER TABLE ingestion_batches ADD COLUMN ignored BIGINT NOT NULL DEFAULT 0 CHECK (ignored >= 0);

-- Outbox rows the relay published, recorded only after the JetStream PubAck (append-only).
CREATE TABLE report_publications (
    report_id    TEXT PRIMARY KEY REFERENCES operations_reports (report_id),
    subject      TEXT NOT NULL,
    stream       TEXT NOT NULL,
    stream_seq   BIGINT NOT NULL,
    duplicate    BOOLEAN NOT NULL,
    published_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Running totals of stage durations (what the metrics endpoint reads: one small row per stage).
CREATE TABLE stage_durations (
    stage          TEXT PRIMARY KEY,
    runs           BIGINT NOT NULL,
    total_seconds  DOUBLE PRECISION NOT NULL,
    last_seconds   DOUBLE PRECISION NOT NULL,
    last_at_ms     BIGINT NOT NULL
);
