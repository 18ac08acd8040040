-- Evaluation aggregates (COUNT/SUM/SUM of squares per metric) read one experiment's samples; a covering index
-- lets PostgreSQL answer them with an index-only scan even when samples of many experiments are interleaved
-- on disk (append-only rows stay all-visible after autovacuum).
CREATE INDEX experiment_samples_metrics ON experiment_samples (experiment_id)
    INCLUDE (edge_delta_bps, slippage_delta_bps, fill_quality_delta, variant_fill_pusd, control_fill_pusd, recorded_at_ms);
