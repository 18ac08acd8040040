"""A throwaway PostgreSQL experiment store holding many experiments and millions of samples, for benchmarks.

    from benchmarks.bigdata import create_big_database, drop_database
    url = create_big_database("postgresql://postgres@127.0.0.1:5432/postgres", experiments=1000, samples=10_000_000)
    try:
        ...  # Store(url) sees a migrated store: experiments, experiment_samples, experiment_pairing_state
    finally:
        drop_database(admin_url, url)

The database is migrated with the project's own migrations and holds:

* ``experiments``: valid shadow-only declarations (built with ``parse_experiment`` and
  ``Experiment.to_row()``, so the stages read them back with ``experiment_from_row``), a mix of A/A
  experiments, winners and losers with per-experiment true mean delta and standard deviation.
* ``experiment_samples``: ``samples`` rows spread evenly over the experiments, generated server-side
  (``INSERT ... SELECT ... FROM generate_series``, one statement per chunk of experiments). ``edge_delta_bps``
  is normal (Box-Muller on ``random()``, seeded with ``setseed``) around the experiment's mean, and the fill
  columns are consistent with it: ``(variant_edge - control_edge) / control_notional * 1e4 = edge_delta_bps``.
* ``experiment_pairing_state``: one row per experiment with its sample count.

Shortcuts, all because the benchmarks measure aggregation, not integrity:

* The two foreign keys ``experiment_samples.{variant,control}_report_id -> raw_reports`` are dropped for good
  in this database (no 20M raw reports are created; the report ids are synthetic strings).
* ``prev_hash`` / ``sample_hash`` hold 64-character placeholder strings, not a verifiable hash chain.
* By default ``experiment_samples`` is made UNLOGGED before the load (no WAL for ~5 GB of rows and indexes),
  and its primary key, unique constraints and foreign key to ``experiments`` are dropped during the load and
  re-created afterwards (one sorted index build each instead of 10M index insertions). Reads of an unlogged
  table go through the same buffer manager and plans as a logged one, so query timings are unaffected; the
  final schema is the migrated one minus the two raw_reports foreign keys.
* The append-only triggers are left alone: they fire on UPDATE, DELETE and TRUNCATE, never on INSERT.

Ends with ``VACUUM (ANALYZE)`` so the timed queries neither pay for setting hint bits on first read nor run
on default statistics.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experimenttracker_pipeline.model.experiment import parse_experiment  # noqa: E402
from experimenttracker_pipeline.settings import normalise_db_url  # noqa: E402
from experimenttracker_pipeline.store import Store  # noqa: E402

STARTED_AT = "2026-01-01T00:00:00Z"
STARTED_AT_MS = 1_767_225_600_000
SPAN_MS = 30 * 86_400_000  # each experiment's samples are spread over 30 days of event time
ROWS_PER_STATEMENT = 500_000

SAMPLE_INSERT = """
INSERT INTO experiment_samples (
    experiment_id, sample_n, variant_report_id, control_report_id, pair_key, market_id,
    variant_fill_pusd, control_fill_pusd, variant_notional_pusd, control_notional_pusd,
    variant_edge_pusd, control_edge_pusd, edge_delta_bps, slippage_delta_bps, fill_quality_delta,
    assignment_propensity, covariates_json, recorded_at_ms, recorded_at, prev_hash, sample_hash)
