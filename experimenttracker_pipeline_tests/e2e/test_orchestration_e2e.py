"""The orchestration as a user meets it, with real processes: `experimenttracker run` stopped by SIGINT/SIGTERM in
the middle of a pass, two `run` processes started together on one store and a fresh DAGSTER_HOME, and the
experiment pass scaled out on two Celery workers (Redis broker) with the same results as in-process.

Every process a test starts runs in its own session and is killed in `finally`; the PostgreSQL databases and the
Redis database the tests use are their own and are dropped or flushed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.demo import STARTED_AT, DemoExperiment, shadow_reports
from experimenttracker_pipeline_tests.support.postgres import PG_ADMIN_URL

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# ---- data and processes ---------------------------------------------------------------------------------------
def _declaration(exp: DemoExperiment) -> str:
    return (f"experiment_id: {exp.experiment_id}\nprincipal: desk:test\nvariant_slug: {exp.variant_slug}\n"
            f"control_slug: {exp.control_slug}\nmode: shadow_only\ntraffic_split_pct: 10\n"
            f"min_samples_for_decision: {exp.min_samples}\nrequire_human_signoff: true\nstarted_at: '{STARTED_AT}'\n")


def write_experiments(root: Path, count: int, pairs: int, *, seed: int = 11, extra_lines: list[str] = ()) -> dict:
    """``count`` shadow experiments (winners, losers, A/A) with ``pairs`` matched pairs each, declared in
    root/experiments, their fills in root/landing/bus.jsonl (plus ``extra_lines``)."""
    rng = np.random.default_rng(seed)
    experiments, landing = root / "experiments", root / "landing"
    experiments.mkdir(parents=True, exist_ok=True)
    landing.mkdir(parents=True, exist_ok=True)
    lines = 0
    with (landing / "bus.jsonl").open("w", encoding="utf-8") as out:
        for i in range(count):
            exp = DemoExperiment(f"exp_{i:03d}", f"t-v-{i:03d}", f"t-c-{i:03d}", (0.0, 4.0, -4.0)[i % 3], pairs,
                                 min_samples=20)
            (experiments / f"{exp.experiment_id}.yaml").write_text(_declaration(exp))
            for report in shadow_reports(exp, rng, sd_bps=6.0):
                out.write(json.dumps(report) + "\n")
                lines += 1
        for line in extra_lines:
            out.write(line + "\n")
            lines += 1
    return {"experiments": experiments, "landing": landing, "lines": lines}


def cli_env(root: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_"))}
    env.update({"EXPERIMENTTRACKER_DATA_DIR": str(root / "data"), "EXPERIMENTTRACKER_DB_URL": db_url,
                "EXPERIMENTTRACKER_LANDING_DIR": str(root / "landing"),
                "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(root / "experiments"),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1", **extra})
    return env


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def wait_for_progress(measure, done, *, what: str, stall_s: float = 180, cap_s: float = 1800, poll_s: float = 0.2,
                      alive=lambda: True):
    """Poll ``measure()`` until ``done(value)``; fail when the value has not changed for ``stall_s`` seconds (or
    after the generous ``cap_s``), never on a short fixed deadline."""
    start = last_change = time.monotonic()
    value = last = measure()
    while not done(value):
        if not alive():
            pytest.fail(f"{what}: the process exited first (last value {value!r})")
        now = time.monotonic()
        if value != last:
            last, last_change = value, now
        if now - last_change > stall_s or now - start > cap_s:
            pytest.fail(f"{what}: no progress for {now - last_change:.0f} s (value {value!r})")
        time.sleep(poll_s)
        value = measure()
    return value


def counts(engine: sa.Engine) -> dict:
    queries = {
        "evaluated": "SELECT COUNT(DISTINCT experiment_id) FROM experiment_verdicts",
        "verdicts": "SELECT COUNT(*) FROM experiment_verdicts",
        "evaluations": "SELECT COUNT(*) FROM experiment_evaluations",
        "causal": "SELECT COUNT(*) FROM causal_estimates",
        "samples": "SELECT COUNT(*) FROM experiment_samples",
        "lines_read": "SELECT COALESCE(SUM(lines_read), 0) FROM ingestion_batches",
        "raw_reports": "SELECT COUNT(*) FROM raw_reports",
        "quarantined": "SELECT COUNT(*) FROM quarantined_reports",
    }
    try:
        with engine.connect() as conn:
            return {k: conn.exec_driver_sql(q).scalar() for k, q in queries.items()}
    except sa.exc.ProgrammingError:  # not migrated yet
        return {}


def runs_of(home: Path) -> list[tuple[str, str]]:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return [(r.job_name, r.status.value) for r in instance.get_runs()]
    finally:
        instance.dispose()


# ---- SIGINT / SIGTERM -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_between_experiments_on_a_signal_and_a_rerun_continues(tmp_path, pg_url, signum):
    count = 30
    write_experiments(tmp_path, count, pairs=30)
    env = cli_env(tmp_path, pg_url, DAGSTER_HOME=str(tmp_path / "dagster_home"))
    engine = sa.create_engine(pg_url)
    proc = None
    try:
        proc = start_cli(env, "run")
        # Mid-pass: some experiments evaluated, not all.
        evaluated = wait_for_progress(lambda: counts(engine).get("evaluated", 0), lambda n: n >= 1,
                                      what="the pass evaluated no experiment", poll_s=0.05,
                                      alive=lambda: proc.poll() is None)
        assert evaluated < count, "the pass finished before the signal could be sent; make it longer"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 128 + signum, (proc.returncode, out, err)
        name = signal.Signals(signum).name
        assert f"stopped on {name}" in out and "not finished:" in out, out
        assert "Traceback" not in err, err
        statuses = dict(runs_of(tmp_path / "dagster_home"))
        assert statuses == {"ingest_job": "SUCCESS", "experiment_pass_job": "CANCELED"}, statuses
        after = counts(engine)
        finished = int(out.split("stopped on")[1].split(" of ")[0].split(":")[-1])
        assert 0 < after["evaluated"] == finished < count, (after, out)
        # Nothing half-written: every experiment evaluated has all of its evaluation, causal estimate and verdict.
        assert after["verdicts"] == after["evaluations"] == after["causal"] == after["evaluated"], after

        rerun = subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", "run"], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=1800)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"experiment_pass_job[{count - finished} experiments]: success" in rerun.stdout, rerun.stdout
        final = counts(engine)
        # Each experiment evaluated exactly once in all, every line read once.
        assert final["evaluated"] == final["verdicts"] == final["evaluations"] == count, final
        assert final["samples"] == count * 30 and final["lines_read"] == count * 60
    finally:
        stop_group(proc)
        engine.dispose()


# ---- two processes, one store -----------------------------------------------------------------------------------
def test_two_runs_started_together_read_every_line_once(tmp_path, pg_url):
    """Two `run`s on one PostgreSQL store and one fresh DAGSTER_HOME, started together."""
    bad = ["{not json", json.dumps({"report_id": "r-bad", "event_type": "FILL"})]
    data = write_experiments(tmp_path, 20, pairs=20, extra_lines=bad)
    env = cli_env(tmp_path, pg_url)  # both use the data folder's (fresh) DAGSTER_HOME
    engine = sa.create_engine(pg_url)
    procs = []
    try:
        procs = [start_cli(env, "run"), start_cli(env, "run")]
        results = [p.communicate(timeout=1800) for p in procs]
        for proc, (out, err) in zip(procs, results):
            assert proc.returncode == 0, (out, err)
            assert "Traceback" not in err, err
        after = counts(engine)
        assert after["lines_read"] == data["lines"] == 20 * 40 + len(bad), after  # each line read once
        assert after["quarantined"] == len(bad) and after["raw_reports"] == 20 * 40, after
        assert after["samples"] == 20 * 20, after
        # Every experiment evaluated once: the second process found each one done (or waited for it).
        assert after["evaluated"] == after["evaluations"] == after["verdicts"] == 20, after
        statuses = runs_of(tmp_path / "data" / "dagster_home")
        assert all(status == "SUCCESS" for _, status in statuses), statuses
    finally:
        for proc in procs:
            stop_group(proc)
        engine.dispose()


# ---- Celery ----------------------------------------------------------------------------------------------------
def _scratch_redis_db() -> int:
    """An empty Redis database number (the server's 16), flushed by the test at the end."""
    import redis

    for number in np.random.default_rng().permutation(range(4, 16)):
        client = redis.Redis(host="127.0.0.1", port=6379, db=int(number))
        try:
            if client.dbsize() == 0 and client.set("experimenttracker-test-claim", "1", nx=True):
                return int(number)
        finally:
            client.close()
    pytest.fail("no empty Redis database on 127.0.0.1:6379")


def _flush_redis(number: int) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=number)
    client.flushdb()
    client.close()


