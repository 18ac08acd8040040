"""Store queries of the samples stage: candidates for pairing, the append-only sample chain, the pairing state."""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.stages.samples.pairing import (
    CONTROL_MODE,
    GENESIS_HASH,
    SAMPLE_HASH_FIELDS,
    VARIANT_MODES,
    Candidate,
)
from experimenttracker_pipeline.stages.declarations.queries import has_comparisons
from experimenttracker_pipeline.stages.ingestion.queries import tagged_for
from experimenttracker_pipeline.store import Store, bulk_load, upsert
from experimenttracker_pipeline.store.schema import (
    experiment_pairing_state,
    experiment_samples,
    experiment_verdicts,
    experiments,
    ingestion_batches,
    raw_reports,
    sample_chain_anchors,
)

SAMPLE_COLUMNS = SAMPLE_HASH_FIELDS + ("prev_hash", "sample_hash")
SAMPLE_LOCK = 7423003  # pg_advisory_xact_lock(key, hashtext(experiment_id)): one writer per experiment's chain
_samples = experiment_samples.c
_CHAIN = [_samples[c] for c in SAMPLE_COLUMNS]


def lock_experiment(conn: Connection, experiment_id: str) -> None:
    """Serialise writers of one experiment's samples (PostgreSQL advisory lock; SQLite locks the file)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SAMPLE_LOCK, sa.func.hashtext(experiment_id))))


def sample_tail(conn: Connection, experiment_id: str) -> tuple[int, str]:
    """(sample_n, sample_hash) of the last sample, or (0, the genesis hash) before the first."""
    row = conn.execute(sa.select(_samples.sample_n, _samples.sample_hash).where(_samples.experiment_id == experiment_id)
                       .order_by(_samples.sample_n.desc()).limit(1)).first()
    return (int(row[0]), row[1]) if row else (0, GENESIS_HASH)


def get_sample(conn: Connection, experiment_id: str, sample_n: int) -> dict[str, Any]:
    return dict(conn.execute(sa.select(*_CHAIN).where(_samples.experiment_id == experiment_id,
                                                      _samples.sample_n == sample_n)).mappings().one())


def unpaired_candidates(conn: Connection, exp: Mapping[str, Any]) -> tuple[list[Candidate], list[Candidate]]:
    """Fills eligible for this experiment that are not yet half of one of its samples, split by role."""
    r = raw_reports.c
    experiment_id = exp["experiment_id"]

    def unpaired(half: sa.Column) -> sa.ColumnElement[bool]:
        return ~sa.exists().where(_samples.experiment_id == experiment_id, half == r.report_id)

    query = sa.select(r.strategy_slug, *(r[f] for f in Candidate.__dataclass_fields__)).where(
        r.recorded_at_ms >= exp["started_at_ms"],
        tagged_for(exp),
        sa.or_(sa.and_(r.strategy_slug == exp["variant_slug"], r.mode.in_(list(VARIANT_MODES[exp["mode"]]))),
               sa.and_(r.strategy_slug == exp["control_slug"], r.mode == CONTROL_MODE)),
        unpaired(_samples.variant_report_id), unpaired(_samples.control_report_id))
    variants, controls = [], []
    for row in conn.execute(query):
        (variants if row[0] == exp["variant_slug"] else controls).append(Candidate(*row[1:]))
    return variants, controls


def append_samples(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append sample rows (the caller numbered and chained them). Never updates."""
    if rows:
        bulk_load(conn, experiment_samples, SAMPLE_COLUMNS, ([row[c] for c in SAMPLE_COLUMNS] for row in rows))


def last_sample_time(conn: Connection, experiment_id: str) -> int | None:
    """The newest sample time recorded in the pairing state (no scan of the samples)."""
    t = experiment_pairing_state.c
    value = conn.execute(sa.select(t.last_sample_at_ms).where(t.experiment_id == experiment_id)).scalar()
    return int(value) if value is not None else None


def save_pairing_state(conn: Connection, experiment_id: str, samples: int, orphan_variant: int, orphan_control: int,
                       last_sample_at_ms: int | None, appended: int = 0, paired_through_batch: int | None = None) -> None:
    """Upsert the experiment's pairing state; the append time moves only when samples were appended, the pairing
    watermark only when given."""
    t = experiment_pairing_state
    insert = upsert(conn, t).values(
        experiment_id=experiment_id, samples=samples, orphan_variant=orphan_variant, orphan_control=orphan_control,
        last_sample_at_ms=last_sample_at_ms, last_appended_at_ms=int(time.time() * 1000) if appended else None,
        paired_through_batch=paired_through_batch)
    new = insert.excluded
    conn.execute(insert.on_conflict_do_update(index_elements=["experiment_id"], set_={
        "samples": new.samples, "orphan_variant": new.orphan_variant, "orphan_control": new.orphan_control,
        "last_sample_at_ms": new.last_sample_at_ms, "updated_at": new.updated_at,
        "last_appended_at_ms": sa.func.coalesce(new.last_appended_at_ms, t.c.last_appended_at_ms),
        "paired_through_batch": sa.func.coalesce(new.paired_through_batch, t.c.paired_through_batch)}))