SELECT s.experiment_id, s.n,
       'V' || lpad(s.idx::text, 5, '0') || lpad(s.n::text, 20, '0'),
       'C' || lpad(s.idx::text, 5, '0') || lpad(s.n::text, 20, '0'),
       s.experiment_id || ':opp:' || s.n,
       'mkt_' || (s.n % 97),
       (100 + s.n % 50)::float8, (100 + (s.n * 3) % 50)::float8,
       s.notional, s.notional,
       s.control_edge + s.delta * s.notional / 10000.0, s.control_edge,
       s.delta,
       ((s.n * 31) % 11 - 5) * 0.5::float8,
       ((s.n * 13) % 7 - 3) * 0.01::float8,
       NULL,
       '{"category": "c' || (s.n % 4) || '"}',
       s.ms,
       to_char(to_timestamp(s.ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       lpad(to_hex(s.n - 1), 64, '0'),
       lpad(to_hex(s.n), 64, '0')
FROM (
    SELECT p.experiment_id, p.idx, g.n,
           (50 + g.n % 30)::float8 AS notional,
           ((g.n * 7919) % 200 - 100)::float8 / 100.0 AS control_edge,
           p.start_ms + g.n * p.step_ms AS ms,
           p.mean + p.sd * sqrt(-2.0 * ln(1.0 - random())) * cos(2.0 * pi() * random()) AS delta
    FROM unnest(CAST(:ids AS text[]), CAST(:idx AS int[]), CAST(:means AS float8[]), CAST(:sds AS float8[]),
                CAST(:counts AS bigint[]), CAST(:start_ms AS bigint[]), CAST(:step_ms AS bigint[]))
         AS p(experiment_id, idx, mean, sd, cnt, start_ms, step_ms)
    CROSS JOIN LATERAL generate_series(CAST(:lo AS bigint), LEAST(CAST(:hi AS bigint), p.cnt)) AS g(n)
    {order}
    OFFSET 0  -- a fence: each row draws its delta once, and every column derived from it sees the same value
) s
"""


def _database_url(admin_url: str, name: str) -> str:
    return sa.engine.make_url(normalise_db_url(admin_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database named in ``url`` (closing any session still connected to it)."""
    name = sa.engine.make_url(normalise_db_url(url)).database
    admin = sa.create_engine(normalise_db_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def experiment_plan(experiments: int, samples: int, seed: int) -> list[dict[str, Any]]:
    """Per experiment: id, slugs, true mean delta (bps), sd (bps) and sample count (spread evenly)."""
    rng = random.Random(seed)
    base, extra = divmod(samples, experiments)
    plan = []
    for i in range(experiments):
        kind = ("aa", "aa", "winner", "loser")[i % 4]
        effect = rng.uniform(0.2, 1.5)
        mean = {"aa": 0.0, "winner": effect, "loser": -effect}[kind]
        count = base + (1 if i < extra else 0)
        plan.append({"idx": i, "experiment_id": f"bench_e{i:05d}", "kind": kind, "mean": mean,
                     "sd": rng.uniform(5.0, 15.0), "count": count, "step_ms": max(1, SPAN_MS // max(count, 1))})
    return plan


def _declaration_row(item: dict[str, Any]) -> dict[str, Any]:
    raw = {"experiment_id": item["experiment_id"], "principal": "desk:bench", "variant_slug": f"bench-model-{item['idx']}-v2",
           "control_slug": f"bench-model-{item['idx']}", "mode": "shadow_only", "min_samples_for_decision": 100,
           "started_at": STARTED_AT}
    return parse_experiment(raw, f"bigdata/{item['experiment_id']}.yaml").to_row()


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {r[0] for r in conn.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = :t"),
        {"t": table})}


def create_big_database(admin_url: str, *, experiments: int = 1000, samples: int = 10_000_000, seed: int = 20260505,
                        layout: str = "clustered", unlogged: bool = True, name: str | None = None,
                        verbose: bool = True) -> str:
    """Create, migrate and fill a fresh database; returns its SQLAlchemy URL. Drops it again if the load fails.

    ``layout="clustered"`` writes each experiment's samples contiguously (the best case for a per-experiment
    aggregate: ~N/20 heap pages per experiment); ``"interleaved"`` writes them in arrival order across all
    experiments, as a live pipeline pairing many experiments at once does (each page holds rows of ~20
    experiments, so a per-experiment aggregate touches about one heap page per sample).
    """
    if experiments < 1 or samples < 0:
        raise ValueError("need experiments >= 1 and samples >= 0")
    if layout not in ("clustered", "interleaved"):
        raise ValueError(f"layout must be clustered or interleaved, not {layout!r}")
    say = print if verbose else (lambda *a, **k: None)
    name = name or f"et_bigdata_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_db_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    url = _database_url(admin_url, name)
    engine = None
    try:
        t_start = time.perf_counter()
        store = Store(url)
        applied = store.migrate()
        store.dispose()
        say(f"[bigdata] database {name}: migrations {', '.join(applied)}", flush=True)
        plan = experiment_plan(experiments, samples, seed)
        engine = sa.create_engine(normalise_db_url(url))
        with engine.begin() as conn:
            # Aggregation, not integrity, is measured: no raw reports exist here, so these two FKs go for good.
            for (constraint,) in conn.execute(sa.text(
                    "SELECT conname FROM pg_constraint WHERE conrelid = 'experiment_samples'::regclass AND contype = 'f' "
                    "AND confrelid = 'raw_reports'::regclass")).all():
                conn.exec_driver_sql(f'ALTER TABLE experiment_samples DROP CONSTRAINT "{constraint}"')
            # Primary key, unique constraints and the FK to experiments: dropped for the load, re-created after it.
            deferred = conn.execute(sa.text(
                "SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
                "WHERE conrelid = 'experiment_samples'::regclass AND contype IN ('p', 'u', 'f') "
                "ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 ELSE 2 END, conname")).all()
            for constraint, _definition, _kind in deferred:
                conn.exec_driver_sql(f'ALTER TABLE experiment_samples DROP CONSTRAINT "{constraint}"')
            if unlogged:
                conn.exec_driver_sql("ALTER TABLE experiment_samples SET UNLOGGED")

            exp_columns = _columns(conn, "experiments")
            rows = []
            for item in plan:
                row = _declaration_row(item)
                if "registered_at_ms" in exp_columns:
                    row["registered_at_ms"] = STARTED_AT_MS
                rows.append(row)
            cols = list(rows[0])
            conn.execute(sa.text(f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"), rows)
            state_columns = _columns(conn, "experiment_pairing_state")
            state = [{"e": p["experiment_id"], "n": p["count"], "t": STARTED_AT_MS + p["count"] * p["step_ms"] if p["count"] else None}
                     for p in plan]
            extra_col, extra_val = (", last_appended_at_ms", ", :t") if "last_appended_at_ms" in state_columns else ("", "")
            conn.execute(sa.text(
                "INSERT INTO experiment_pairing_state (experiment_id, samples, orphan_variant, orphan_control, last_sample_at_ms"
                f"{extra_col}) VALUES (:e, :n, 0, 0, :t{extra_val})"), state)
        say(f"[bigdata] {experiments:,} experiments registered; loading {samples:,} samples ({layout} layout)", flush=True)

        t_load = time.perf_counter()
        loaded = 0
        if layout == "clustered":  # one statement per chunk of experiments, all their samples
            per_experiment = max(1, samples // experiments)
            chunk = max(1, ROWS_PER_STATEMENT // per_experiment)
            statements = [(plan[start:start + chunk], 1, max(p["count"] for p in plan)) for start in range(0, experiments, chunk)]
            insert_sql = SAMPLE_INSERT.replace("{order}", "")
        else:  # one statement per range of sample_n, all experiments, rows ordered by arrival (n, experiment)
            width = max(1, ROWS_PER_STATEMENT // experiments)
            top = max(p["count"] for p in plan)
            statements = [(plan, lo, lo + width - 1) for lo in range(1, top + 1, width)]
            insert_sql = SAMPLE_INSERT.replace("{order}", "ORDER BY g.n, p.idx")
        with engine.connect() as conn:
            conn.exec_driver_sql("SET synchronous_commit = off")
            # setseed takes a value in [-1, 1]; INSERT ... SELECT runs serially, so the draws are reproducible.
            conn.execute(sa.text("SELECT setseed(:s)"), {"s": (seed % 2_000_003) / 2_000_003.0})
            conn.commit()
            for group, lo, hi in statements:
                part = [p for p in group if p["count"] >= lo]
                if not part:
                    continue
                conn.execute(sa.text(insert_sql), {"lo": lo, "hi": hi,
                    "ids": [p["experiment_id"] for p in part], "idx": [p["idx"] for p in part],
                    "means": [p["mean"] for p in part], "sds": [p["sd"] for p in part],
                    "counts": [p["count"] for p in part], "start_ms": [STARTED_AT_MS] * len(part),
                    "step_ms": [p["step_ms"] for p in part]})
                conn.commit()
                loaded += sum(min(p["count"], hi) - lo + 1 for p in part)
                elapsed = time.perf_counter() - t_load
                say(f"[bigdata]   {loaded:>12,} / {samples:,} samples  {elapsed:7.1f} s  {loaded / elapsed:>10,.0f} rows/s",
                    flush=True)
            insert_s = time.perf_counter() - t_load

            t_index = time.perf_counter()
            conn.exec_driver_sql("SET maintenance_work_mem = '256MB'")
            for constraint, definition, _kind in deferred:
                conn.exec_driver_sql(f'ALTER TABLE experiment_samples ADD CONSTRAINT "{constraint}" {definition}')
                conn.commit()
                say(f"[bigdata]   re-created {constraint} ({time.perf_counter() - t_index:.1f} s)", flush=True)
            index_s = time.perf_counter() - t_index

            t_vacuum = time.perf_counter()
            conn.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) experiment_samples")
            conn.exec_driver_sql("ANALYZE experiments")
            conn.exec_driver_sql("ANALYZE experiment_pairing_state")
            size = conn.exec_driver_sql("SELECT pg_size_pretty(pg_total_relation_size('experiment_samples')), "
                                        "pg_size_pretty(pg_relation_size('experiment_samples'))").one()
        vacuum_s = time.perf_counter() - t_vacuum
        total_s = time.perf_counter() - t_start
        say(f"[bigdata] loaded {samples:,} samples into {experiments:,} experiments in {total_s:.1f} s "
            f"(insert {insert_s:.1f} s = {samples / max(insert_s, 1e-9):,.0f} rows/s, constraints {index_s:.1f} s, "
            f"vacuum+analyze {vacuum_s:.1f} s); experiment_samples {size[0]} with indexes, {size[1]} heap", flush=True)
        return url
    except BaseException:
        if engine is not None:
            engine.dispose()
            engine = None
        drop_database(admin_url, url)
        raise
    finally:
        if engine is not None:
            engine.dispose()


if __name__ == "__main__":  # a quick manual check: build a small database, show its counts, drop it
    admin_url = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    url = create_big_database(admin_url, experiments=20, samples=200_000)
    try:
        engine = sa.create_engine(normalise_db_url(url))
        with engine.connect() as conn:
            print(conn.exec_driver_sql("SELECT COUNT(*), COUNT(DISTINCT experiment_id), AVG(edge_delta_bps), "
                                       "STDDEV(edge_delta_bps) FROM experiment_samples").one())
        engine.dispose()
    finally:
        drop_database(admin_url, url)
