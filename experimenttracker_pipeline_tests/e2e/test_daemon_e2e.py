"""End to end under the real `dagster-daemon`: Dagster's runs, events and sensor cursors in
PostgreSQL (a throwaway database), the experiment store in another throwaway PostgreSQL database, a real HTTP
StrategyRegistry. Nothing is launched by hand: a report archive and then a declaration (a losing shadow variant)
dropped into the watched folders must become samples, a verdict and a delivered drift signal through
sensor-launched runs alone. Then the daemon is stopped and started again (cold start, spec section 20) and must
neither launch a run nor emit anything twice.

The archive is ingested before the declaration arrives on purpose: fills ingested before their experiment is
known (history brought in first, or live when reports_job commits before the concurrently launched
declarations_job) must still be paired once it is.

Every process started here (the daemon, its code server and the run workers it spawns) is stopped in `finally`,
also when the test fails; the daemon's output is kept in tmp_path and its tail printed on failure.
"""

from __future__ import annotations

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

from experimenttracker_pipeline.demo import DemoExperiment, shadow_reports
from experimenttracker_pipeline.orchestration.instance import write_instance_yaml
from experimenttracker_pipeline_tests.builders import declaration, write_jsonl
from experimenttracker_pipeline_tests.support.postgres import PG_ADMIN_URL
from experimenttracker_pipeline_tests.support.registry_server import RegistryServer
from experimenttracker_pipeline_tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = DemoExperiment("exp_e2e_loser", "e2e-model-v2", "e2e-model", true_delta_bps=-12.0, pairs=60, min_samples=30)
# Waits fail when nothing advanced (store rows, runs and their statuses, Dagster events, sensor evaluations) for
# IDLE_TIMEOUT_S; a cold daemon start loads the code location before anything is visible, which took over a
# minute on a loaded 2-core machine. OVERALL_CAP_S only stops a pipeline that keeps moving without getting there.
IDLE_TIMEOUT_S = 240
OVERALL_CAP_S = 1200
RESTART_TICKS_S = 20  # at least how long the restarted daemon ticks before nothing-twice is checked
STALL_WINDOW_S = 2
WATCHED_SENSORS = ("new_experiments_sensor", "new_reports_sensor", "experiment_pass_sensor")


