"""Tick time of each sensor with 1,000 active experiments and 10 million samples ("a tick reads counts
and watermarks, not sample rows, and returns in well under a second with 1,000 active experiments").

    .venv/bin/python benchmarks/sensor_tick.py [--experiments 1000] [--samples 10000000] [--ticks 20]
                                               [--landing-files 200] [--pg-url URL] [--db-url URL]
                                               [--dagster-storage sqlite|postgres] [--keep]

Builds the experiment store with `benchmarks/bigdata.py` (a throwaway PostgreSQL database, dropped at the end
unless --keep; --db-url reuses one already built), then adds what the sensors read besides the big tables:

* one declaration file per experiment in a temporary experiments folder (new_experiments_sensor stats them);
* ``--landing-files`` report files in a temporary landing folder, each with fills of some experiments' arms,
  ingested with the pipeline's own `ingest_landing` (so `landing_files`, `ingestion_batches` and
  `ingestion_batch_slugs` are real); a few files then grow, so the cold tick has work to request;
* every experiment "fresh" (samples appended a minute ago), so the stall sensor's steady tick changes nothing.

The sensors run exactly as the daemon runs them: the sensor functions themselves, through
``dagster.build_sensor_context(instance=..., resources=..., cursor=...)``, against a ``dagster.instance_for_test()``
instance (SQLite run storage, or --dagster-storage postgres for dagster-postgres) holding one dynamic partition per
experiment. Each returned run request is recorded as a SUCCESS run carrying its run key, as if the daemon had
launched it and it had finished, because the sensors look their previous requests up by run key.

Three phases, each sensor ticking with its own cursor carried from tick to tick:

* cold: the first tick of each sensor (fresh cursor: one experiment_pass_job request covering the 1,000 experiments
  that are due; the stores' first connection and migration check);
* steady (``--ticks`` ticks): nothing changes between ticks; the first of these also prunes the cold tick's
  1,000 finished requests from the cursor and is shown separately as "prune";
* active (``--ticks`` ticks): between ticks one landing file grows by 50 lines and is ingested, and 10
  experiments' sample counts grow by 10% (each tick requests 1 ingestion and 1 pass over the experiments due).

Then one report-bus outage episode: the landing folder disappears (every experiment stalls, 1,000
EXPERIMENT_STALLED) and comes back (1,000 EXPERIMENT_RESUMED), one stall tick each.

Prints, per sensor, the cold tick, the prune tick, and median / p95 / max over the steady and active ticks, in
milliseconds, with the run requests returned.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus  # noqa: E402

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from benchmarks.bigdata import (  # noqa: E402
    STARTED_AT,
    STARTED_AT_MS,
    create_big_database,
    drop_database,
)
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.defs import sensors
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
    forget_stores,
)
from experimenttracker_pipeline.settings import normalise_db_url
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows

SENSORS = [("new_reports_sensor", sensors.new_reports_sensor), ("experiment_pass_sensor", sensors.experiment_pass_sensor),
           ("stall_sensor", sensors.stall_sensor), ("new_experiments_sensor", sensors.new_experiments_sensor)]
STALL_WINDOW_S = 3600.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _slugs(idx: int) -> tuple[str, str]:
    """bigdata.py's variant and control slugs of experiment ``idx``."""
    return f"bench-model-{idx}-v2", f"bench-model-{idx}"


def _fill(report_id: str, slug: str, mode: str, pair_key: str, t_ms: int, edge: float) -> dict[str, Any]:
    return {"report_id": report_id, "report_kind": "OperationsReport", "event_type": "FILL",
            "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug, "mode": mode,
            "pair_key": pair_key, "market_id": f"mkt_{slug}", "size_pusd": 200.0, "notional_pusd": 100.0,
            "edge_pusd": edge, "slippage_bps": 2.5, "recorded_at_ms": t_ms}


RUN_TOKEN = uuid.uuid4().hex[:8]  # report ids unique per invocation, so a reused store (--db-url) accepts them as new


def _lines(experiment_idx: list[int], pairs_each: int, tag: str) -> list[str]:
    out = []
    for idx in experiment_idx:
        variant, control = _slugs(idx)
        for k in range(pairs_each):
            key = f"bench_e{idx:05d}:{RUN_TOKEN}:{tag}:{k}"
            t = STARTED_AT_MS + 86_400_000 + k * 1000
            out.append(json.dumps(_fill(f"{key}:c", control, "live", key, t, 0.10)))
            out.append(json.dumps(_fill(f"{key}:v", variant, "shadow", key, t + 100, 0.09)))
    return out


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


