"""Store queries of the intervals stage: the sufficient statistics of each metric, aggregated in SQL, and the looks.

The aggregates below are the only way the statistics read samples (sample rows are never loaded into Python):

* `metric_stats`: COUNT and the sums of powers of every surface metric, ratio metrics' cross sums;
* `look_delta_stats`: the same for the primary metric at each planned look;
* `winsorized_delta_stats`: sums of the primary metric clipped at its percentiles;
* `cumulative_delta_stats`: running sums at checkpoints (the confidence-sequence chart);
* `covariate_stats`: the cross sums of a regression of the primary metric on numeric covariates.

Sums are taken about a reference value k (the metric's first recorded value in the experiment), so that the
variance of data far from zero (1e8 + N(0, 1)) keeps its digits.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from experimenttracker_pipeline.stages.ingestion.queries import tagged_for
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import experiment_evaluations, experiment_samples, raw_reports

_s = experiment_samples.c
# Per-sample metrics of the evaluation surface (means of a per-pair value) ...
METRIC_EXPRESSIONS: dict[str, sa.ColumnElement[float]] = {
    "edge_delta_bps": _s.edge_delta_bps,
    "slippage_delta_bps": _s.slippage_delta_bps,
    "fill_quality_delta": _s.fill_quality_delta,
}
# ... and ratio metrics: sum of the numerator over sum of the denominator across pairs (delta method).
RATIO_METRICS: dict[str, tuple[sa.Column, sa.Column]] = {"fill_size_ratio": (_s.variant_fill_pusd, _s.control_fill_pusd)}
METRIC_COLUMNS = tuple(METRIC_EXPRESSIONS) + tuple(RATIO_METRICS)
_sum, _count, _coalesce, _max = sa.func.sum, sa.func.count, sa.func.coalesce, sa.func.max


def _metric(name: str) -> sa.ColumnElement[float]:
    if name not in METRIC_EXPRESSIONS:
        raise ValueError(f"unknown metric {name!r}")
    return METRIC_EXPRESSIONS[name]


def _of(experiment_id: str) -> sa.ColumnElement[bool]:
    return _s.experiment_id == experiment_id


def _reference(expr: sa.ColumnElement[float], experiment_id: str) -> sa.ColumnElement[float]:
    """The metric's first recorded value in the experiment (0 when it has none): the reference k of its sums."""
    first = (sa.select(expr).where(_of(experiment_id), expr.is_not(None)).order_by(_s.sample_n).limit(1)
             .correlate(None).scalar_subquery())
    return _coalesce(first, 0.0)


def _with_reference(ref: sa.CTE) -> sa.Join:
    """experiment_samples CROSS JOIN the one-row reference CTE."""
    return experiment_samples.join(ref, sa.true())


