-- The newest ingestion batch an experiment's last pairing could see: pairing is due again only when a later
-- batch brought fills of its variant or control slug. The CLI and the sensors both read this watermark, so the
-- daemon never repeats pairing the CLI already did (NULL: not paired since this column exists; due once).
ALTER TABLE experiment_pairing_state ADD COLUMN paired_through_batch BIGINT;
-- The pass sensor and `run` look up the newest batch per strategy slug.
CREATE INDEX ingestion_batch_slugs_slug ON ingestion_batch_slugs (strategy_slug, batch_id);