class Ticker:
    """Ticks one sensor the way the daemon does: fresh context, stored cursor, run requests recorded as runs."""

    def __init__(self, name: str, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict[str, Any]):
        self.name, self.sensor, self.instance, self.resources = name, sensor, instance, resources
        self.cursor: str | None = None
        self.job_name = sensor.job_name if sensor.targets else "none"

    def tick(self) -> tuple[float, int]:
        context = dg.build_sensor_context(instance=self.instance, resources=self.resources, cursor=self.cursor)
        started = time.perf_counter()
        result = self.sensor(context)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if isinstance(result, dg.SkipReason):
            requests = []
        elif isinstance(result, dg.RunRequest):
            requests = [result]
        else:
            requests = list(result.run_requests or [])
            if result.cursor is not None:
                self.cursor = result.cursor
        for request in requests:  # the daemon launched it and it succeeded
            tags = {**(request.tags or {}), "dagster/run_key": request.run_key}
            if request.partition_key:
                tags["dagster/partition"] = request.partition_key
            self.instance.add_run(DagsterRun(job_name=self.job_name, run_id=str(uuid.uuid4()),
                                             status=DagsterRunStatus.SUCCESS, tags=tags))
        return elapsed_ms, len(requests)


def _dagster_overrides(kind: str, admin_url: str, stack: ExitStack) -> dict[str, Any] | None:
    if kind == "sqlite":
        return None
    name = f"et_bench_dagster_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_db_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sa.engine.make_url(normalise_db_url(admin_url)).set(database=name)
    stack.callback(drop_database, admin_url, url.render_as_string(hide_password=False))
    return {"storage": {"postgres": {"postgres_db": {
        "hostname": url.host or "127.0.0.1", "port": url.port or 5432, "username": url.username or "postgres",
        **({"password": url.password} if url.password else {}), "db_name": name, "scheme": "postgresql+psycopg2"}}}}


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        if args.db_url:
            db_url = normalise_db_url(args.db_url)
            print(f"reusing experiment store {sa.engine.make_url(db_url).database}", flush=True)
        else:
            t0 = time.perf_counter()
            db_url = create_big_database(args.pg_url, experiments=args.experiments, samples=args.samples)
            if not args.keep:
                stack.callback(drop_database, args.pg_url, db_url)
            else:
                print(f"--keep: the database stays: {db_url}")
            print(f"store built in {time.perf_counter() - t0:.0f} s", flush=True)
        stack.callback(forget_stores)

        store = Store(db_url)
        stack.callback(store.dispose)
        store.migrate()
        experiments = [r for r in experiment_rows(store) if r["status"] in ("active", "stalled")]
        sample_total = store.scalar("SELECT COALESCE(SUM(samples), 0) FROM experiment_pairing_state")
        ids = sorted(r["experiment_id"] for r in experiments)
        idx_of = {e: int(e.rsplit("e", 1)[1]) for e in ids if e.startswith("bench_e")}
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sensor_tick_")))
        landing, declarations = work / "landing", work / "experiments"
        landing.mkdir()
        declarations.mkdir()

        # One declaration file per experiment (stat only, but real files), as the store's rows describe them.
        for exp_id, idx in idx_of.items():
            variant, control = _slugs(idx)
            (declarations / f"{exp_id}.yaml").write_text(
                f"experiment_id: {exp_id}\nprincipal: desk:bench\nvariant_slug: {variant}\ncontrol_slug: {control}\n"
                f"mode: shadow_only\nmin_samples_for_decision: 100\nstarted_at: '{STARTED_AT}'\n")
        # The report archive: each file carries fills of a few experiments; all ingested, then a few files grow.
        indices = sorted(idx_of.values())
        per_file = max(1, -(-len(indices) // args.landing_files))
        files = []
        for f in range(args.landing_files):
            chunk = indices[f * per_file:(f + 1) * per_file] or [rng.choice(indices)]
            path = landing / f"day-{f // 50:02d}" / f"bus-{f:04d}.jsonl"
            path.parent.mkdir(exist_ok=True)
            _append(path, _lines(chunk, 5, f"f{f}"))
            files.append((path, chunk))
        t0 = time.perf_counter()
        ingested = ingest_landing(store, landing)
        print(f"landing: {len(files)} files, {ingested.lines_read:,} lines ingested in {time.perf_counter() - t0:.1f} s; "
              f"declarations: {len(idx_of):,} files", flush=True)
        for path, chunk in rng.sample(files, min(10, len(files))):
            _append(path, _lines(chunk[:1], 2, "grown"))
        now_ms = int(time.time() * 1000)
        with store.begin() as conn:  # every experiment received samples a minute ago: active, not silent
            conn.execute(sa.text("UPDATE experiment_pairing_state SET last_appended_at_ms = :t"), {"t": now_ms - 60_000})

        instance = stack.enter_context(dg.instance_for_test(overrides=_dagster_overrides(args.dagster_storage, args.pg_url, stack)))
        instance.add_dynamic_partitions("experiments", ids)
        resources = {"store": ExperimentStoreResource(db_url=db_url),
                     "settings": PipelineSettingsResource(landing_dir=str(landing), experiments_dir=str(declarations),
                                                          stall_window_seconds=STALL_WINDOW_S),
                     "report_bus": ReportBusResource()}  # no bus: the landing folder is the report source
        tickers = {name: Ticker(name, sensor, instance, resources) for name, sensor in SENSORS}
        print(f"{len(ids):,} active experiments, {sample_total:,} samples, {len(files)} landing files, "
              f"{len(instance.get_dynamic_partitions('experiments')):,} dynamic partitions, "
              f"Dagster storage: {args.dagster_storage}; {args.ticks} ticks per phase\n", flush=True)

        results: dict[str, dict[str, Any]] = {name: {"steady": [], "active": [], "active_requests": 0} for name in tickers}
        # cold
        for name, ticker in tickers.items():
            results[name]["cold"] = ticker.tick()
        ingest_landing(store, landing)  # the cold tick's ingestion run
        # steady: nothing changes
        for i in range(args.ticks):
            for name, ticker in tickers.items():
                ms, n = ticker.tick()
                if i == 0:
                    results[name]["prune"] = (ms, n)
                else:
                    results[name]["steady"].append(ms)
                    results[name].setdefault("steady_requests", 0)
                    results[name]["steady_requests"] += n
        # active: a file grows and is ingested, 10 experiments' sample counts grow by 10%, between ticks
        for i in range(args.ticks):
            path, chunk = rng.choice(files)
            _append(path, _lines(rng.sample(indices, 5), 5, f"a{i}"))
            ms, n = tickers["new_reports_sensor"].tick()
            results["new_reports_sensor"]["active"].append(ms)
            results["new_reports_sensor"]["active_requests"] += n
            ingest_landing(store, landing)
            bumped = rng.sample(ids, 10)
            with store.begin() as conn:
                conn.execute(sa.text("UPDATE experiment_pairing_state SET samples = CAST(samples * 1.1 AS BIGINT) + 1, "
                                     "last_appended_at_ms = :t WHERE experiment_id = ANY(:ids)"),
                             {"t": int(time.time() * 1000), "ids": bumped})
            for name in ("experiment_pass_sensor", "stall_sensor", "new_experiments_sensor"):
                ms, n = tickers[name].tick()
                results[name]["active"].append(ms)
                results[name]["active_requests"] += n
        # one report-bus outage episode: every experiment stalls, then resumes
        hidden = work / "landing.offline"
        stalled_before = len(store.reports(event_type="EXPERIMENT_STALLED"))
        resumed_before = len(store.reports(event_type="EXPERIMENT_RESUMED"))
        landing.rename(hidden)
        outage_ms, _ = tickers["stall_sensor"].tick()
        stalled = len(store.reports(event_type="EXPERIMENT_STALLED")) - stalled_before
        hidden.rename(landing)
        recovery_ms, _ = tickers["stall_sensor"].tick()
        resumed = len(store.reports(event_type="EXPERIMENT_RESUMED")) - resumed_before

        header = (f"{'sensor':<24} {'cold ms':>9} {'req':>5} {'prune ms':>9} {'steady med':>10} {'p95':>8} {'max':>8} "
                  f"{'active med':>10} {'p95':>8} {'max':>8} {'req/tick':>8}")
        print(header)
        print("-" * len(header))
        for name, r in results.items():
            cold_ms, cold_n = r["cold"]
            prune_ms, _ = r["prune"]
            s, a = r["steady"] or [float("nan")], r["active"] or [float("nan")]
            print(f"{name:<24} {cold_ms:>9.1f} {cold_n:>5} {prune_ms:>9.1f} {statistics.median(s):>10.1f} "
                  f"{_percentile(s, 0.95):>8.1f} {max(s):>8.1f} {statistics.median(a):>10.1f} {_percentile(a, 0.95):>8.1f} "
                  f"{max(a):>8.1f} {r['active_requests'] / max(1, len(r['active'])):>8.1f}")
        print(f"\nreport-bus outage: stall tick {outage_ms:.0f} ms ({stalled:,} EXPERIMENT_STALLED), "
              f"recovery tick {recovery_ms:.0f} ms ({resumed:,} EXPERIMENT_RESUMED)")
        steady_worst = max(max(r["steady"] or [0]) for r in results.values())
        active_worst = max(max(r["active"] or [0]) for r in results.values())
        print(f"worst steady tick {steady_worst:.1f} ms, worst active tick {active_worst:.1f} ms "
              f"({'under' if max(steady_worst, active_worst) < 1000 else 'NOT under'} one second)")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=1000, help="active experiments (default 1000)")
    ap.add_argument("--samples", type=int, default=10_000_000, help="samples over all experiments (default 10M)")
    ap.add_argument("--ticks", type=int, default=20, help="ticks per phase after the cold one (default 20)")
    ap.add_argument("--landing-files", type=int, default=200, help="report files in the landing folder (default 200)")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL admin URL the throwaway databases are created from")
    ap.add_argument("--db-url", default=None, help="reuse an experiment store built earlier (e.g. with --keep)")
    ap.add_argument("--dagster-storage", choices=["sqlite", "postgres"], default="sqlite",
                    help="the Dagster instance's storage: instance_for_test's SQLite (default) or dagster-postgres")
    ap.add_argument("--keep", action="store_true", help="keep the experiment store database")
    ap.add_argument("--seed", type=int, default=20260505)
    args = ap.parse_args(argv)
    if args.ticks < 2:
        ap.error("--ticks must be at least 2")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
