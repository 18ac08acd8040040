"""`experimenttracker` command line: demo, run, status (and, with part 2, signoff).

Exit codes: 0 success; 1 a pipeline run failed; 2 bad settings, bad arguments or an unreachable store (one line
on stderr saying why); 130 / 143 `run` or `backfill` stopped by SIGINT / SIGTERM (the in-flight run is canceled
between two experiments; a re-run continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from experimenttracker_pipeline.cli import design as cli_design
from experimenttracker_pipeline.cli import governance as cli_governance
from experimenttracker_pipeline.cli.errors import CliError
from experimenttracker_pipeline.settings import Settings, SettingsError
from experimenttracker_pipeline.stages.promotion.signoff import SignoffError, promotion_state, record_signoff
from experimenttracker_pipeline.store import Store, StoreUnavailable
from experimenttracker_pipeline.store.migrations import MigrationError
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal_all
from experimenttracker_pipeline.stages.reporting.deciding import deciding_ci, fmt_interval, supporting_intervals
from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.stages.declarations.queries import (
    comparison_rows,
    experiment_row,
    experiment_rows,
    set_experiment_status,
)
from experimenttracker_pipeline.stages.design.recommendation import latest_allocation
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.ingestion.queries import landing_state, newest_batch_by_slug
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count
from experimenttracker_pipeline.stages.samples.queries import pairing_states, sensor_snapshot
from experimenttracker_pipeline.stages.verdict.decision import experiment_overall
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

    from experimenttracker_pipeline.orchestration.instance import (
        ensure_instance_home,
        instance_lock,
        pool_storage_connections,
    )

    # Runs land in a persistent instance under the data folder (or $DAGSTER_HOME), so `dagster dev` with the
    # same DAGSTER_HOME shows the CLI's runs in its history. Opened under a lock: two processes starting together
    # on a fresh DAGSTER_HOME must not both create Dagster's tables.
    home = ensure_instance_home(settings)
    with instance_lock(home):
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)
    pool_storage_connections(instance)
    return instance


QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _execute(job, instance, out, label: str, **kwargs):
    """Execute one Dagster run in-process, in a worker thread: the main thread keeps the CLI's SIGINT/SIGTERM
    handlers (Dagster replaces a main thread's handlers and raises inside the running step), so a stop request
    reaches the run as a flag it honours between experiments. Returns (result, status name)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"dagster-{label}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
    if "error" in box:
        raise box["error"]
    result = box["result"]
    status = instance.get_run_by_id(result.run_id).status.value
    word = "success" if status == "SUCCESS" else status
    print(f"{label}: {word} (run {result.run_id})", file=out)
    if status == "FAILURE":
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                print(f"  {event.step_key}: {error.message.strip().splitlines()[0] if error else 'failed'}", file=out)
    return result, status


def _announce(signum: int) -> None:
    name = signal.Signals(signum).name
    print(f"\nexperimenttracker: {name} received: stopping after the current experiment (send it again to exit at once)",
          file=sys.stderr, flush=True)


def _rejected_declarations(settings: Settings, limit: int = 10) -> str:
    """The declaration files rejected now, each with its field and why, for an "unknown experiment" message: the
    experiment asked for may be in one of them."""
    from experimenttracker_pipeline.model.declaration import load_declarations

    errors = load_declarations(settings.experiments_dir, default_caliper_seconds=settings.caliper_seconds).errors
    if not errors:
        return ""
    lines = [f"  {e.source}: {e.field}: {e.message}" for e in errors[:limit]]
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"; {len(errors)} declaration problem(s), the experiment may be declared in a rejected file:\n" + "\n".join(lines) + more


def run_pipeline(settings: Settings, *, experiment_ids: Sequence[str] | None = None, out=sys.stdout, verbose: bool = False,
                 run_size: int | None = None, label: str = "run") -> int:
    """Bring the store up to date, doing only what is due (read from the store's watermarks): register new
    declarations and ingest new report lines (`ingest_job`), then pair and evaluate every experiment with new fills
    or a changed sample count in a few `experiment_pass_job` runs of up to ``run_size`` experiments. With nothing
    due it says so and starts no run. Returns the exit code: 0, 1 (a run failed), or 128 + the signal number when
    SIGINT/SIGTERM stopped it (what finished and what did not is printed; a re-run continues from there)."""
    from experimenttracker_pipeline.definitions import build_definitions
    from experimenttracker_pipeline.orchestration import due_work, stopping

    store = _store(settings)
    instance = _dagster_instance(settings)
    stop = stopping.STOP
    rule = due_work.EvaluationRule("growth")
    run_size = run_size or settings.pass_run_size
    run_config = {} if verbose else dict(QUIET_RUN_CONFIG)
    definitions = None
    ok, ran = True, 0

    def job(name: str):
        nonlocal definitions
        definitions = definitions or build_definitions(settings)
        return definitions.resolve_job_def(name)

    def stopped(detail: str) -> int:
        print(f"experimenttracker: stopped on {stop.signal_name}: {detail}", file=out)
        return stop.exit_code

    # 1. declarations and report lines (stat and offsets only; the report bus's consumer backlog when it is up)
    bus = _report_bus_state(settings, store, out)
    try:
        declarations = due_work.declarations_due(
            due_work.folder_stats(settings.experiments_dir, (".yaml", ".yml")),
            {str(Path(r["source_file"]).resolve()): r["registered_at_ms"] for r in sensor_snapshot(store) if r["source_file"]})
    except OSError:
        declarations = {}
    try:
        behind = due_work.files_behind(
            due_work.folder_signature(settings.landing_dir, (".jsonl",), recursive=True), landing_state(store))
    except OSError:
        # With a live bus the landing folder is only the backfill path and may not exist; otherwise ingest_job
        # reports the unreadable report bus archive.
        behind = {} if bus.configured and not settings.landing_dir.exists() else {"<landing folder unreadable>": 0}
    if declarations or behind or bus.outstanding:
        if stop.requested():
            return stopped("nothing started")
        ran += 1
        _, status = _execute(job("ingest_job"), instance, out, "ingest_job", tags={"experimenttracker/cli": label},
                             run_config={**run_config, "ops": {"raw_reports": {"config": {"bus_drain": True}}}})
        if status == "CANCELED":
            left = due_work.files_behind(due_work.folder_signature(settings.landing_dir, (".jsonl",), recursive=True),
                                         landing_state(store))
            return stopped(f"ingestion stopped between two committed chunks; {len(left)} landing file(s) not read to the end")
        ok &= status == "SUCCESS"
    # 2. partitions: one per stored experiment, none without one (Dagster's view of what exists)
    partitions = instance.get_dynamic_partitions("experiments")
    snapshot = sensor_snapshot(store)
    add, delete = due_work.partition_changes(partitions, due_work.partition_keys(snapshot))
    if add:
        instance.add_dynamic_partitions("experiments", add)
    for key in delete:
        instance.delete_dynamic_partition("experiments", key)
    if delete:
        print(f"removed partitions no declared experiment backs: {', '.join(delete)}", file=out)
    if experiment_ids:
        unknown = sorted(set(experiment_ids) - {r["experiment_id"] for r in snapshot})
        if unknown:
            raise CliError(f"no such experiment: {', '.join(unknown)} (declare it in {settings.experiments_dir})"
                           + _rejected_declarations(settings))
    # 3. experiments with new fills or a changed sample count
    due = due_work.due_experiments(snapshot, newest_batch_by_slug(store), rule, only=experiment_ids or None)
    targets = [d.experiment_id for d in due]
    for batch in due_work.chunks(targets, run_size):
        if stop.requested():
            break
        ran += 1
        _, status = _execute(job("experiment_pass_job"), instance, out, f"experiment_pass_job[{len(batch)} experiments]",
                             run_config={"experiment_ids": batch, "evaluation": rule.kind,
                                         **({} if verbose else {"console_log_level": "WARNING"})},
                             tags={"experimenttracker/cli": label, "experimenttracker/experiments": str(len(batch))})
        ok &= status in ("SUCCESS", "CANCELED")
    if stop.requested():
        left = {d.experiment_id for d in due_work.due_experiments(sensor_snapshot(store), newest_batch_by_slug(store),
                                                                  rule, only=targets)}
        done = [t for t in targets if t not in left]
        pending = [t for t in targets if t in left]
        return stopped(f"{len(done)} of {len(targets)} experiment(s) finished"
                       + (f"; not finished: {', '.join(pending)}" if pending else "")
                       + f" (run `experimenttracker {label}` again to continue)")
    # 4. drift signals a registry outage left pending
    if signals(store, status="pending"):
        ran += 1
        _, status = _execute(job("signal_delivery_job"), instance, out, "signal_delivery_job", run_config=run_config)
        ok &= status == "SUCCESS"
    # 5. reports waiting in the outbox for the report bus
    if bus.up:
        if unpublished_count(store):
            ran += 1
            _, status = _execute(job("report_relay_job"), instance, out, "report_relay_job", run_config=run_config)
            ok &= status == "SUCCESS"
        print(f"report bus outbox: {unpublished_count(store)} reports unpublished", file=out)
    if not ran:
        print(f"nothing new: {len(snapshot)} experiment(s) up to date, no new declarations or report lines", file=out)
    return 0 if ok else 1


@dataclass
class _BusState:
    configured: bool = False
    up: bool = False
    outstanding: int = 0  # messages waiting for the consumer


def _report_bus_state(settings: Settings, store: Store, out) -> _BusState:
    """With a report bus configured: stall every active experiment while it cannot be reached
    (EXPERIMENT_STALLED once, REPORT_BUS_UNAVAILABLE), resume them when it answers; and how many messages wait."""
    import time

    from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, ReportBusUnavailable, consumer_backlog, report_bus_error
    from experimenttracker_pipeline.stages.stalls.episodes import apply_bus_state

    config = BusConfig.from_settings(settings)
    if config is None:
        return _BusState()
    error = report_bus_error(config)
    for report in apply_bus_state(store, error, int(time.time() * 1000)):
        print(f"{report['event_type']} {report['experiment_id']} ({report['reason']})", file=out)
    if error:
        print(f"report bus unavailable: {error}; samples wait on the bus, experiments resume when it answers", file=out)
        return _BusState(configured=True)
    try:
        outstanding = consumer_backlog(config).outstanding
    except ReportBusUnavailable:
        outstanding = 1  # unknown: let ingest_job find out
    return _BusState(configured=True, up=True, outstanding=outstanding)


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


def run_backfill(settings: Settings, *, experiment_ids: Sequence[str] = (), per_run: int = 25, out=sys.stdout,
                 verbose: bool = False) -> int:
    """Ingest a (historical) archive and declarations once, then pair and evaluate its experiments in runs of up
    to ``per_run`` experiments (`run` on other folders). Re-running changes nothing already recorded."""
    return run_pipeline(settings, experiment_ids=list(experiment_ids) or None, out=out, verbose=verbose,
                        run_size=max(1, per_run), label="backfill")


def status_rows(store: Store) -> list[dict[str, Any]]:
    """One row per experiment: identity, sample and orphan counts, and the latest evaluation when there is one, and
    a ``variants`` object keyed by the contract's treatment variant ids. An A/B/n experiment's fields are its overall
    verdict (`verdict.decision.experiment_overall`); its ``variants`` are its comparisons' own verdicts."""
    context = {"states": pairing_states(store), "verdicts": latest_verdicts(store), "causal": latest_causal_all(store),
               "signals": {s["experiment_id"]: s for s in signals(store)}}
    rows = []
    for exp in experiment_rows(store, comparisons=False):
        experiment = None
        try:
            experiment = experiment_from_row(exp)
        except Exception:  # noqa: BLE001 - a set-aside declaration is still listed, without its variants
            pass
        comparisons = comparison_rows(store, exp["experiment_id"])
        if not comparisons:
            row = _unit_status(store, exp, context)
            if experiment is not None:
                treatment = experiment.contract.treatments[0]
                row["variants"] = {treatment.id: {
                    "variant_slug": treatment.slug, "verdict": row.get("verdict"), "ci_95_low": row.get("ci_95_low"),
                    "ci_95_high": row.get("ci_95_high"), "samples": row["samples"],
                    "drift_signalled": bool(row.get("drift_signalled")),
                    "promotion_state": row.get("promotion_state")}}
            rows.append(row)
            continue
        units = {c["variant_id"]: _unit_status(store, c, context) for c in comparisons}
        overall = experiment_overall(store, exp["experiment_id"]) or {}
        row = {
            "experiment_id": exp["experiment_id"], "mode": exp["mode"], "status": exp["status"],
            "variant_slug": overall.get("winning_variant_slug"), "control_slug": exp["control_slug"],
            "samples": sum(u["samples"] for u in units.values()),
            "orphan_variant_fills": sum(u["orphan_variant_fills"] for u in units.values()),
            "orphan_control_fills": max((u["orphan_control_fills"] for u in units.values()), default=0),
            "last_sample_at": max((u["last_sample_at"] for u in units.values() if u["last_sample_at"]), default=None),
        }
        row["orphans"] = row["orphan_variant_fills"] + row["orphan_control_fills"]
        if any("verdict" in u for u in units.values()):
            row.update({k: overall.get(k) for k in (
                "verdict", "winning_variant", "ci_95_low", "ci_95_high", "edge_delta_bps", "ci_variant", "drift_signalled",
                "ranking", "pareto_set", "multiple_testing", "reason_codes", "plain_english")})
            row["samples_evaluated"] = sum(u.get("samples_evaluated") or 0 for u in units.values())
            shown = units.get(overall.get("ci_variant"))
            if shown is not None and shown.get("deciding_ci"):  # the winner's interval, or the best-ranked one's
                row["deciding_ci"] = {**shown["deciding_ci"], "variant": overall["ci_variant"]}
                row["ci_method"] = shown.get("ci_method")
        _add_allocation(store, exp, row)
        row["variants"] = {}
        for vid, unit in units.items():
            summary = (overall.get("variants") or {}).get(vid, {})
            row["variants"][vid] = {
                "variant_slug": summary.get("variant_slug", unit["variant_slug"]), "verdict": unit.get("verdict"),
                "ci_95_low": unit.get("ci_95_low"), "ci_95_high": unit.get("ci_95_high"), "samples": unit["samples"],
                "drift_signalled": bool(unit.get("drift_signalled")), "experiment_id": unit["experiment_id"],
                "edge_delta_bps": unit.get("edge_delta_bps"), "ci_method": unit.get("ci_method"),
                "promotion_state": unit.get("promotion_state"), "verdict_report_id": unit.get("verdict_report_id")}
        rows.append(row)
    return rows


def _unit_status(store: Store, exp: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The status of one unit of evaluation (an experiment with one treatment, or a comparison)."""
    states, verdicts, causal, signal_rows = context["states"], context["verdicts"], context["causal"], context["signals"]
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
        # The same name on every surface: the one interval the verdict was decided on, then the others.
        row["deciding_ci"] = {k: ci[k] for k in ("method", "method_name", "estimate_bps", "ci_95_low", "ci_95_high", "why")
                              } if (ci := deciding_ci(v)) else None
        causal_doc = json.loads(causal[exp["experiment_id"]]["result_json"]) if exp["experiment_id"] in causal else None
        row["supporting_evidence"] = supporting_intervals(v, causal_doc)
        row["drift_signalled"] = exp["experiment_id"] in signal_rows
        signal = signal_rows.get(exp["experiment_id"])
        row["drift_delivery"] = signal["delivery_status"] if signal else None
        row["verdict_report_id"] = latest_result_report_id(store, exp["experiment_id"])
        row["promotion_state"] = promotion_state(store, exp["experiment_id"]).state
        if v.get("adaptive_analysis"):
            row["adaptive_analysis"] = v["adaptive_analysis"]  # fills used and excluded under adaptive allocation
    if exp["experiment_id"] in causal:
        row["causal"] = _causal_summary(json.loads(causal[exp["experiment_id"]]["result_json"]))
    _add_allocation(store, exp, row)
    return row


def _add_allocation(store: Store, exp: Mapping[str, Any], row: dict[str, Any]) -> None:
    """The latest allocation recommendation, for a limited-live experiment that declares adaptive allocation."""
    if exp["mode"] == "limited_live" and exp.get("parent_experiment_id") is None:
        allocation = latest_allocation(store, exp["experiment_id"])
        if allocation is not None:
            row["allocation"] = allocation


def _causal_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The `causal` object of `status --json`."""
    keep = ("naive_diff_bps", "ipw", "aipw", "paired", "overlap", "segments", "harmed_segments", "warnings",
            "propensity_source", "verdict_basis", "seed", "sandbox", "aipw_adaptive", "ipw_adaptive", "adaptive")
    return {key: result[key] for key in keep if key in result}


def _refresh_after_signoff(settings: Settings, store: Store, experiment_id: str, result) -> None:
    """Make the Dagster UI current after a sign-off from the command line, as the sign-off job does: the
    experiment's promotions partition and the overview (runless events in the same instance), and its HTML report.
    The sign-off itself is recorded already; a failure here is reported, not fatal."""
    import dagster as dg

    from experimenttracker_pipeline.defs.overview import overview_materialization
    from experimenttracker_pipeline.defs.promotion import promotion_metadata
    from experimenttracker_pipeline.stages.reporting.html_report import report_file_name, write_experiment_report

    reports_dir = settings.data_dir / "reports"
    try:
        instance = _dagster_instance(settings)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="promotions", partition=experiment_id, metadata=promotion_metadata(result)))
        write_experiment_report(store, experiment_id, reports_dir / report_file_name(experiment_id))
        instance.report_runless_asset_event(overview_materialization(store, str(reports_dir)))
    except Exception as exc:  # noqa: BLE001 - the sign-off stands; the views catch up at the next evaluation
        print(f"experimenttracker: signed off, but the Dagster views were not refreshed: {type(exc).__name__}: {exc}",
              file=sys.stderr)