def metric_stats(store: Store, experiment_id: str) -> dict[str, tuple]:
    """Sufficient statistics of every surface metric in one aggregate query, about each column's first value k.

    Per-pair metrics: (n, Σ(x-k), Σ(x-k)², k, Σ(x-k)³), i.e. ``stats.SufficientStats(n, total, total_sq, shift,
    total_cube)``. Ratio metrics: (n, Σu, Σv, Σu², Σv², Σuv, kx, ky) with u = numerator - kx, v = denominator - ky,
    i.e. ``stats.RatioStats``."""
    references = dict(METRIC_EXPRESSIONS)
    for num, den in RATIO_METRICS.values():
        references.setdefault(num.name, num)
        references.setdefault(den.name, den)
    ref = sa.select(*(_reference(expr, experiment_id).label(f"{name}_k") for name, expr in references.items())).cte("ref")
    k = {name: ref.c[f"{name}_k"] for name in references}
    columns: list[sa.ColumnElement[Any]] = []
    for name, expr in METRIC_EXPRESSIONS.items():
        y = expr - k[name]
        columns += [_count(expr).label(f"{name}_n"), _coalesce(_sum(y), 0).label(f"{name}_s"),
                    _coalesce(_sum(y * y), 0).label(f"{name}_ss"), _coalesce(_sum(y * y * y), 0).label(f"{name}_s3"),
                    _max(k[name]).label(f"{name}_k")]
    for name, (num, den) in RATIO_METRICS.items():
        both = sa.and_(num.is_not(None), den.is_not(None))
        u, v = num - k[num.name], den - k[den.name]
        columns.append(_sum(sa.case((both, 1), else_=0)).label(f"{name}_n"))
        columns += [_coalesce(_sum(sa.case((both, e))), 0).label(f"{name}_{key}")
                    for key, e in (("su", u), ("sv", v), ("suu", u * u), ("svv", v * v), ("suv", u * v))]
        columns += [_max(k[num.name]).label(f"{name}_kx"), _max(k[den.name]).label(f"{name}_ky")]
    row = store.rows(sa.select(*columns).select_from(_with_reference(ref)).where(_of(experiment_id)))[0]
    out: dict[str, tuple] = {name: (int(row[f"{name}_n"]), float(row[f"{name}_s"]), float(row[f"{name}_ss"]),
                                    float(row[f"{name}_k"] or 0.0), float(row[f"{name}_s3"])) for name in METRIC_EXPRESSIONS}
    for name in RATIO_METRICS:
        out[name] = (int(row[f"{name}_n"] or 0), *(float(row[f"{name}_{key}"]) for key in ("su", "sv", "suu", "svv", "suv")),
                     float(row[f"{name}_kx"] or 0.0), float(row[f"{name}_ky"] or 0.0))
    return out


def look_delta_stats(store: Store, experiment_id: str, look_samples: Sequence[int]) -> list[tuple[int, float, float, float, float]]:
    """Statistics of edge_delta_bps over the first n_k pairs for each planned look n_1 < ... < n_K, as
    ``metric_stats`` tuples: one aggregate grouped by look, accumulated here (pairs 1..N are gapless)."""
    bounds = [int(b) for b in look_samples]
    if not bounds:
        return []
    ref = sa.select(_reference(_s.edge_delta_bps, experiment_id).label("k")).cte("ref")
    look = sa.case(*((_s.sample_n <= b, i) for i, b in enumerate(bounds)))
    y = _s.edge_delta_bps - ref.c.k
    rows = store.rows(sa.select(look.label("look"), _count().label("n"), _sum(y).label("s"), _sum(y * y).label("ss"),
                                _sum(y * y * y).label("s3"), _max(ref.c.k).label("k"))
                      .select_from(_with_reference(ref)).where(_of(experiment_id), _s.sample_n <= bounds[-1])
                      .group_by(look))
    by_look = {int(r["look"]): r for r in rows}
    out, n, s1, s2, s3 = [], 0, 0.0, 0.0, 0.0
    k = float(rows[0]["k"]) if rows else 0.0
    for i, b in enumerate(bounds):
        r = by_look.get(i)
        if r is not None:
            n, s1, s2, s3 = n + int(r["n"]), s1 + float(r["s"]), s2 + float(r["ss"]), s3 + float(r["s3"])
        if n < b:  # this look's pairs are not all recorded yet
            break
        out.append((n, s1, s2, k, s3))
    return out


