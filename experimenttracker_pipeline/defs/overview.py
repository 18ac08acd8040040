"""experiments_overview: every experiment in one table with its deciding CI, and a forest plot (the reporting stage).

Not partitioned. Materialized by its own run, and logged by every run that changes a verdict or a promotion (the
experiment pass, a `promotions` partition run, the sign-off job), so it is current when those runs end.
"""

from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.defs.resources import ExperimentStoreResource
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.html_report import write_index
from experimenttracker_pipeline.stages.reporting.overview import OVERVIEW_COLUMNS, overview_forest, overview_rows

OVERVIEW_KEY = dg.AssetKey("experiments_overview")
MAX_TABLE_ROWS = 300
OVERVIEW_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(name, kind, description=description)
                                          for name, kind, description in OVERVIEW_COLUMNS])


def overview_metadata(db, reports_dir: str | None = None) -> dict:
    """The overview table (typed), its schema, row count, verdict counts and the forest plot of deciding CIs."""
    rows = overview_rows(db)
    # The event log keeps every materialization's metadata: past a few hundred rows the table shows the experiments
    # with the newest samples; the index page lists them all.
    shown = rows if len(rows) <= MAX_TABLE_ROWS else sorted(
        rows, key=lambda r: r["last_sample_at"] or "", reverse=True)[:MAX_TABLE_ROWS]
    records = [dg.TableRecord({name: row[name] for name, _, _ in OVERVIEW_COLUMNS}) for row in shown]
    counts: dict[str, int] = {}
    for row in rows:
        if not row.get("_comparison"):  # experiments as declared: an A/B/n one once, with its overall verdict
            verdict = row.get("_verdict", row["verdict"])
            counts[verdict] = counts.get(verdict, 0) + 1
    metadata = {
        "experiments": dg.MetadataValue.table(records=records, schema=OVERVIEW_SCHEMA),
        "dagster/column_schema": OVERVIEW_SCHEMA,
        "dagster/row_count": len(rows),
        "rows_shown": len(shown),
        "verdict_counts": dg.MetadataValue.md("| verdict | experiments |\n|---|---|\n" + "\n".join(
            f"| {k} | {v} |" for k, v in sorted(counts.items()))),
    }
    forest = charts.b64(overview_forest(rows))
    if forest:
        metadata["forest_plot"] = dg.MetadataValue.md(f"![deciding CIs](data:image/png;base64,{forest})")
    if reports_dir:
        index = write_index(db, Path(reports_dir))
        metadata["report_index"] = dg.MetadataValue.path(str(index))
        metadata["report_index_url"] = dg.MetadataValue.url(index.resolve().as_uri())
    return metadata


def overview_materialization(db, reports_dir: str | None = None) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(asset_key=OVERVIEW_KEY, metadata=overview_metadata(db, reports_dir),
                                   description="every experiment's verdict and deciding CI")


def log_overview(context, db, reports_dir: str | None = None) -> None:
    """Log a materialization of the overview from a run that changed verdicts or promotions; a failure to draw it
    is logged, never fails the run's experiments."""
    try:
        context.log_event(overview_materialization(db, reports_dir))
    except Exception as exc:  # noqa: BLE001 - the overview is a view; the experiments' results are recorded
        context.log.warning(f"experiments_overview not refreshed: {type(exc).__name__}: {exc}")


@dg.asset(key=OVERVIEW_KEY, deps=[dg.AssetKey("verdicts"), dg.AssetKey("drift_signals"), dg.AssetKey("promotions")], group_name="reporting", kinds={"python", "sql"},
          owners=["team:data-eng"])
def experiments_overview(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """Every experiment in one table: verdict, the deciding CI and its method, samples / required samples, power,
    expected days to a decision, SRM p-value, harmed segments, drift state, promotion state, last sample time;
    plus a forest plot of the deciding CIs."""
    return dg.MaterializeResult(metadata=overview_metadata(store.get_store(), store.reports_dir))