def _report(settings: Settings, experiment_id: str, out: str | None) -> int:
    from experimenttracker_pipeline.stages.reporting.html_report import report_file_name, write_experiment_report, write_index

    store = _store(settings)
    if experiment_row(store, experiment_id) is None:
        raise CliError(f"no such experiment: {experiment_id}")
    path = Path(out).resolve() if out else settings.data_dir / "reports" / report_file_name(experiment_id)
    if path.is_dir():
        raise CliError(f"--out {path} is a folder; name the HTML file to write")
    comparisons = [c["experiment_id"] for c in comparison_rows(store, experiment_id)]
    if comparisons:
        raise CliError(f"{experiment_id} has several treatments, each with its own report: name one of "
                       f"{', '.join(comparisons)} (the index lists them all: `experimenttracker report --all`)")
    if write_experiment_report(store, experiment_id, path) is None:
        raise CliError(f"{experiment_id} has no verdict yet; run `experimenttracker run` first")
    index = write_index(store, path.parent)
    print(f"wrote {path} (index of all experiments: {index})")
    return 0


def _report_all(settings: Settings) -> int:
    from experimenttracker_pipeline.stages.reporting.renders import render_stale_reports

    store = _store(settings)
    reports_dir = settings.data_dir / "reports"
    rendering = render_stale_reports(store, reports_dir, [r["experiment_id"] for r in experiment_rows(store, units=True)], limit=None)
    index = rendering.index or reports_dir / "index.html"
    print(f"wrote {len(rendering.written)} report(s) into {reports_dir} (the others were current); index: {index}")
    return 0