LAUNCH = """
import json, sys
import dagster as dg
run_config = json.loads(sys.argv[1])
job = dg.build_reconstructable_job("experimenttracker_pipeline.definitions", "experiment_pass_job_from_env")
with dg.execute_job(job, instance=dg.DagsterInstance.get(), run_config=run_config, raise_on_error=False) as result:
    print(json.dumps({"run_id": result.run_id, "success": result.success}))
"""


def test_celery_workers_evaluate_the_pass_with_the_in_process_results(tmp_path):
    from experimenttracker_pipeline.orchestration.instance import write_celery_yaml, write_instance_yaml
    from experimenttracker_pipeline.settings import Settings
    from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
    from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
    from experimenttracker_pipeline.store import Store

    count, pairs = 60, 30
    write_experiments(tmp_path, count, pairs=pairs)
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = {k: f"et_celery_{k}_{uuid.uuid4().hex[:8]}" for k in ("inproc", "celery", "dagster")}
    url = {k: sa.engine.make_url(PG_ADMIN_URL).set(database=n).render_as_string(hide_password=False) for k, n in names.items()}
    redis_db = _scratch_redis_db()
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    home = tmp_path / "dagster_home"
    workers: list[subprocess.Popen] = []
    launcher = None
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        # Two stores with the same declarations and fills, not yet paired: the passes do all the work.
        for key in ("inproc", "celery"):
            store = Store(url[key])
            store.migrate()
            sync_declarations(store, tmp_path / "experiments")
            ingest_landing(store, tmp_path / "landing")
            store.dispose()
        write_instance_yaml(home, url["dagster"])
        env = cli_env(tmp_path, url["celery"], DAGSTER_HOME=str(home), EXPERIMENTTRACKER_DAGSTER_PG_URL=url["dagster"],
                      EXPERIMENTTRACKER_EXECUTOR="celery",
                      EXPERIMENTTRACKER_CELERY_BROKER=broker, EXPERIMENTTRACKER_CELERY_BACKEND=broker,
                      EXPERIMENTTRACKER_PASS_STEPS="6")
        celery_yaml = write_celery_yaml(home, Settings.from_env(env))

        # The in-process reference: the CLI's run on the first store (same Dagster instance).
        reference = subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", "run"],
                                   env={**env, "EXPERIMENTTRACKER_DB_URL": url["inproc"], "EXPERIMENTTRACKER_EXECUTOR": "in_process"},
                                   cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert reference.returncode == 0, reference.stdout + reference.stderr
        assert f"experiment_pass_job[{count} experiments]: success" in reference.stdout

        for name in ("w1", "w2"):
            log = (tmp_path / f"worker-{name}.log").open("wb")
            workers.append(subprocess.Popen(
                [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(celery_yaml),
                 "-n", name, "--", "--concurrency=1"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        run_config = {"experiment_ids": [f"exp_{i:03d}" for i in range(count)], "evaluation": "growth"}
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(run_config)], env=env, cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        engine = sa.create_engine(url["celery"])
        try:
            wait_for_progress(lambda: counts(engine).get("evaluated", 0), lambda n: n == count,
                              what="the Celery workers did not evaluate every experiment", stall_s=300,
                              alive=lambda: launcher.poll() is None or counts(engine).get("evaluated", 0) == count)
        finally:
            engine.dispose()
        out, err = launcher.communicate(timeout=600)
        launched = json.loads(out.strip().splitlines()[-1])
        assert launched["success"], err

        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(home))
        try:
            events = instance.all_logs(launched["run_id"])
            hosts = {e.dagster_event.engine_event_data.metadata["Celery worker"].value for e in events
                     if e.is_dagster_event and e.dagster_event.is_engine_event and e.dagster_event.engine_event_data
                     and "Celery worker" in e.dagster_event.engine_event_data.metadata}
            materialized = {e.dagster_event.partition for e in events
                            if e.is_dagster_event and e.dagster_event.is_step_materialization
                            and e.dagster_event.asset_key == dg.AssetKey("verdicts")}
        finally:
            instance.dispose()
        assert len(hosts) == 2, hosts  # both workers took steps
        assert len(materialized) == count  # one verdicts partition materialization per experiment

        def results(key: str) -> dict:
            store = Store(url[key])
            try:
                verdicts = {r["experiment_id"]: (r["samples"], r["verdict"], r["ci_95_low"], r["ci_95_high"], r["edge_delta_bps"])
                            for r in store.rows("SELECT experiment_id, samples, verdict, ci_95_low, ci_95_high, edge_delta_bps "
                                                "FROM experiment_verdicts")}
                chains = store.rows("SELECT experiment_id, MAX(sample_n) AS n, MAX(sample_hash) AS h FROM experiment_samples "
                                    "GROUP BY experiment_id ORDER BY experiment_id")
                return {"verdicts": verdicts, "chains": chains, "signals": store.scalar("SELECT COUNT(*) FROM strategy_registry_signals")}
            finally:
                store.dispose()

        in_process, celery = results("inproc"), results("celery")
        assert len(celery["verdicts"]) == count
        assert celery == in_process
    finally:
        if launcher is not None:
            stop_group(launcher)
        for worker in workers:
            stop_group(worker)
        _flush_redis(redis_db)
        with admin.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