def winsorized_delta_stats(store: Store, experiment_id: str, pct: float, column: str = "edge_delta_bps",
                           upto: int | None = None) -> dict[str, Any] | None:
    """Statistics of the metric clipped at its ``pct`` and ``100 - pct`` percentiles (linear interpolation, as
    numpy and PostgreSQL's percentile_cont), computed in the database: two ordered probes and one aggregate.
    ``upto``: only the first ``upto`` pairs (a planned look). Sums are about the lower clip point."""
    col = _metric(column)
    window = [_of(experiment_id)] + ([] if upto is None else [_s.sample_n <= upto])
    n = int(store.scalar(sa.select(_count(col)).where(*window)))
    if n == 0:
        return None

    def quantile(q: float) -> float:
        position = q * (n - 1)
        lower = int(position)
        values = [r["v"] for r in store.rows(sa.select(col.label("v")).where(*window, col.is_not(None))
                                             .order_by(col).limit(2).offset(lower))]
        if len(values) == 1 or position == lower:
            return float(values[0])
        return float(values[0] + (values[1] - values[0]) * (position - lower))

    lo, hi = quantile(pct / 100.0), quantile(1 - pct / 100.0)
    low, high = sa.literal(lo), sa.literal(hi)
    # Clipped values minus the lower clip point lie in [0, hi - lo]: sums of powers lose no digits.
    y = sa.case((col < low, low), (col > high, high), else_=col) - low
    row = store.rows(sa.select(
        _count(col).label("n"), _sum(y).label("s"), _sum(y * y).label("ss"), _sum(y * y * y).label("s3"),
        _sum(sa.case((sa.or_(col < low, col > high), 1), else_=0)).label("k"))
        .where(*window, col.is_not(None)))[0]
    return {"n": int(row["n"]), "total": float(row["s"]), "total_sq": float(row["ss"]), "shift": lo,
            "total_cube": float(row["s3"]), "lower": lo, "upper": hi, "n_clipped": int(row["k"]), "pct": pct}