def newest_batch(conn: Connection) -> int:
    """The newest committed ingestion batch id. Read at the start of a pairing transaction: ingestion commits
    batches in id order (serialised), so every fill of a batch up to this id is visible to that pairing."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(ingestion_batches.c.id), 0))).scalar())


def pairing_state(store: Store, experiment_id: str) -> dict[str, Any] | None:
    rows = store.rows(sa.select(experiment_pairing_state).where(experiment_pairing_state.c.experiment_id == experiment_id))
    return rows[0] if rows else None


def pairing_states(store: Store) -> dict[str, dict[str, Any]]:
    return {r["experiment_id"]: r for r in store.rows(sa.select(experiment_pairing_state))}


def _sandbox(e) -> sa.ColumnElement[bool]:
    """The stored declaration (``json.dumps(sort_keys=True)``, so key and value are written exactly so, and a
    quote inside a text value is escaped) declares ``polb_config.envelope_mode: sandbox``."""
    return sa.case((e.declaration_json.contains('"envelope_mode": "sandbox"', autoescape=True), True), else_=False)


def sensor_snapshot(store: Store, experiment_id: str | None = None) -> list[dict[str, Any]]:
    """Per experiment (or the one named; A/B/n comparisons included), what the sensors and `run` decide from, in
    one query over small tables (never sample rows): counts, the pairing watermark, the sample count of the latest
    verdict (the evaluation watermark), whether it is a sandbox experiment (no pairs: valued from the control's
    logs) and whether it is an A/B/n experiment (evaluated as its comparisons)."""
    e, p, v = experiments.c, experiment_pairing_state.c, experiment_verdicts.c
    evaluated = (sa.select(v.samples).where(v.experiment_id == e.experiment_id).order_by(v.id.desc()).limit(1)
                 .scalar_subquery().label("evaluated_samples"))
    query = (sa.select(e.experiment_id, e.status, e.mode, e.variant_slug, e.control_slug, e.min_samples_for_decision,
                       e.registered_at_ms, e.source_file, sa.func.coalesce(p.samples, 0).label("samples"),
                       p.last_appended_at_ms, p.paired_through_batch, evaluated, _sandbox(e).label("sandbox"),
                       e.parent_experiment_id, has_comparisons().label("has_comparisons"))
             .select_from(experiments.outerjoin(experiment_pairing_state, p.experiment_id == e.experiment_id))
             .order_by(e.experiment_id))
    if experiment_id is not None:
        query = query.where(e.experiment_id == experiment_id)
    return store.rows(query)


def iter_samples(store: Store, experiment_id: str, batch: int = 20_000) -> Iterator[dict[str, Any]]:
    """All samples of one experiment in sample_n order, streamed in keyset pages."""
    last = 0
    while True:
        page = store.rows(sa.select(*_CHAIN).where(_samples.experiment_id == experiment_id, _samples.sample_n > last)
                          .order_by(_samples.sample_n).limit(batch))
        if not page:
            return
        yield from page
        last = page[-1]["sample_n"]


def sample_count(store: Store, experiment_id: str) -> int:
    return int(store.scalar(sa.select(sa.func.count()).select_from(experiment_samples)
                            .where(_samples.experiment_id == experiment_id)))


def sample_head(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The last sample of an experiment's hash chain (sample_n, sample_hash, recorded_at_ms), or None."""
    rows = store.rows(sa.select(_samples.sample_n, _samples.sample_hash, _samples.recorded_at_ms)
                      .where(_samples.experiment_id == experiment_id).order_by(_samples.sample_n.desc()).limit(1))
    return rows[0] if rows else None


def sample_hash_at(store: Store, experiment_id: str, sample_n: int) -> str | None:
    """The stored hash of sample ``sample_n``, or None when there is no such sample."""
    return store.scalar(sa.select(_samples.sample_hash).where(_samples.experiment_id == experiment_id,
                                                              _samples.sample_n == sample_n))


def insert_anchor(store: Store, row: Mapping[str, Any]) -> None:
    """Record an anchored chain head once (the same head anchored again with the same key is a no-op)."""
    with store.begin() as conn:
        conn.execute(upsert(conn, sample_chain_anchors).values(dict(row)).on_conflict_do_nothing(
            index_elements=["experiment_id", "sample_n", "key_id"]))


def chain_anchors(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """Every anchored chain head of one experiment, oldest first."""
    a = sample_chain_anchors.c
    return store.rows(sa.select(sample_chain_anchors).where(a.experiment_id == experiment_id).order_by(a.id))


def latest_anchor(store: Store, experiment_id: str, key_id: str, upto: int) -> dict[str, Any] | None:
    """The anchor with the highest sample_n <= ``upto`` made with the key ``key_id``, or None."""
    a = sample_chain_anchors.c
    rows = store.rows(sa.select(sample_chain_anchors).where(a.experiment_id == experiment_id, a.key_id == key_id,
                                                            a.sample_n <= upto).order_by(a.sample_n.desc()).limit(1))
    return rows[0] if rows else None
