"""What the orchestration costs on top of the work, for many experiments on PostgreSQL.

    .venv/bin/python benchmarks/orchestration.py [--experiments 1000] [--pairs 200] [--new-pairs 20] [--pg-url URL]

Builds a PostgreSQL experiment store holding ``--experiments`` shadow experiments with ``--pairs`` matched pairs
each (declared, ingested and paired, not yet evaluated), clones it (``CREATE DATABASE ... TEMPLATE``), and drops
a new landing file with ``--new-pairs`` more pairs for every experiment. Then, in one run, it prints

(a) the direct core cost: on the first copy, without Dagster, ingest the new file and, for every experiment, the
    same stage functions a pass runs (`process_experiment`: pair, verify the hash chain, intervals, causal,
    verdict, drift signal, promotion gate, then the HTML reports a pass renders, at most
    EXPERIMENTTRACKER_REPORTS_PER_PASS), and separately the part `benchmarks/evaluate.py` times
    (`compute_intervals` + `decide`);
(b) `experimenttracker run` on the second copy (a subprocess, Dagster's storage in PostgreSQL): every experiment
    has new samples;
(c) `experimenttracker run` again: nothing new;
(d) how many Dagster runs (b) and (c) started;

with the ratio (b) / (a) (target: within 3x) and (c) (target: under 30 s), and checks that both copies reached
the same verdicts. Every database it creates is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experimenttracker_pipeline.demo import STARTED_AT, DemoExperiment, shadow_reports  # noqa: E402
from experimenttracker_pipeline.orchestration.due_work import EvaluationRule  # noqa: E402
from experimenttracker_pipeline.orchestration.experiment_pass import process_experiment  # noqa: E402
from experimenttracker_pipeline.settings import Settings, normalise_db_url  # noqa: E402
from experimenttracker_pipeline.stages.reporting.renders import render_stale_reports  # noqa: E402
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations  # noqa: E402
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows  # noqa: E402
from experimenttracker_pipeline.stages.ingestion.queries import newest_batch_by_slug  # noqa: E402
from experimenttracker_pipeline.stages.drift.registry import registry_for  # noqa: E402
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing  # noqa: E402
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals  # noqa: E402
from experimenttracker_pipeline.stages.samples.recording import record_samples  # noqa: E402
from experimenttracker_pipeline.stages.verdict.decision import decide  # noqa: E402
from experimenttracker_pipeline.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _declaration(exp: DemoExperiment) -> str:
    return (f"experiment_id: {exp.experiment_id}\nprincipal: desk:bench\nvariant_slug: {exp.variant_slug}\n"
            f"control_slug: {exp.control_slug}\nmode: shadow_only\ntraffic_split_pct: 10\n"
            f"min_samples_for_decision: {exp.min_samples}\nauto_promote_on_winning: false\nrequire_human_signoff: true\n"
            f"started_at: '{STARTED_AT}'\n")


def _write_jsonl(path: Path, records) -> int:
    import json

    n = 0
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
            n += 1
    return n


class Databases:
    def __init__(self, admin_url: str):
        self.admin = sa.create_engine(normalise_db_url(admin_url), isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def create(self, prefix: str, template: str | None = None) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.names.append(name)
        return name

    def url(self, name: str) -> str:
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(env: dict[str, str], *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the command's process, result)."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    return time.perf_counter() - start, _children_cpu() - cpu, done


def _verdicts(url: str) -> dict[str, tuple]:
    store = Store(url)
    try:
        rows = store.rows("SELECT DISTINCT ON (experiment_id) experiment_id, samples, verdict, ci_95_low, ci_95_high "
                          "FROM experiment_verdicts ORDER BY experiment_id, id DESC")
        return {r["experiment_id"]: (r["samples"], r["verdict"], r["ci_95_low"], r["ci_95_high"]) for r in rows}
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=200, help="matched pairs per experiment already paired")
    parser.add_argument("--new-pairs", type=int, default=20, help="new pairs per experiment that (a) and (b) ingest")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="admin URL of the server (the benchmark creates and drops its own databases)")
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()

    dbs = Databases(args.pg_url)
    work = Path(tempfile.mkdtemp(prefix="et-orchestration-"))
    experiments_dir, landing = work / "experiments", work / "landing"
    experiments_dir.mkdir()
    landing.mkdir()
    try:
        # ---- the store as a live pipeline left it: declared, ingested, paired ---------------------------------
        t0 = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        new_lines = work / "new-lines.jsonl"
        deltas = (0.0, 3.0, -3.0)
        for i in range(args.experiments):
            exp = DemoExperiment(f"exp_{i:05d}", f"bench-v-{i:05d}", f"bench-c-{i:05d}", deltas[i % 3],
                                 args.pairs + args.new_pairs, min_samples=100)
            (experiments_dir / f"{exp.experiment_id}.yaml").write_text(_declaration(exp))
            reports = shadow_reports(exp, rng, sd_bps=8.0)
            _write_jsonl(landing / "history.jsonl", reports[: 2 * args.pairs])
            _write_jsonl(new_lines, reports[2 * args.pairs:])
        base = dbs.create("et_orch_a")
        store = Store(dbs.url(base))
        store.migrate()
        sync_declarations(store, experiments_dir)
        ingest_landing(store, landing)
        ids = [r["experiment_id"] for r in experiment_rows(store)]
        for experiment_id in ids:
            record_samples(store, experiment_id)
        samples = store.scalar("SELECT COUNT(*) FROM experiment_samples")
        store.dispose()
        build_s = time.perf_counter() - t0
        clone = dbs.create("et_orch_b", template=base)
        dagster_db = dbs.create("et_orch_dagster")
        os.replace(new_lines, landing / "new.jsonl")
        print(f"store: {len(ids):,} experiments, {samples:,} samples paired; new landing file: "
              f"{2 * args.new_pairs * len(ids):,} lines; built and cloned in {build_s:.0f} s", flush=True)

        # ---- (a) the core, called directly ----------------------------------------------------------------
        store = Store(dbs.url(base))
        registry = registry_for(None)
        rule = EvaluationRule("growth")
        cpu, start = time.process_time(), time.perf_counter()
        ingest_landing(store, landing)
        ingest_s = time.perf_counter() - start
        newest = newest_batch_by_slug(store)
        failures = 0
        for experiment_id in ids:
            failures += not process_experiment(store, registry, experiment_id, rule, newest).ok
        # The pass renders a bounded number of HTML reports (EXPERIMENTTRACKER_REPORTS_PER_PASS, default 25).
        render_stale_reports(store, work / "reports-direct", ids, limit=Settings.reports_per_pass)
        core_s, core_cpu = time.perf_counter() - start, time.process_time() - cpu
        # What evaluate.py measures (intervals + verdict), on the same data once more.
        start = time.perf_counter()
        for experiment_id in ids:
            compute_intervals(store, experiment_id)
            decide(store, experiment_id)
        evaluate_s = time.perf_counter() - start
        store.dispose()
        print(f"(a) core, direct: {core_s:.1f} s (ingest {ingest_s:.1f} s + pass of {len(ids):,} experiments; "
              f"{core_cpu:.1f} s CPU); intervals + decide alone: {evaluate_s:.1f} s", flush=True)

        # ---- (b) and (c) `experimenttracker run` ---------------------------------------------------------
        home = work / "dagster_home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_"))}
        env.update({"EXPERIMENTTRACKER_DB_URL": dbs.url(clone), "EXPERIMENTTRACKER_DAGSTER_PG_URL": dbs.url(dagster_db),
                    "EXPERIMENTTRACKER_DATA_DIR": str(work / "data"), "EXPERIMENTTRACKER_LANDING_DIR": str(landing),
                    "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(experiments_dir), "DAGSTER_HOME": str(home)})
        # Dagster's tables are created once, before timing (a deployment does this at install).
        subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", "dagster-home"], env=env, cwd=REPO,
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_runs(limit=1)"],
                       env=env, cwd=REPO, check=True, capture_output=True)
        import dagster as dg

        def runs() -> list:
            os.environ["DAGSTER_HOME"] = str(home)
            instance = dg.DagsterInstance.get()
            try:
                return list(instance.get_runs())
            finally:
                instance.dispose()

        run_s, run_cpu, first = _cli(env, "run")
        if first.returncode != 0:
            print(first.stdout, first.stderr)
            raise SystemExit(f"run failed with exit code {first.returncode}")
        runs_b = runs()
        print(f"(b) run, every experiment has new samples: {run_s:.1f} s", flush=True)
        noop_s, noop_cpu, second = _cli(env, "run")
        if second.returncode != 0 or not second.stdout.startswith("nothing new"):
            print(second.stdout, second.stderr)
            raise SystemExit("the second run was not a no-op")
        runs_c = runs()[: -len(runs_b) or None]
        print(f"(c) run, nothing new: {noop_s:.1f} s ({second.stdout.strip()})", flush=True)
        same = _verdicts(dbs.url(base)) == _verdicts(dbs.url(clone))

        print()
        print(f"{len(ids):,} experiments x {args.pairs} pairs + {args.new_pairs} new pairs each, PostgreSQL store and "
              f"Dagster storage; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("                                                                wall        per experiment   CPU (client)")
        print(f"(a) direct core: ingest, pair, verify, intervals, causal, verdict, {core_s:8.1f} s  {core_s / len(ids) * 1000:8.1f} ms"
              f"   {core_cpu:8.1f} s   ({failures} failed)\n    drift, promotion, {Settings.reports_per_pass} HTML reports")
        print(f"    evaluate.py's part alone (compute_intervals + decide)      {evaluate_s:8.1f} s  "
              f"{evaluate_s / len(ids) * 1000:8.1f} ms")
        print(f"(b) `experimenttracker run`, every experiment has new samples  {run_s:8.1f} s  "
              f"{run_s / len(ids) * 1000:8.1f} ms   {run_cpu:8.1f} s")
        print(f"(c) `experimenttracker run`, nothing new                       {noop_s:8.1f} s  {'':>11}   {noop_cpu:8.1f} s")
        print(f"(b)/(a): {run_s / core_s:.2f}x wall, {run_cpu / core_cpu:.2f}x CPU (target <= 3x); "
              f"(b) / evaluate.py's part: {run_s / evaluate_s:.2f}x; (c) {noop_s:.1f} s (target < 30 s)")
        print(f"(d) Dagster runs started: (b) {len(runs_b)} ({', '.join(sorted(r.job_name for r in runs_b))}), "
              f"(c) {len(runs_c)}")
        print(f"    same verdicts on both copies: {same}")
        print("    (b) output:\n      " + "\n      ".join(first.stdout.strip().splitlines()))
    finally:
        dbs.drop_all()


if __name__ == "__main__":
    main()