def cumulative_delta_stats(store: Store, experiment_id: str, upto: int, points: int = 200) -> list[tuple[int, float, float, float]]:
    """(n, Σ(d-k), Σ(d-k)², k) of edge_delta_bps after sample n, at about ``points`` checkpoints up to sample
    ``upto``, k the experiment's first delta: window sums computed in the database, so a chart of the confidence
    sequence never loads sample rows. sample_n runs 1..N without gaps (the hash chain guarantees it), so n is
    also the count."""
    step = max(1, -(-upto // points))
    ref = sa.select(_reference(_s.edge_delta_bps, experiment_id).label("k")).cte("ref")
    y = _s.edge_delta_bps - ref.c.k
    running = (sa.select(_s.sample_n.label("n"), ref.c.k, _sum(y).over(order_by=_s.sample_n).label("s"),
                         _sum(y * y).over(order_by=_s.sample_n).label("ss"))
               .select_from(_with_reference(ref)).where(_of(experiment_id), _s.sample_n <= upto).subquery())
    rows = store.rows(sa.select(running).where(sa.or_(running.c.n % step == 0, running.c.n == upto)).order_by(running.c.n))
    return [(int(r["n"]), float(r["s"]), float(r["ss"]), float(r["k"])) for r in rows]


def _numeric_covariate(dialect: str, name: str) -> sa.ColumnElement[float]:
    """A covariate of the pair as a number, NULL when it is missing or not numeric (JSON functions differ by dialect)."""
    if dialect == "postgresql":
        value = sa.cast(_s.covariates_json, postgresql.JSONB)[name]
        return sa.case((sa.func.jsonb_typeof(value) == "number", sa.cast(value.astext, sa.Double)))
    path = '$."' + name.replace('"', "") + '"'
    return sa.case((sa.func.json_type(_s.covariates_json, path).in_(["integer", "real"]),
                    sa.cast(sa.func.json_extract(_s.covariates_json, path), sqlite.REAL)))


def covariate_stats(store: Store, experiment_id: str, covariates: Sequence[str]) -> dict[str, Any]:
    """Sufficient statistics for regressing edge_delta_bps on numeric covariates (``stats.RegressionStats``),
    about the first pair's values, in one aggregate; plus the count of pairs lacking a numeric value for
    any of them (then no adjustment is made, nothing is dropped silently)."""
    names = list(covariates)
    xs = [_numeric_covariate(store.dialect, c) for c in names]
    complete = [_of(experiment_id), *(x.is_not(None) for x in xs)]
    first = store.rows(sa.select(_s.edge_delta_bps.label("d"), *(x.label(f"x{i}") for i, x in enumerate(xs)))
                       .where(*complete).order_by(_s.sample_n).limit(1))
    total = int(store.scalar(sa.select(_count()).select_from(experiment_samples).where(_of(experiment_id))))
    if not first:
        return {"covariates": names, "pairs": total, "missing": total, "stats": None}
    kd = float(first[0]["d"])
    kx = [float(first[0][f"x{i}"]) for i in range(len(xs))]
    ys = [x - k for x, k in zip(xs, kx)]
    d = _s.edge_delta_bps - kd
    p = len(xs)
    columns = [_count().label("n"), _sum(d).label("sd"), _sum(d * d).label("sdd")]
    columns += [_sum(y).label(f"sx{i}") for i, y in enumerate(ys)]
    columns += [_sum(y * d).label(f"sxd{i}") for i, y in enumerate(ys)]
    columns += [_sum(ys[i] * ys[j]).label(f"sxx{i}_{j}") for i in range(p) for j in range(i, p)]
    row = store.rows(sa.select(*columns).where(*complete))[0]
    sxx = [[0.0] * p for _ in range(p)]
    for i in range(p):
        for j in range(i, p):
            sxx[i][j] = sxx[j][i] = float(row[f"sxx{i}_{j}"])
    stats = {"n": int(row["n"]), "sum_d": float(row["sd"]), "sum_dd": float(row["sdd"]),
             "sum_x": tuple(float(row[f"sx{i}"]) for i in range(p)), "sum_xx": tuple(map(tuple, sxx)),
             "sum_xd": tuple(float(row[f"sxd{i}"]) for i in range(p)), "shift_d": kd, "shift_x": tuple(kx)}
    return {"covariates": names, "pairs": total, "missing": total - int(row["n"]), "stats": stats}


def arm_fill_counts(store: Store, exp: Mapping[str, Any]) -> tuple[int, int]:
    """Live fills routed to the variant and to the control since the experiment started (for the SRM check)."""
    r = raw_reports.c

    def count(slug: str) -> sa.ColumnElement[int]:
        return _sum(sa.case((r.strategy_slug == slug, 1), else_=0))

    row = store.rows(sa.select(count(exp["variant_slug"]).label("nv"), count(exp["control_slug"]).label("nc"))
                     .where(*live_fills_of(exp)))[0]
    return int(row["nv"] or 0), int(row["nc"] or 0)


def live_fills_of(exp: Mapping[str, Any]) -> tuple[sa.ColumnElement[bool], ...]:
    """The live fills of both arms since the experiment started, not tagged for another experiment."""
    r = raw_reports.c
    return (r.mode == "live", r.strategy_slug.in_([exp["variant_slug"], exp["control_slug"]]),
            r.recorded_at_ms >= exp["started_at_ms"], tagged_for(exp))


def insert_evaluation(store: Store, experiment_id: str, evaluation: Mapping[str, Any]) -> int:
    """Record one look (append-only); returns its id."""
    with store.begin() as conn:
        return conn.execute(experiment_evaluations.insert().values(
            experiment_id=experiment_id, samples=evaluation["samples"], verdict=evaluation["verdict"],
            ci_method=evaluation["ci_method"], ci_95_low=evaluation.get("ci_95_low"),
            ci_95_high=evaluation.get("ci_95_high"), fixed_ci_95_low=evaluation.get("fixed_ci_95_low"),
            fixed_ci_95_high=evaluation.get("fixed_ci_95_high"), edge_delta_bps=evaluation.get("edge_delta_bps"),
            p_value=evaluation.get("p_value"), power=evaluation.get("power"),
            drift_signalled=bool(evaluation.get("drift_signalled")), evaluation_json=json.dumps(evaluation, sort_keys=True))
            .returning(experiment_evaluations.c.id)).scalar_one()


def latest_evaluation(store: Store, experiment_id: str) -> dict[str, Any] | None:
    return store.latest_row(experiment_evaluations, experiment_id)
