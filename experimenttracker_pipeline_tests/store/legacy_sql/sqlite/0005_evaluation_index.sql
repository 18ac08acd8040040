-- SQLite has no INCLUDE columns; its primary key (experiment_id, sample_n) already serves the evaluation
-- aggregates of the embedded default. Kept so both dialects share one migration history.
SELECT 1;