def _print_table(rows: list[dict[str, Any]], out) -> None:
    columns = ["experiment_id", "mode", "samples", "orphans", "last_sample_at"]
    extra = [c for c in ("verdict", "deciding_ci", "ci_method", "edge_delta_bps", "drift_signalled", "promotion_state")
             if any(c in r for r in rows)]
    columns += extra

    def cell(r: dict[str, Any], c: str) -> str:
        if c == "deciding_ci" and r.get(c):
            return fmt_interval(r[c]["ci_95_low"], r[c]["ci_95_high"])
        if c == "verdict" and r.get("winning_variant"):
            return f"{r[c]} ({r['winning_variant']})"
        return "" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r[c]))

    shown = []
    for r in rows:
        shown.append(r)
        # An A/B/n experiment's comparisons, indented under its overall verdict.
        for v in (r.get("variants") or {}).values():
            if "experiment_id" in v:
                shown.append({**v, "experiment_id": f"  {v['experiment_id']}", "mode": r["mode"], "orphans": None,
                              "deciding_ci": {"ci_95_low": v["ci_95_low"], "ci_95_high": v["ci_95_high"]}
                              if v.get("ci_95_low") is not None else None})
    table = [[cell(r, c) for c in columns] for r in shown]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # Dagster flags beta parameters (backfill_policy, sensor owners) on every import: noise for a CLI user.
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    parser = argparse.ArgumentParser(prog="experimenttracker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write demo declarations and a demo report archive into the data folder, then run")
    demo.add_argument("--no-run", action="store_true", help="only write the demo files")
    run = sub.add_parser("run", help="migrate, then do what is due: register new declarations, ingest new report lines, "
                                     "pair and evaluate the experiments with new fills or samples (nothing new: no run)")
    run.add_argument("experiment_ids", nargs="*", help="only these experiments (default: all)")
    for command in (demo, run):
        command.add_argument("--verbose", action="store_true", help="show Dagster's step-by-step log")
    backfill = sub.add_parser("backfill", help="ingest an archive of old report files and declarations, then pair and "
                                               "evaluate its experiments (batched runs of --per-run experiments)")
    backfill.add_argument("experiment_ids", nargs="*", help="only these experiments (default: all)")
    backfill.add_argument("--landing", help="folder of historical *.jsonl report files (default: the landing folder)")
    backfill.add_argument("--experiments", help="folder of historical declarations (default: the experiments folder)")
    backfill.add_argument("--per-run", type=int, default=25, help="experiments per run (default 25)")
    backfill.add_argument("--verbose", action="store_true")
    report = sub.add_parser("report", help="write the self-contained HTML report of one experiment (and the index "
                                           "of all experiments next to it)")
    report.add_argument("experiment_id", nargs="?", help="the experiment (or --all)")
    report.add_argument("--all", action="store_true",
                        help="render every report behind its experiment's latest verdict into <data>/reports")
    report.add_argument("--out", default=None, help="HTML file to write (default: <data>/reports/EXPERIMENT_ID.html)")
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
    cli_design.register(sub)
    args = parser.parse_args(argv)
    from experimenttracker_pipeline.orchestration import stopping

    if args.command in ("run", "backfill", "demo"):
        with stopping.handling_signals(_announce):
            return _dispatch(args)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        settings = _settings()
        if (code := cli_governance.dispatch(args, lambda: _store(settings))) is not None:
            return code
        if (code := cli_design.dispatch(args, lambda: _store(settings))) is not None:
            return code
        if args.command == "demo":
            from experimenttracker_pipeline.demo import write_demo

            counts = write_demo(settings.experiments_dir, settings.landing_dir)
            print(f"demo: wrote {len(counts)} declarations to {settings.experiments_dir} and "
                  f"{sum(counts.values())} report lines to {settings.landing_dir}")
            if args.no_run:
                return 0
            code = run_pipeline(settings, verbose=args.verbose)
            _print_table(status_rows(_store(settings)), sys.stdout)
            return code
        if args.command == "run":
            return run_pipeline(settings, experiment_ids=args.experiment_ids, verbose=args.verbose)
        if args.command == "backfill":
            import dataclasses

            settings = dataclasses.replace(
                settings,
                landing_dir=Path(args.landing).resolve() if args.landing else settings.landing_dir,
                experiments_dir=Path(args.experiments).resolve() if args.experiments else settings.experiments_dir)
            for folder in (settings.landing_dir, settings.experiments_dir):
                if not folder.is_dir():
                    raise CliError(f"{folder} is not a folder")
            return run_backfill(settings, experiment_ids=args.experiment_ids, per_run=args.per_run, verbose=args.verbose)
        if args.command == "status":
            rows = status_rows(_store(settings))
            if args.json:
                print(json.dumps(rows, indent=2, sort_keys=True))
            else:
                _print_table(rows, sys.stdout)
            return 0
        if args.command == "report":
            if args.all == bool(args.experiment_id):
                raise CliError("name one experiment, or --all")
            if args.all:
                return _report_all(settings)
            return _report(settings, args.experiment_id, args.out)
        if args.command == "signoff":
            store = _store(settings)
            try:
                record = record_signoff(store, args.experiment_id, args.approver, args.report_id, args.note)
            except SignoffError as exc:
                raise CliError(str(exc)) from exc
            result = promotion_state(store, args.experiment_id, apply=True)
            print(f"signed off {args.report_id} ({record['verdict']}) for {args.experiment_id} by {record['approver']}; "
                  f"promotion: {result.state} ({result.reason_code}: {result.detail})")
            _refresh_after_signoff(settings, store, args.experiment_id, result)
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
                raise CliError(f"unknown experiment {args.experiment_id!r}" + _rejected_declarations(settings))
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