# ---- processes -------------------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _pids_with_env(marker: str) -> list[int]:
    """Our processes whose environment carries ``marker`` (this test's unique DAGSTER_HOME): catches a run worker
    or code server that outlived its parent and was re-parented."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Daemon:
    """`dagster-daemon run -w workspace.yaml` in its own process group, output appended to ``log``."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("dagster-daemon")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dagster._daemon"]
        with self.log.open("ab") as out:
            out.write(f"\n===== starting dagster-daemon at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen([*cmd, "run", "-w", str(REPO / "workspace.yaml")], cwd=REPO, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the daemon (it shuts its threads and code server down), then SIGKILL whatever is left of it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        family = _descendants(proc.pid)
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _kill(family + _descendants(proc.pid))
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


# ---- databases ---------------------------------------------------------------------------------------------------
def _create_database(admin: sa.Engine, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(name: str) -> str:
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _snapshot(engine: sa.Engine) -> dict:
    """What the pipeline has produced so far (an empty store before the first run migrated it)."""
    q = {
        "samples": "SELECT COUNT(*) FROM experiment_samples",
        "verdicts": "SELECT COUNT(*) FROM experiment_verdicts",
        "signals": "SELECT COUNT(*) FROM strategy_registry_signals",
        "signals_delivered": "SELECT COUNT(*) FROM strategy_registry_signals WHERE delivery_status = 'delivered'",
        "evaluations": "SELECT COUNT(*) FROM experiment_evaluations",
        "raw_reports": "SELECT COUNT(*) FROM raw_reports",
        "experiments": "SELECT COUNT(*) FROM experiments",
        "stalls": "SELECT COUNT(*) FROM experiment_stalls",
        "stalls_resolved": "SELECT COUNT(*) FROM experiment_stalls WHERE resolved_at_ms IS NOT NULL",
    }
    out: dict = {}
    try:
        with engine.connect() as conn:
            for key, sql in q.items():
                out[key] = conn.exec_driver_sql(sql).scalar()
            out["reports"] = dict(conn.exec_driver_sql(
                "SELECT event_type, COUNT(*) FROM operations_reports GROUP BY event_type ORDER BY 1").all())
            out["latest_verdict"] = conn.exec_driver_sql(
                "SELECT verdict FROM experiment_verdicts ORDER BY id DESC LIMIT 1").scalar()
    except sa.exc.ProgrammingError:  # tables not migrated yet
        return {}
    return out


def _without_stalls(snap: dict) -> dict:
    out = {k: v for k, v in snap.items() if not k.startswith("stalls")}
    out["reports"] = {k: v for k, v in snap["reports"].items() if k not in ("EXPERIMENT_STALLED", "EXPERIMENT_RESUMED")}
    return out


def _runs(instance) -> list[tuple[str, str, str | None]]:
    return [(r.job_name, r.status.value, r.tags.get("dagster/run_key")) for r in instance.get_runs()]


def _in_flight(instance) -> list:
    return [r for r in _runs(instance) if r[1] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")]


def _progress(store_engine: sa.Engine, instance) -> tuple:
    """Everything the pipeline visibly does: store row counts, runs with their statuses, the newest Dagster event."""
    return (_snapshot(store_engine), _runs(instance), instance.event_log_storage.get_maximum_record_id())


def _wait(condition, what: str, daemon: "Daemon", store_engine: sa.Engine, instance, progress=None) -> None:
    def done() -> bool:
        assert daemon.alive(), "dagster-daemon exited"
        return condition()

    waited = wait_until(done, progress or (lambda: _progress(store_engine, instance)), idle_timeout=IDLE_TIMEOUT_S,
                        overall_cap=OVERALL_CAP_S, poll_seconds=2, what=what,
                        describe=lambda: f"store: {_snapshot(store_engine)}; runs: {_runs(instance)}")
    print(f"{what}: {waited:.0f} s")


def _tail(path: Path, lines: int = 120) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no daemon log)"


# ---- the test ----------------------------------------------------------------------------------------------------
def test_daemon_runs_the_pipeline_from_dropped_files_and_restarts_without_duplicates(tmp_path: Path):
    import dagster as dg

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    databases: list[str] = []
    server = RegistryServer()
    home = tmp_path / "dagster_home"
    log = tmp_path / "daemon.log"
    daemon: Daemon | None = None
    instance = None
    store_engine = None
    started = time.monotonic()
    try:
        try:
            dagster_db = _create_database(admin, "et_e2e_dagster")
            databases.append(dagster_db)
            store_db = _create_database(admin, "et_e2e_store")
            databases.append(store_db)
        except sa.exc.OperationalError as exc:
            pytest.fail(f"PostgreSQL is required and is not reachable at {PG_ADMIN_URL}: {exc}")
        write_instance_yaml(home, _url(dagster_db))
        data, landing, experiments = tmp_path / "data", tmp_path / "landing", tmp_path / "experiments"
        for folder in (data, landing, experiments):
            folder.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_"))}
        env.update({
            "DAGSTER_HOME": str(home),
            "EXPERIMENTTRACKER_DAGSTER_PG_URL": _url(dagster_db),
            "EXPERIMENTTRACKER_DB_URL": _url(store_db),
            "EXPERIMENTTRACKER_DATA_DIR": str(data),
            "EXPERIMENTTRACKER_LANDING_DIR": str(landing),
            "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(experiments),
            "EXPERIMENTTRACKER_SENSOR_INTERVAL_SECONDS": "1",
            "EXPERIMENTTRACKER_STALL_WINDOW_SECONDS": str(STALL_WINDOW_S),
            "EXPERIMENTTRACKER_REGISTRY_URL": server.url,
            "PYTHONUNBUFFERED": "1",
        })
        instance = dg.DagsterInstance.from_config(str(home))
        store_engine = sa.create_engine(_url(store_db))

        daemon = Daemon(env, log)
        daemon.start()
        # The drop, in the order an analyst bringing history meets it: the report bus archive is there first and is
        # ingested before anyone declares the experiment (a losing shadow variant, small min_samples). The same
        # happens live whenever reports_job commits before the concurrently launched declarations_job; the fills
        # ingested then must still be paired once the experiment is known.
        reports = shadow_reports(EXPERIMENT, np.random.default_rng(7), sd_bps=6.0)
        write_jsonl(landing / "2026-05-05" / "bus-0001.jsonl", reports[: len(reports) // 2])
        write_jsonl(landing / "2026-05-05" / "bus-0002.jsonl", reports[len(reports) // 2:])
        _wait(lambda: _snapshot(store_engine).get("raw_reports") == len(reports) and not _in_flight(instance),
              "the archive to be ingested by a sensor-launched run", daemon, store_engine, instance)
        (experiments / f"{EXPERIMENT.experiment_id}.yaml").write_text(declaration(
            EXPERIMENT.experiment_id, variant_slug=EXPERIMENT.variant_slug, control_slug=EXPERIMENT.control_slug,
            mode="shadow_only", min_samples_for_decision=EXPERIMENT.min_samples, started_at="2026-05-05T00:00:00Z"))

        def phase_one_done() -> bool:
            snap = _snapshot(store_engine)
            return (snap.get("samples") == EXPERIMENT.pairs and bool(snap.get("verdicts"))
                    and snap.get("signals_delivered") == 1 and bool(server.received) and not _in_flight(instance))

        _wait(phase_one_done, "samples, a verdict and a delivered drift signal", daemon, store_engine, instance)
        snap = _snapshot(store_engine)
        phase_one_s = time.monotonic() - started
        print(f"phase one done after {phase_one_s:.0f} s: {snap}\nruns: {_runs(instance)}")

        assert snap["latest_verdict"] == "control_wins"
        assert snap["reports"].get("EXPERIMENT_STARTED") == 1
        assert snap["reports"].get("EXPERIMENT_RESULT") == 1
        assert snap["reports"].get("EXPERIMENT_DRIFT_SIGNAL") == 1
        assert snap["signals"] == 1 and len(server.received) == 1
        key, body = server.received[0]
        assert body["experiment_id"] == EXPERIMENT.experiment_id and body["signal_type"] == "DRIFT_SIGNAL"
        assert key == body["idempotency_key"]
        runs = _runs(instance)
        assert all(status == "SUCCESS" for _, status, _ in runs), runs
        assert {job for job, _, _ in runs} >= {"declarations_job", "reports_job", "experiment_pass_job"}
        assert all(run_key for _, _, run_key in runs), "every run was launched by a sensor (has a run key)"
        assert len(instance.get_dynamic_partitions("experiments")) == 1

        # Cold start: stop the daemon, start it again, let it tick; nothing may be requested or emitted twice.
        before, runs_before, received_before = _snapshot(store_engine), _runs(instance), list(server.received)
        daemon.stop()
        daemon.start()
        # Let it tick for a while: at least RESTART_TICKS_S and three evaluations of every 1-second sensor.
        restart_at = time.monotonic()

        def evaluations() -> tuple[int, ...]:
            restarted = log.read_text(errors="replace").split("===== starting dagster-daemon")[-1]
            return tuple(restarted.count(f"Checking for new runs for sensor: {name}") for name in WATCHED_SENSORS)

        def ticked() -> bool:
            return time.monotonic() - restart_at >= RESTART_TICKS_S and min(evaluations()) >= 3

        _wait(ticked, "the restarted daemon to evaluate each sensor three times", daemon, store_engine, instance,
              progress=lambda: (evaluations(), _progress(store_engine, instance)))
        after, runs_after = _snapshot(store_engine), _runs(instance)
        # The stall sensor (60 s ticks, 2 s window) may legitimately open or close an episode meanwhile; it must
        # report each episode exactly once. Everything else must be exactly as before the restart.
        assert _without_stalls(after) == _without_stalls(before)
        for snap_ in (before, after):
            assert snap_["reports"].get("EXPERIMENT_STALLED", 0) == snap_["stalls"], snap_
            assert snap_["reports"].get("EXPERIMENT_RESUMED", 0) == snap_["stalls_resolved"], snap_
        assert runs_after == runs_before, "the restarted daemon launched runs again"
        assert server.received == received_before and len(server.received) == 1
        print(f"total {time.monotonic() - started:.0f} s; after restart: {after}")
    except BaseException:
        print(f"----- dagster-daemon output (tail of {log}) -----\n{_tail(log)}", file=sys.stderr)
        raise
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            _kill(_pids_with_env(f"DAGSTER_HOME={home}"))
            server.close()
            if instance is not None:
                instance.dispose()
            if store_engine is not None:
                store_engine.dispose()
            for name in databases:
                _drop_database(admin, name)
            admin.dispose()


# ---- many experiments at once ------------------------------------------------------------------------------------
MANY = 200
BURST_RUN_BOUND = 4  # runs the daemon may start for the burst: one ingestion, one or two passes, one spare


def _wait_for_progress(measure, done, what: str, daemon: "Daemon", stall_s: float = 240, cap_s: float = 1800):
    """Poll until ``done(measure())``; fail when the measured value has not changed for ``stall_s`` seconds."""
    start = last_change = time.monotonic()
    last = value = measure()
    while not done(value):
        assert daemon.alive(), "dagster-daemon exited"
        now = time.monotonic()
        if value != last:
            last, last_change = value, now
        if now - last_change > stall_s or now - start > cap_s:
            pytest.fail(f"{what}: no progress for {now - last_change:.0f} s ({value!r})")
        time.sleep(2)
        value = measure()
    return value


def test_daemon_evaluates_200_experiments_crossing_at_once_in_a_bounded_number_of_runs(tmp_path: Path):
    """200 experiments declared and paired below min_samples_for_decision; then one report file brings every one of
    them over the threshold at once. Every verdict must land with at most BURST_RUN_BOUND runs (each experiment its
    own partition materialization), and a restarted daemon must start nothing and emit nothing again."""
    import dagster as dg

    from experimenttracker_pipeline_tests.e2e.test_orchestration_e2e import _declaration

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    databases: list[str] = []
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    daemon = instance = store_engine = None
    try:
        dagster_db, store_db = _create_database(admin, "et_e2e_dagster"), None
        databases.append(dagster_db)
        store_db = _create_database(admin, "et_e2e_store")
        databases.append(store_db)
        write_instance_yaml(home, _url(dagster_db))
        landing, experiments = tmp_path / "landing", tmp_path / "experiments"
        landing.mkdir()
        experiments.mkdir()
        rng = np.random.default_rng(5)
        before, burst = [], []
        for i in range(MANY):
            exp = DemoExperiment(f"exp_many_{i:03d}", f"many-v-{i:03d}", f"many-c-{i:03d}", (0.0, 5.0, -5.0)[i % 3], 30,
                                 min_samples=25)
            (experiments / f"{exp.experiment_id}.yaml").write_text(_declaration(exp))
            reports = shadow_reports(exp, rng, sd_bps=6.0)
            before += reports[:40]  # 20 pairs: below min_samples_for_decision
            burst += reports[40:]  # 10 more: 30 pairs, over it
        write_jsonl(landing / "bus-0001.jsonl", before)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_"))}
        env.update({"DAGSTER_HOME": str(home), "EXPERIMENTTRACKER_DAGSTER_PG_URL": _url(dagster_db),
                    "EXPERIMENTTRACKER_DB_URL": _url(store_db), "EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data"),
                    "EXPERIMENTTRACKER_LANDING_DIR": str(landing), "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(experiments),
                    "EXPERIMENTTRACKER_SENSOR_INTERVAL_SECONDS": "2", "PYTHONUNBUFFERED": "1"})
        instance = dg.DagsterInstance.from_config(str(home))
        store_engine = sa.create_engine(_url(store_db))
        daemon = Daemon(env, log)
        daemon.start()

        def paired():
            snap = _snapshot(store_engine)
            return (snap.get("samples", 0), len(_runs(instance)), len(_in_flight(instance)))

        _wait_for_progress(paired, lambda v: v[0] == MANY * 20 and v[2] == 0, "the first 20 pairs were not all paired",
                           daemon)
        assert _snapshot(store_engine)["verdicts"] == 0  # all below the threshold: nothing evaluated yet
        runs_before = _runs(instance)

        (landing / "bus-0002.part").write_text("")
        write_jsonl(landing / "bus-0002.part", burst)
        (landing / "bus-0002.part").rename(landing / "bus-0002.jsonl")  # the burst lands at once

        def evaluated():
            with store_engine.connect() as conn:
                n = conn.exec_driver_sql("SELECT COUNT(DISTINCT experiment_id) FROM experiment_verdicts").scalar()
            return (n, len(_runs(instance)), len(_in_flight(instance)))

        _wait_for_progress(evaluated, lambda v: v[0] == MANY and v[2] == 0, "not every verdict landed", daemon)
        burst_runs = _runs(instance)[: len(_runs(instance)) - len(runs_before)]
        print(f"burst: {len(burst_runs)} runs for {MANY} experiments: {burst_runs}")
        assert 1 <= len(burst_runs) <= BURST_RUN_BOUND, burst_runs
        assert all(status == "SUCCESS" for _, status, _ in burst_runs), burst_runs
        assert {job for job, _, _ in burst_runs} <= {"reports_job", "experiment_pass_job"}
        snap = _snapshot(store_engine)
        assert snap["samples"] == MANY * 30 and snap["verdicts"] == MANY and snap["evaluations"] == MANY, snap
        # Each experiment got its own partition materialization of verdicts.
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("verdicts")), limit=MANY * 2)
        assert len({r.partition_key for r in records.records}) == MANY

        before_restart, runs_before_restart = _snapshot(store_engine), _runs(instance)
        daemon.stop()
        daemon.start()
        restart_at = time.monotonic()

        def ticked() -> bool:
            restarted = log.read_text(errors="replace").split("===== starting dagster-daemon")[-1]
            return time.monotonic() - restart_at >= RESTART_TICKS_S and all(
                restarted.count(f"Checking for new runs for sensor: {name}") >= 3 for name in WATCHED_SENSORS)

        _wait(ticked, "the restarted daemon to evaluate its sensors", daemon, store_engine,
              instance)
        assert _without_stalls(_snapshot(store_engine)) == _without_stalls(before_restart)
        assert _runs(instance) == runs_before_restart, "the restarted daemon launched runs again"
    except BaseException:
        print(f"----- dagster-daemon output (tail of {log}) -----\n{_tail(log)}", file=sys.stderr)
        raise
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            _kill(_pids_with_env(f"DAGSTER_HOME={home}"))
            if instance is not None:
                instance.dispose()
            if store_engine is not None:
                store_engine.dispose()
            for name in databases:
                _drop_database(admin, name)
            admin.dispose()
