"""`experimenttracker` command line: demo, run, status (and, with part 2, signoff).

Exit codes: 0 success; 1 a pipeline run failed; 2 bad settings, bad arguments or an unreachable store (one line
on stderr saying why).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from experimenttracker_pipeline.cli import governance as cli_governance
from experimenttracker_pipeline.cli.errors import CliError
from experimenttracker_pipeline.settings import Settings, SettingsError
from experimenttracker_pipeline.stages.promotion.signoff import SignoffError, promotion_state, record_signoff
from experimenttracker_pipeline.store import Store, StoreUnavailable
from experimenttracker_pipeline.store.migrations import MigrationError
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal_all
from experimenttracker_pipeline.stages.declarations.queries import experiment_row, experiment_rows, set_experiment_status
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count
from experimenttracker_pipeline.stages.samples.queries import pairing_states
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdicts


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise CliError(f"bad setting: {exc}") from exc


def _store(settings: Settings, *, migrate: bool = True) -> Store:
    """The store of these settings, reachable, and (unless ``migrate`` is False) with its schema up to date."""
    store = Store(settings.db_url)
    store.ping()
    if migrate:
        store.migrate()
    return store


def _dagster_instance(settings: Settings):
    import dagster as dg

    from experimenttracker_pipeline.orchestration.instance import ensure_instance_home

    # Runs land in a persistent instance under the data folder (or $DAGSTER_HOME), so `dagster dev` with the
    # same DAGSTER_HOME shows the CLI's runs in its history.
    ensure_instance_home(settings)
    return dg.DagsterInstance.get()


QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_pipeline(settings: Settings, *, experiment_ids: Sequence[str] | None = None, out=sys.stdout, verbose: bool = False) -> bool:
    """Run ingestion once, then every (or the named) experiment partition once, in-process through Dagster."""
    from experimenttracker_pipeline.definitions import build_definitions

    store = _store(settings)
    instance = _dagster_instance(settings)
    definitions = build_definitions(settings)
    ok = True
    run_config = None if verbose else QUIET_RUN_CONFIG
    bus_up = _report_bus_state(settings, store, out)
    ingest_config = {**(run_config or {}), "ops": {"raw_reports": {"config": {"bus_drain": True}}}}
    ingest = definitions.resolve_job_def("ingest_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=ingest_config)
    print(f"ingest_job: {'success' if ingest.success else 'FAILED'} (run {ingest.run_id})", file=out)
    ok &= ingest.success
    targets = list(experiment_ids) if experiment_ids else [
        r["experiment_id"] for r in experiment_rows(store) if r["status"] != "paused"]
    experiment_job = definitions.resolve_job_def("experiment_job")
    for experiment_id in targets:
        if experiment_id not in instance.get_dynamic_partitions("experiments"):
            raise CliError(f"unknown experiment {experiment_id!r}: declare it in {settings.experiments_dir}")
        result = experiment_job.execute_in_process(
            instance=instance, partition_key=experiment_id, raise_on_error=False, run_config=run_config)
        print(f"experiment_job[{experiment_id}]: {'success' if result.success else 'FAILED'} (run {result.run_id})", file=out)
        ok &= result.success
    if bus_up:
        relay = definitions.resolve_job_def("report_relay_job").execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config)
        print(f"report_relay_job: {'success' if relay.success else 'FAILED'} (run {relay.run_id}; "
              f"{unpublished_count(store)} reports unpublished)", file=out)
        ok &= relay.success
    return ok


def _report_bus_state(settings: Settings, store: Store, out) -> bool:
    """With a report bus configured: stall every active experiment while it cannot be reached
    (EXPERIMENT_STALLED once, REPORT_BUS_UNAVAILABLE), resume them when it answers. True when the bus is up."""
    import time

    from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, report_bus_error
    from experimenttracker_pipeline.stages.stalls.episodes import apply_bus_state

    config = BusConfig.from_settings(settings)
    if config is None:
        return False
    error = report_bus_error(config)
    for report in apply_bus_state(store, error, int(time.time() * 1000)):
        print(f"{report['event_type']} {report['experiment_id']} ({report['reason']})", file=out)
    if error:
        print(f"report bus unavailable: {error}; samples wait on the bus, experiments resume when it answers", file=out)
    return error is None


def _serve(settings: Settings, host: str, port: int) -> int:
    """Metrics and health over HTTP, without Dagster. An unreachable store is reported by the endpoints
    (store_up 0, health red), not a reason to refuse to start."""
    from experimenttracker_pipeline.observability.server import serve
    from experimenttracker_pipeline.stages.ingestion.bus import BusConfig

    store = Store(settings.db_url)
    try:
        store.migrate()
    except StoreUnavailable as exc:
        print(f"experimenttracker serve: {exc} (serving anyway; /metrics shows store_up 0)", file=sys.stderr)
    try:
        serve(store, BusConfig.from_settings(settings), host, port, ready=lambda line: print(line, flush=True))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc}") from exc
    return 0


def contiguous_chunks(ordered_keys: Sequence[str], wanted: Sequence[str], per_run: int) -> list[list[str]]:
    """Group the wanted partition keys into runs of at most ``per_run`` keys that are adjacent in the partition
    order (a ranged run covers every key between its ends)."""
    wanted_set = set(wanted)
    chunks: list[list[str]] = []
    current: list[str] = []
    for key in ordered_keys:
        if key in wanted_set and len(current) < per_run:
            current.append(key)
            continue
        if current:
            chunks.append(current)
        current = [key] if key in wanted_set else []
    if current:
        chunks.append(current)
    return chunks


def run_backfill(settings: Settings, *, experiment_ids: Sequence[str] = (), per_run: int = 25, out=sys.stdout,
                 verbose: bool = False) -> bool:
    """Ingest a (historical) archive and declarations once, then evaluate the experiment partitions in ranged runs
    of up to ``per_run`` experiments. Re-running changes nothing already recorded."""
    from experimenttracker_pipeline.definitions import build_definitions

    store = _store(settings)
    instance = _dagster_instance(settings)
    definitions = build_definitions(settings)
    run_config = None if verbose else QUIET_RUN_CONFIG
    tags = {"experimenttracker/backfill": "cli"}
    ingest = definitions.resolve_job_def("ingest_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags=tags)
    print(f"ingest_job: {'success' if ingest.success else 'FAILED'} (run {ingest.run_id})", file=out)
    ordered = instance.get_dynamic_partitions("experiments")
    targets = list(experiment_ids) or [r["experiment_id"] for r in experiment_rows(store)]
    unknown = [t for t in targets if t not in ordered]
    if unknown:
        raise CliError(f"unknown experiment(s) {', '.join(unknown)}: declare them in {settings.experiments_dir}")
    ok = ingest.success
    job = definitions.resolve_job_def("experiment_job")
    for chunk in contiguous_chunks(ordered, targets, max(1, per_run)):
        if len(chunk) == 1:
            result = job.execute_in_process(instance=instance, partition_key=chunk[0], raise_on_error=False,
                                            run_config=run_config, tags=tags)
        else:
            result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config, tags={
                **tags, "dagster/asset_partition_range_start": chunk[0], "dagster/asset_partition_range_end": chunk[-1]})
        label = chunk[0] if len(chunk) == 1 else f"{chunk[0]}..{chunk[-1]} ({len(chunk)} experiments)"
        print(f"experiment_job[{label}]: {'success' if result.success else 'FAILED'} (run {result.run_id})", file=out)
        ok &= result.success
    return ok


def status_rows(store: Store) -> list[dict[str, Any]]:
    """One row per experiment: identity, sample and orphan counts, and the latest evaluation when there is one."""
    states = pairing_states(store)
    verdicts = latest_verdicts(store)
    causal = latest_causal_all(store)
    signal_rows = {s["experiment_id"]: s for s in signals(store)}
    rows = []
    for exp in experiment_rows(store):
        state = states.get(exp["experiment_id"], {})
        last_ms = state.get("last_sample_at_ms")
        row: dict[str, Any] = {
            "experiment_id": exp["experiment_id"],
            "mode": exp["mode"],
            "status": exp["status"],
            "variant_slug": exp["variant_slug"],
            "control_slug": exp["control_slug"],
            "samples": int(state.get("samples", 0)),
            "orphans": int(state.get("orphan_variant", 0)) + int(state.get("orphan_control", 0)),
            "orphan_variant_fills": int(state.get("orphan_variant", 0)),
            "orphan_control_fills": int(state.get("orphan_control", 0)),
            "last_sample_at": (datetime.fromtimestamp(last_ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
                               if last_ms is not None else None),
        }
        verdict_row = verdicts.get(exp["experiment_id"])
        if verdict_row is not None:
            v = json.loads(verdict_row["verdict_json"])
            row.update({key: v.get(key) for key in (
                "verdict", "ci_95_low", "ci_95_high", "fixed_ci_95_low", "fixed_ci_95_high", "edge_delta_bps", "p_value",
                "power", "reason_codes", "plain_english")})
            row["samples_evaluated"] = v.get("samples")
            row["ci_method"] = v.get("basis")
            row["drift_signalled"] = exp["experiment_id"] in signal_rows
            signal = signal_rows.get(exp["experiment_id"])
            row["drift_delivery"] = signal["delivery_status"] if signal else None
            row["verdict_report_id"] = latest_result_report_id(store, exp["experiment_id"])
            row["promotion_state"] = promotion_state(store, exp["experiment_id"]).state
        if exp["experiment_id"] in causal:
            row["causal"] = _causal_summary(json.loads(causal[exp["experiment_id"]]["result_json"]))
        rows.append(row)
    return rows


def _causal_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The `causal` object of `status --json` (issue 5 shape)."""
    keep = ("naive_diff_bps", "ipw", "aipw", "paired", "overlap", "segments", "harmed_segments", "warnings",
            "propensity_source", "verdict_basis", "seed")
    return {key: result[key] for key in keep if key in result}


def _print_table(rows: list[dict[str, Any]], out) -> None:
    columns = ["experiment_id", "mode", "samples", "orphans", "last_sample_at"]
    extra = [c for c in ("verdict", "ci_method", "ci_95_low", "ci_95_high", "edge_delta_bps", "drift_signalled", "promotion_state")
             if any(c in r for r in rows)]
    columns += extra
    table = [[("" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r[c]))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # Dagster flags beta parameters (backfill_policy, sensor owners) on every import: noise for a CLI user.
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    parser = argparse.ArgumentParser(prog="experimenttracker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write demo declarations and a demo report archive into the data folder, then run")
    demo.add_argument("--no-run", action="store_true", help="only write the demo files")
    run = sub.add_parser("run", help="migrate, load declarations, ingest, pair and evaluate every experiment once")
    run.add_argument("experiment_ids", nargs="*", help="only these experiment partitions (default: all)")
    for command in (demo, run):
        command.add_argument("--verbose", action="store_true", help="show Dagster's step-by-step log")
    backfill = sub.add_parser("backfill", help="ingest an archive of old report files and declarations, then evaluate "
                                               "each experiment partition (ranged runs)")
    backfill.add_argument("experiment_ids", nargs="*", help="only these experiments (default: all)")
    backfill.add_argument("--landing", help="folder of historical *.jsonl report files (default: the landing folder)")
    backfill.add_argument("--experiments", help="folder of historical declarations (default: the experiments folder)")
    backfill.add_argument("--per-run", type=int, default=25, help="experiments per run (default 25)")
    backfill.add_argument("--verbose", action="store_true")
    status = sub.add_parser("status", help="one row per experiment")
    status.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sub.add_parser("migrate", help="apply pending database migrations and print what ran")
    home = sub.add_parser("dagster-home", help="write $DAGSTER_HOME/dagster.yaml for this environment and print DAGSTER_HOME")
    home.add_argument("--home", default=None, help="folder (default: $DAGSTER_HOME or <data>/dagster_home)")
    signoff = sub.add_parser("signoff", help="record a human sign-off of one verdict report (and run the promotion gate)")
    signoff.add_argument("experiment_id")
    signoff.add_argument("--approver", required=True, help="who signs off")
    signoff.add_argument("--report", required=True, dest="report_id", help="the EXPERIMENT_RESULT report_id approved")
    signoff.add_argument("--note", default=None)
    serve = sub.add_parser("serve", help="serve Prometheus metrics (/metrics) and the health check "
                                         "(/internal/health/experimenttracker) until interrupted")
    serve.add_argument("--host", default=None, help="address to listen on (default EXPERIMENTTRACKER_SERVE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default EXPERIMENTTRACKER_SERVE_PORT or 9496)")
    for name, text in (("pause", "pause an experiment: no pairing, evaluation or stall reports until `resume` (its "
                                  "reports keep being ingested)"),
                       ("resume", "resume a paused experiment")):
        command = sub.add_parser(name, help=text)
        command.add_argument("experiment_id")
    cli_governance.register(sub)
    args = parser.parse_args(argv)
    try:
        settings = _settings()
        if (code := cli_governance.dispatch(args, lambda: _store(settings))) is not None:
            return code
        if args.command == "demo":
            from experimenttracker_pipeline.demo import write_demo

            counts = write_demo(settings.experiments_dir, settings.landing_dir)
            print(f"demo: wrote {len(counts)} declarations to {settings.experiments_dir} and "
                  f"{sum(counts.values())} report lines to {settings.landing_dir}")
            if args.no_run:
                return 0
            ok = run_pipeline(settings, verbose=args.verbose)
            _print_table(status_rows(_store(settings)), sys.stdout)
            return 0 if ok else 1
        if args.command == "run":
            return 0 if run_pipeline(settings, experiment_ids=args.experiment_ids, verbose=args.verbose) else 1
        if args.command == "backfill":
            import dataclasses

            settings = dataclasses.replace(
                settings,
                landing_dir=Path(args.landing).resolve() if args.landing else settings.landing_dir,
                experiments_dir=Path(args.experiments).resolve() if args.experiments else settings.experiments_dir)
            for folder in (settings.landing_dir, settings.experiments_dir):
                if not folder.is_dir():
                    raise CliError(f"{folder} is not a folder")
            ok = run_backfill(settings, experiment_ids=args.experiment_ids, per_run=args.per_run, verbose=args.verbose)
            return 0 if ok else 1
        if args.command == "status":
            rows = status_rows(_store(settings))
            if args.json:
                print(json.dumps(rows, indent=2, sort_keys=True))
            else:
                _print_table(rows, sys.stdout)
            return 0
        if args.command == "signoff":
            store = _store(settings)
            try:
                record = record_signoff(store, args.experiment_id, args.approver, args.report_id, args.note)
            except SignoffError as exc:
                raise CliError(str(exc)) from exc
            result = promotion_state(store, args.experiment_id, apply=True)
            print(f"signed off {args.report_id} ({record['verdict']}) for {args.experiment_id} by {record['approver']}; "
                  f"promotion: {result.state} ({result.reason_code}: {result.detail})")
            return 0
        if args.command == "dagster-home":
            from experimenttracker_pipeline.orchestration.instance import (
                ensure_instance_home,
            )

            print(ensure_instance_home(settings, Path(args.home).resolve() if args.home else None))
            return 0
        if args.command in ("pause", "resume"):
            store = _store(settings)
            row = experiment_row(store, args.experiment_id)
            if row is None:
                raise CliError(f"unknown experiment {args.experiment_id!r}")
            wanted = "paused" if args.command == "pause" else "active"
            if args.command == "resume" and row["status"] != "paused":
                raise CliError(f"{args.experiment_id} is {row['status']}, not paused")
            set_experiment_status(store, args.experiment_id, wanted)
            print(f"{args.experiment_id}: {row['status']} -> {wanted}")
            return 0
        if args.command == "serve":
            return _serve(settings, args.host or settings.serve_host,
                          settings.serve_port if args.port is None else args.port)
        if args.command == "migrate":
            applied = _store(settings, migrate=False).migrate()
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
            return 0
    except (CliError, StoreUnavailable, MigrationError) as exc:
        print(f"experimenttracker: {exc}", file=sys.stderr)
        return 2
    return 2
